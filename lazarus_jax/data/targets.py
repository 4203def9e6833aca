"""The one resolver of class-target token ids (DESIGN.md §2; ORIGINAL_DEFECTS #6, #7).

Training, evaluation, the lens tool and the probes all call `resolve_targets`, so the same word always
means the same token id, and the ids are printed at start (`ResolvedTargets.describe()`).

Rule: a target word resolves to the FIRST token of the tokenizer's encoding of `" " + word` (leading space,
no BOS even when the tokenizer adds one), i.e. the token a model emits when it starts saying the word in
running text.
- Refused: an empty or unknown word (encodes to nothing, or to the tokenizer's unknown token); two labels
  on the same id; a target id that occurs in a given prompt's encoding (the model could copy it from its
  input: the original's operator-symbol targets, defect #6) unless `allow_target_in_prompt=True`.
- Warned: a word that needs several tokens (only the first is scored).
- Refinement (written down here because DESIGN is silent): when the first token is whitespace only and more
  tokens follow (e.g. Llama's SentencePiece encodes `" multiply"` as `"▁" "▁multiply"`, the tiny test
  tokenizer as `" " "multiply"`), that bare space carries nothing of the word and would make every label
  collide. We then resolve the word in context (`"x " + word`, minus the tokens of `"x"`) and, if that too
  starts with whitespace, take the first non-whitespace token; a warning says so.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Sequence

from lazarus_jax.data.arithmetic import label_index
from lazarus_jax.errors import UserError

DEFAULT_TARGETS = {"multiply": "multiply", "add": "add", "subtract": "subtract", "divide": "divide"}
# Target controls (`classifier.target_set`). If arbitrary words become readable at L as fast and as well as the
# operation words, the "vocabulary alignment" is a trained readout rather than an emergent one. The arbitrary
# words are single SmolLM2 tokens that no prompt of any format contains, with distinct first letters (the tiny
# test tokenizer spells them letter by letter); the shuffled set is a derangement of the operation words (every
# label gets another operation's word). None = `classifier.targets`.
ARBITRARY_TARGETS = {"multiply": "river", "add": "cloud", "subtract": "piano", "divide": "lemon"}
SHUFFLED_TARGETS = {"multiply": "add", "add": "divide", "subtract": "multiply", "divide": "subtract"}
TARGET_SETS = {"operation": None, "arbitrary": ARBITRARY_TARGETS, "shuffled": SHUFFLED_TARGETS, "answer": None}
# Neutral left context for the whitespace fallback: a plain letter no tokenizer merges with a space + word.
_CONTEXT = "x"


@dataclasses.dataclass(frozen=True)
class ResolvedTargets:
  labels: tuple[str, ...]
  words: tuple[str, ...]
  token_ids: tuple[int, ...]
  token_strs: tuple[str, ...]  # decoded text of each target token, for humans
  warnings: tuple[str, ...] = ()

  def __len__(self) -> int:
    return len(self.labels)

  def index(self, label: str) -> int:
    return label_index(label, self.labels)

  def as_dict(self) -> dict:
    """JSON-ready record (for results' provenance)."""
    return {
      "targets": [
        {"label": lab, "word": w, "token_id": i, "token": s}
        for lab, w, i, s in zip(self.labels, self.words, self.token_ids, self.token_strs)
      ],
      "warnings": list(self.warnings),
    }

  def describe(self) -> str:
    """The line(s) printed at start: resolved ids, then one `warning:` line each."""
    parts = [f"{lab}={json.dumps(s)}(id {i})" for lab, i, s in zip(self.labels, self.token_ids, self.token_strs)]
    lines = ["class targets: " + " ".join(parts)]
    lines += [f"warning: {w}" for w in self.warnings]
    return "\n".join(lines)


def _encode_no_bos(tokenizer, text: str) -> list[int]:
  # The project's one encode function, with the BOS (if the tokenizer adds one) removed: a target is a
  # continuation token, never the start of a sequence.
  ids = list(tokenizer.encode(text))
  if getattr(tokenizer, "add_bos", False) and tokenizer.bos_id is not None and ids[:1] == [tokenizer.bos_id]:
    ids = ids[1:]
  return ids


def _unk_id(tokenizer) -> int | None:
  model = getattr(getattr(tokenizer, "backend", None), "model", None)
  unk = getattr(model, "unk_token", None)
  return tokenizer.backend.token_to_id(unk) if unk else None


def _is_blank(tokenizer, token_id: int) -> bool:
  return not tokenizer.token_str(token_id).strip()


def _resolve_word(tokenizer, label: str, word: str) -> tuple[int, list[str]]:
  """(token id, warnings) for one word."""
  ids = _encode_no_bos(tokenizer, " " + word)
  if not ids:
    raise UserError(f"target {label}={word!r} encodes to no tokens")
  unk = _unk_id(tokenizer)
  if unk is not None and unk in ids:
    raise UserError(
      f"target {label}={word!r} contains characters the tokenizer does not know "
      f"(encodes to its unknown token {tokenizer.token_str(unk)!r}): choose another word"
    )
  warnings = []
  pieces = [tokenizer.token_str(i) for i in ids]
  if len(ids) > 1 and _is_blank(tokenizer, ids[0]):
    ctx, ctx_ids = _CONTEXT + " " + word, _encode_no_bos(tokenizer, _CONTEXT)
    in_ctx = _encode_no_bos(tokenizer, ctx)
    rest = in_ctx[len(ctx_ids) :] if in_ctx[: len(ctx_ids)] == ctx_ids else []
    if not rest or _is_blank(tokenizer, rest[0]):
      # Still a bare space in context: skip the blank tokens of the plain encoding.
      first = next((k for k, i in enumerate(ids) if not _is_blank(tokenizer, i)), 0)
      rest = ids[first:]
    warnings.append(
      f"target {label}: {' ' + word!r} starts with a bare space token {pieces!r}; "
      f"using {tokenizer.token_str(rest[0])!r} (id {rest[0]}), how the word starts after text"
    )
    ids, pieces = rest, [tokenizer.token_str(i) for i in rest]
  if len(ids) > 1:
    warnings.append(
      f"target {label}={word!r} needs {len(ids)} tokens {pieces!r}: only the first, {pieces[0]!r} (id {ids[0]}), is scored"
    )
  return int(ids[0]), warnings


def resolve_targets(
  tokenizer, targets: Mapping[str, str] | None = None, prompts: Sequence[str] | None = None, allow_target_in_prompt: bool = False
) -> ResolvedTargets:
  """Resolves label -> word to one token id per label (see the module docstring for the rule)."""
  targets = DEFAULT_TARGETS if targets is None else targets
  if not targets:
    raise UserError("no class targets given: pass at least one label=word")
  labels, words, ids, warnings = [], [], [], []
  for label, word in targets.items():
    if not isinstance(label, str) or not label.strip():
      raise UserError(f"empty target label (for word {word!r})")
    if not isinstance(word, str) or not word.strip():
      raise UserError(f"target {label!r} has an empty word: give each label a word, e.g. {label}=multiply")
    token_id, warns = _resolve_word(tokenizer, label, word.strip())
    labels.append(label)
    words.append(word.strip())
    ids.append(token_id)
    warnings += warns

  by_id: dict[int, str] = {}
  for label, token_id in zip(labels, ids):
    if token_id in by_id:
      raise UserError(
        f"targets {by_id[token_id]!r} and {label!r} resolve to the same token "
        f"{tokenizer.token_str(token_id)!r} (id {token_id}): choose words whose first tokens differ"
      )
    by_id[token_id] = label

  for prompt in prompts or ():
    prompt_ids = set(tokenizer.encode(prompt))
    for label, token_id in zip(labels, ids):
      if token_id not in prompt_ids:
        continue
      msg = (
        f"target {label!r} token {tokenizer.token_str(token_id)!r} (id {token_id}) appears in the prompt "
        f"{prompt!r}: the model could copy it from its input"
      )
      if not allow_target_in_prompt:
        raise UserError(
          msg + " (ORIGINAL_DEFECTS #6); use operation words as targets, or set classifier.allow_target_in_prompt=True to allow it"
        )
      warnings.append(msg)

  return ResolvedTargets(
    labels=tuple(labels),
    words=tuple(words),
    token_ids=tuple(ids),
    token_strs=tuple(tokenizer.token_str(i) for i in ids),
    warnings=tuple(warnings),
  )


def parse_targets(spec: str) -> dict[str, str]:
  """CLI syntax: `multiply,add` (word = label) or `multiply=times,add=plus`."""
  out: dict[str, str] = {}
  for item in spec.split(","):
    item = item.strip()
    if not item:
      continue
    label, _, word = item.partition("=")
    label, word = label.strip(), (word.strip() if _ else label.strip())
    if not label or not word:
      raise UserError(f"bad target {item!r}: use label or label=word")
    if label in out:
      raise UserError(f"target label {label!r} given twice")
    out[label] = word
  if not out:
    raise UserError(f"no targets in {spec!r}: e.g. --targets multiply,add,subtract,divide")
  return out


# ---- number targets: the lens target at L is the first answer token --------------------------------------


def first_answer_id(tokenizer, example) -> int:
  """The answer's first token as `data.encode_example` splits prompt + answer (what the model must emit next)."""
  from lazarus_jax.data.arithmetic import encode_example

  return encode_example(tokenizer, example.prompt, example.answer, append_eos=False).answer_ids[0]


def answer_label(tokenizer, example) -> str:
  return tokenizer.token_str(first_answer_id(tokenizer, example))


def answer_targets(tokenizer, examples) -> ResolvedTargets:
  """One class per distinct first answer token among `examples` (the digits 0-9 with SmolLM2's tokenizer), the
  label being the token's text. These tokens are in every prompt (the operands), so the target-in-prompt rule
  cannot hold; the warning says so."""
  ids = sorted({first_answer_id(tokenizer, e) for e in examples})
  strs = tuple(tokenizer.token_str(i) for i in ids)
  if len(set(strs)) != len(strs):
    raise UserError(f"answer targets: two first-answer tokens decode to the same text {strs}")
  warn = (
    "answer targets: the class tokens are the answers' first tokens, which also occur in the prompts "
    "(operands); the target-in-prompt rule does not apply to this control"
  )
  return ResolvedTargets(labels=strs, words=strs, token_ids=tuple(ids), token_strs=strs, warnings=(warn,))
