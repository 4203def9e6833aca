"""One tokenizer wrapper for every path (train, eval, lens, probes).

It wraps a `tokenizers.Tokenizer` (built from `tokenizer.json` or from GGUF metadata) and owns the
BOS decision: `add_bos` follows the tokenizer's own setting, identically everywhere (ORIGINAL_DEFECTS #3).
"""

from __future__ import annotations

import dataclasses
import os

import tokenizers

from lazarus_jax.errors import UserError


@dataclasses.dataclass
class Tokenizer:
  backend: tokenizers.Tokenizer
  bos_id: int | None
  eos_id: int | None
  pad_id: int
  add_bos: bool

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, with BOS prepended iff the tokenizer adds it."""
    ids = self.backend.encode(text, add_special_tokens=False).ids
    if self.add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

  def token_str(self, token_id: int) -> str:
    """Human-readable text of one token (as decoded, so byte-level 'Ġ' shows as a space)."""
    return self.backend.decode([int(token_id)], skip_special_tokens=False)

  @classmethod
  def from_dir(cls, path: str) -> "Tokenizer":
    """From an HF checkpoint directory holding `tokenizer.json` (+ `tokenizer_config.json`)."""
    tok_file = os.path.join(path, "tokenizer.json")
    if not os.path.exists(tok_file):
      raise UserError(f"no tokenizer.json in {path}: save the tokenizer with the checkpoint (tokenizer.save_pretrained(dir))")
    backend = tokenizers.Tokenizer.from_file(tok_file)
    cfg = {}
    cfg_file = os.path.join(path, "tokenizer_config.json")
    if os.path.exists(cfg_file):
      from lazarus_jax.files import read_json

      cfg = read_json(cfg_file, "tokenizer config", "fix or remove the checkpoint's tokenizer_config.json")
      cfg = cfg if isinstance(cfg, dict) else {}

    def special_id(name):
      tok = cfg.get(name)
      if isinstance(tok, dict):
        tok = tok.get("content")
      return backend.token_to_id(tok) if tok else None

    bos_id, eos_id = special_id("bos_token"), special_id("eos_token")
    pad_id = special_id("pad_token")
    if "add_bos_token" in cfg:
      add_bos = bool(cfg["add_bos_token"])
    else:
      # Tokenizers whose post-processor inserts BOS (e.g. Llama's TemplateProcessing) add it.
      probe = backend.encode("a", add_special_tokens=True).ids
      add_bos = bos_id is not None and len(probe) > 0 and probe[0] == bos_id
    return cls(
      backend=backend,
      bos_id=bos_id,
      eos_id=eos_id,
      pad_id=pad_id if pad_id is not None else (eos_id if eos_id is not None else 0),
      add_bos=add_bos,
    )
