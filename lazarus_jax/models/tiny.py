"""The tiny random model (`model.source = "tiny-random"`) for CPU tests and smoke runs.

Its tokenizer is a byte-level BPE trained (deterministically) on arithmetic text, so that prompts encode in
a few tokens and each operation word is one token, like a real tokenizer. No files, no network.
"""

from __future__ import annotations

import functools

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from lazarus_jax.models.tokenizer import Tokenizer

SPECIALS = ["<unk>", "<s>", "</s>"]
_WORDS = "the operation is multiply add subtract divide times plus minus divided by What is the answer sum difference product quotient"


def _corpus():
  lines = []
  for a in range(0, 101, 7):
    for b in range(1, 51, 9):
      lines += [
        f"{a} * {b} = {a * b}",
        f"{a} + {b} = {a + b}",
        f"{a} - {b} = {a - b}",
        f"{a} / {b} = 1",
        f"What is {a} times {b}?",
        f"What is {a} plus {b}?",
        f"What is {a} minus {b}?",
        f"What is {a} divided by {b}?",
      ]
  return lines + [_WORDS] * 50


@functools.lru_cache(maxsize=None)
def tiny_backend() -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]
  )
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=384, special_tokens=SPECIALS, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator(_corpus(), trainer=trainer)
  return tok


def tiny_tokenizer() -> Tokenizer:
  backend = tiny_backend()
  return Tokenizer(
    backend=backend,
    bos_id=backend.token_to_id("<s>"),
    eos_id=backend.token_to_id("</s>"),
    pad_id=backend.token_to_id("</s>"),
    add_bos=False,
  )


def tiny_hf_config(**overrides) -> dict:
  """An HF LlamaConfig dict for the tiny model (heads divide 8 ways for sharding tests)."""
  cfg = dict(
    model_type="llama",
    vocab_size=384,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=8,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
  )
  cfg.update(overrides)
  return cfg


# TinyLlama-1.1B's shape (its HF config's architecture keys): the seed's model, for shape-only work (the
# pre-flight compile, memory tests, benchmarks) where no weights are read.
TINYLLAMA = dict(
  model_type="llama",
  vocab_size=32000,
  hidden_size=2048,
  intermediate_size=5632,
  num_hidden_layers=22,
  num_attention_heads=32,
  num_key_value_heads=4,
  rms_norm_eps=1e-5,
  rope_theta=10000.0,
  tie_word_embeddings=False,
  max_position_embeddings=2048,
)
