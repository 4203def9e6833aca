"""A tiny synthetic llama GGUF written the way llama.cpp's converter writes one (tests of the loader and CLIs)."""

import gguf
import numpy as np

from lazarus_jax.models import gguf_loader

Q = gguf.GGMLQuantizationType

# ---------------------------------------------------------------------------------------------------
# A tiny synthetic llama written the way llama.cpp's converter writes one.

TINY = dict(vocab=300, hidden=64, ffn=128, layers=2, heads=4, kv_heads=2)


def llama_cpp_permute(w, n_head, n_head_kv):
  """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, verbatim in numpy."""
  if n_head_kv is not None and n_head != n_head_kv:
    n_head = n_head_kv
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def exact_q8_0(rng, shape, scale=2.0**-7):
  """Values that Q8_0 stores exactly: a power-of-two scale times int8, each 32-block peaking at 127."""
  q = rng.integers(-127, 128, size=shape).astype(np.float32)
  q.reshape(-1, 32)[:, 0] = 127.0
  return q * np.float32(scale)


def tiny_hf_tensors(seed=0):
  """HF-named, HF-layout reference tensors, with the storage type each is written as."""
  rng = np.random.default_rng(seed)
  t = TINY
  d = t["hidden"] // t["heads"]
  f16 = lambda *s: rng.standard_normal(s).astype(np.float16).astype(np.float32)  # noqa: E731
  f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
  out = {"model.embed_tokens.weight": (f16(t["vocab"], t["hidden"]), Q.F16), "model.norm.weight": (f32(t["hidden"]), Q.F32)}
  for i in range(t["layers"]):
    p = f"model.layers.{i}."
    out[p + "input_layernorm.weight"] = (f32(t["hidden"]), Q.F32)
    out[p + "post_attention_layernorm.weight"] = (f32(t["hidden"]), Q.F32)
    out[p + "self_attn.q_proj.weight"] = (exact_q8_0(rng, (t["heads"] * d, t["hidden"])), Q.Q8_0)
    out[p + "self_attn.k_proj.weight"] = (f16(t["kv_heads"] * d, t["hidden"]), Q.F16)
    out[p + "self_attn.v_proj.weight"] = (exact_q8_0(rng, (t["kv_heads"] * d, t["hidden"])), Q.Q8_0)
    out[p + "self_attn.o_proj.weight"] = (f32(t["hidden"], t["heads"] * d), Q.F32)
    out[p + "mlp.gate_proj.weight"] = (exact_q8_0(rng, (t["ffn"], t["hidden"])), Q.Q8_0)
    out[p + "mlp.up_proj.weight"] = (f16(t["ffn"], t["hidden"]), Q.F16)
    out[p + "mlp.down_proj.weight"] = (f32(t["hidden"], t["ffn"]), Q.F32)
  return out


GGUF_NAMES = {
  "model.embed_tokens.weight": "token_embd.weight",
  "model.norm.weight": "output_norm.weight",
  "lm_head.weight": "output.weight",
}
LAYER_GGUF_NAMES = {
  "input_layernorm": "attn_norm",
  "post_attention_layernorm": "ffn_norm",
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
}


def to_gguf_name(hf_name):
  if hf_name in GGUF_NAMES:
    return GGUF_NAMES[hf_name]
  _, _, i, rest = hf_name.split(".", 3)
  return f"blk.{i}.{LAYER_GGUF_NAMES[rest[: -len('.weight')]]}.weight"


def byte_level_vocab():
  """A tiny byte-level BPE vocabulary: 3 control tokens, the 256 byte characters, a few merges."""
  chars = list(gguf_loader.byte_alphabet().values())
  merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "Ġ Ġ", "ĠĠ ĠĠ"]
  tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + chars
  tokens += ["".join(m.split(" ")) for m in merges]
  tokens += [f"<extra_{i}>" for i in range(TINY["vocab"] - len(tokens))]
  types = [3, 3, 3] + [1] * (len(tokens) - 3)
  return tokens, merges, types


def sentencepiece_vocab():
  """A tiny llama (sentencepiece-style) vocabulary: specials, 256 byte tokens, scored pieces."""
  pieces = [
    "\u2581",
    "t",
    "h",
    "e",
    "a",
    "n",
    "i",
    "s",
    "o",
    "r",
    "w",
    "1",
    "2",
    "\u2581t",
    "he",
    "\u2581the",
    "in",
    "\u2581a",
    "an",
    "is",
    "\u2581is",
    "er",
    "\u2581an",
    "sw",
    "\u2581answer",
    "\u2581\u2581",
    "\u25811",
    "12",
  ]
  tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
  types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
  scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
  return tokens, scores, types


def write_tiny_gguf(path, arch="llama", tensors=None, extra=None, untied=False, tokenizer="gpt2"):
  """Write the tiny llama to `path`; returns the HF-layout reference tensors."""
  t = TINY
  ref = tiny_hf_tensors() if tensors is None else tensors
  if untied:
    rng = np.random.default_rng(1)
    ref = dict(ref, **{"lm_head.weight": (rng.standard_normal((t["vocab"], t["hidden"])).astype(np.float32), Q.F32)})
  w = gguf.GGUFWriter(path, arch)
  w.add_block_count(t["layers"])
  w.add_context_length(256)
  w.add_embedding_length(t["hidden"])
  w.add_feed_forward_length(t["ffn"])
  w.add_head_count(t["heads"])
  w.add_head_count_kv(t["kv_heads"])
  w.add_rope_freq_base(10000.0)
  w.add_rope_dimension_count(t["hidden"] // t["heads"])
  w.add_layer_norm_rms_eps(1e-5)
  w.add_vocab_size(t["vocab"])
  if tokenizer == "gpt2":
    tokens, merges, types = byte_level_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_merges(merges)
    w.add_add_bos_token(False)
  else:  # no merges and no add_bos flag: both must be inferred, as for older llama files
    tokens, scores, types = sentencepiece_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_scores(scores)
    w.add_unk_token_id(0)
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  for fn in extra or []:
    fn(w)
  for name, (value, qtype) in ref.items():
    stored = value
    if name.endswith("q_proj.weight"):
      stored = llama_cpp_permute(value, t["heads"], t["heads"])
    elif name.endswith("k_proj.weight"):
      stored = llama_cpp_permute(value, t["heads"], t["kv_heads"])
    if qtype == Q.F16:
      w.add_tensor(to_gguf_name(name), stored.astype(np.float16))
    elif qtype == Q.F32:
      w.add_tensor(to_gguf_name(name), stored.astype(np.float32))
    elif isinstance(stored, np.ndarray) and stored.dtype == np.float32:
      w.add_tensor(to_gguf_name(name), gguf.quants.quantize(stored, qtype), raw_dtype=qtype)
    else:  # raw payload for a type written as-is (e.g. integers)
      w.add_tensor(to_gguf_name(name), stored)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return {k: v for k, (v, _) in ref.items()}
