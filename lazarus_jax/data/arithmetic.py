"""Arithmetic data, the one encode function, fixed-shape batches and a resumable batch order.

Definitions (DESIGN.md §2, §3):
- An `Example` is `prompt` + `answer`, where `answer` is the exact text that continues the prompt:
  the model is trained on the string `prompt + answer`; how a generated answer is scored is in `generate.py`.
  Both formats end their prompt with the separating space (`"7 * 8 = "`, `"What is 7 times 8? "`), so the
  answer is the bare integer `"56"` in both, and the readout (the prompt's last token) is the position whose
  next-token prediction is the answer's first digit in both. Why: with SmolLM2's tokenizer `"? 56"` encodes as
  `"?", " ", "5", "6"`, so a prompt ending in `?` put the readout one token earlier (predicting a bare space)
  than in the symbolic format, and the first answer token was the space, not a digit.
- `encode_example` is the only way an example becomes token ids (train, eval, lens, probes): prompt and
  answer are encoded jointly, and the prompt's own encoding must be a prefix of the joint one.
- Readout position = `prompt_len - 1` everywhere. The answer loss is shifted: the logits at position
  `prompt_len - 1 + j` predict the answer token `ids[prompt_len + j]` (ORIGINAL_DEFECTS #1, #2).
- Every random choice takes an explicit seed; the batch for a training step is a pure function of
  `(seed, step)`, so resuming at step k needs only k.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Sequence

import numpy as np

from lazarus_jax.errors import UserError
from lazarus_jax.files import read_text

OPERATIONS = ("multiply", "add", "subtract", "divide")
# Formats a run can train on; `EVAL_FORMATS` adds the evaluation-only ones (prompt_formats.py).
FORMATS = ("symbolic", "semantic", "fewshot", "word")
EVAL_FORMATS = FORMATS + ("symbolic_alt",)
ROUND2_FORMATS = ("fewshot", "word", "symbolic_alt")  # rendered by prompt_formats.py
MECHANISM_FORMATS = ("symbolic", "semantic", "fewshot", "word")  # eval.mechanism: counterpart prompts and token roles exist for these
SYMBOLS = {"multiply": "*", "add": "+", "subtract": "-", "divide": "/"}
WORDS = {"multiply": "times", "add": "plus", "subtract": "minus", "divide": "divided by"}

# The 8 prompts the seed's evaluation table reports, as (a, operation, b).
SEED_TRIPLES = (
  (7, "multiply", 8),
  (12, "multiply", 5),
  (23, "add", 45),
  (17, "add", 38),
  (50, "subtract", 23),
  (89, "subtract", 34),
  (48, "divide", 6),
  (81, "divide", 9),
)

# Defaults for make_splits: hundreds of held-out triples per operation (ORIGINAL_DEFECTS #9), but never
# more than half of an operation's triples, so division (144 triples) keeps 72 for evaluation, 72 for training.
DEFAULT_EVAL_PER_OP = 200
DEFAULT_MAX_EVAL_FRACTION = 0.5
DEFAULT_MAX_ANSWER_TOKENS = 8


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str
  answer: str  # exact continuation of the prompt (see module docstring)
  operation: str
  a: int | None
  b: int | None
  fmt: str  # one of EVAL_FORMATS, "jsonl" for user rows, or a fewshot counterfactual's name
  line: int | None = dataclasses.field(default=None, compare=False)  # the JSONL line of a user row
  symbol: str | None = None  # fewshot: the prompt's neutral symbol; symbolic_alt: the operator spelling
  shots: tuple = ()  # fewshot: the solved examples (a, b, shown result)
  template: int | None = None  # word: index into the template list of its split side
  source: str | None = None  # counterfactual / shuffled fewshot: the operation of the example it was built from

  @property
  def triple(self) -> tuple[int | None, str, int | None]:
    return (self.a, self.operation, self.b)


@dataclasses.dataclass(frozen=True)
class Splits:
  train: list[Example]
  eval: list[Example]
  seed_prompts: list[Example]  # the seed's 8 prompts in each format; a subset of eval


@dataclasses.dataclass(frozen=True)
class Encoded:
  ids: list[int]
  prompt_len: int

  @property
  def readout(self) -> int:
    return self.prompt_len - 1

  @property
  def answer_ids(self) -> list[int]:
    return self.ids[self.prompt_len :]


# ---------------------------------------------------------------------------------------------------------
# Generation


def compute(a: int, operation: str, b: int) -> int:
  if operation == "multiply":
    return a * b
  if operation == "add":
    return a + b
  if operation == "subtract":
    return a - b
  if operation == "divide":
    assert a % b == 0, (a, b)  # the generator only makes exact divisions
    return a // b
  raise UserError(f"unknown operation {operation!r}: use one of {', '.join(OPERATIONS)}")


def all_pairs(operation: str) -> list[tuple[int, int]]:
  """Every (a, b) the seed's ranges allow for `operation`, in a fixed order."""
  if operation in ("multiply", "add"):
    return [(a, b) for a in range(1, 51) for b in range(1, 51)]
  if operation == "subtract":
    return [(a, b) for a in range(10, 101) for b in range(1, a + 1)]
  if operation == "divide":
    return [(b * k, b) for b in range(1, 13) for k in range(1, 13)]
  raise UserError(f"unknown operation {operation!r}: use one of {', '.join(OPERATIONS)}")


def make_example(a: int, operation: str, b: int, fmt: str) -> Example:
  """A symbolic or semantic example (the round-2 formats need a split side and a seed: prompt_formats.render)."""
  value = str(compute(a, operation, b))
  if fmt == "symbolic":
    prompt, answer = f"{a} {SYMBOLS[operation]} {b} = ", value
  elif fmt == "semantic":
    prompt, answer = f"What is {a} {WORDS[operation]} {b}? ", value
  else:
    raise UserError(f"unknown data format {fmt!r}: use one of {', '.join(FORMATS)}")
  return Example(prompt=prompt, answer=answer, operation=operation, a=a, b=b, fmt=fmt)


COMMUTATIVE = ("multiply", "add")


def _units(operation: str, pairs: Sequence[tuple[int, int]]) -> list[tuple[tuple[int, int], ...]]:
  """The split's units: for a commutative operation `a op b` and `b op a` form one unit (they fall on the same
  side of the split, so no held-out answer is learnable from its swap); otherwise each pair is its own unit."""
  if operation not in COMMUTATIVE:
    return [(p,) for p in pairs]
  have = set(pairs)
  return [((a, b),) if a == b else ((a, b), (b, a)) for a, b in pairs if a <= b and (b, a) in have]


def _pick_units(units, n_eval: int, rng: np.random.Generator) -> list[tuple[int, int]]:
  """Pairs of units taken in a random order until exactly `n_eval` pairs are held out (a unit of two that would
  overshoot by one is passed over for the next unit of one)."""
  out: list[tuple[int, int]] = []
  for i in rng.permutation(len(units)):
    if len(out) == n_eval:
      break
    if len(out) + len(units[i]) <= n_eval:
      out += units[i]
  return out


def make_splits(
  formats: Sequence[str] = ("symbolic",),
  n_eval_per_op: int = DEFAULT_EVAL_PER_OP,
  seed: int = 0,
  max_eval_fraction: float = DEFAULT_MAX_EVAL_FRACTION,
  operations: Sequence[str] = OPERATIONS,
  eval_formats: Sequence[str] | None = None,
  fewshot_k: int = 2,
) -> Splits:
  """Train / held-out eval split over (a, operation, b) triples, rendered in every requested format.

  Per operation, `min(n_eval_per_op, floor(max_eval_fraction * n_triples))` triples go to eval, drawn at
  random with `np.random.default_rng([seed, operation_index])`; the seed's prompts are always among them (they
  count towards the number). For `add` and `multiply` a triple and its commutative swap are one unit: both are
  held out or both are trained on (DESIGN.md §3). Defaults (200, 0.5) give 200 eval triples for
  multiply/add/subtract and 72 of division's 144, so every operation keeps training data. A triple is in eval
  in *every* format and in train in none, so no format leaks a held-out problem. Train holds all remaining
  triples in every format (2300 / 2300 / 4805 / 72 per format with the defaults); sample it balanced with
  `batch_indices(..., labels=...)`. Lists are ordered by operation, then format; within that, eval holds the
  seed triples (and their swaps) first, then the rest in the random order they were drawn (so the first N of
  a group is a random sample), and train is in generator order.

  `formats` are trained on; `eval_formats` (default: `formats`) are the held-out set's formats, which may include
  formats not trained on and the evaluation-only `symbolic_alt` (the transfer matrix). The round-2 formats are
  rendered by `prompt_formats.render` (held-out symbols and templates on the eval side; `fewshot_k` examples).
  """
  formats = check_formats(formats, "data.format", FORMATS)
  eval_formats = formats if eval_formats is None else check_formats(eval_formats, "data.eval_format", EVAL_FORMATS)
  if fewshot_k < 1:
    raise UserError(f"data.fewshot_k={fewshot_k} must be at least 1 (the examples are the only cue)")
  for op in operations:
    if op not in OPERATIONS:
      raise UserError(f"unknown operation {op!r}: use one of {', '.join(OPERATIONS)}")
  if not 0.0 < max_eval_fraction < 1.0:
    raise UserError(f"max_eval_fraction={max_eval_fraction} must be in (0, 1) so training keeps data")
  _check_seed(seed)

  train, evals, seeds = [], [], []
  for op_index, op in enumerate(OPERATIONS):
    if op not in operations:
      continue
    pairs = all_pairs(op)
    units = _units(op, pairs)
    seed_pairs = [(a, b) for a, o, b in SEED_TRIPLES if o == op]
    seed_units = [u for u in units if set(u) & set(seed_pairs)]
    seed_held = [p for u in seed_units for p in u]
    n_eval = min(n_eval_per_op, int(max_eval_fraction * len(pairs)))
    if n_eval < len(seed_held):
      raise UserError(
        f"data.n_eval_per_op={n_eval_per_op} is below the {len(seed_held)} held-out seed triples of {op!r} "
        f"(with their commutative swaps): use at least {len(seed_held)}"
      )
    rest = [u for u in units if u not in seed_units]
    rng = np.random.default_rng([seed, op_index])
    eval_pairs = seed_held + _pick_units(rest, n_eval - len(seed_held), rng)
    eval_set = set(eval_pairs)
    train_pairs = [p for p in pairs if p not in eval_set]
    for fmt in formats:
      train += render(fmt, op, train_pairs, train_pairs, False, seed, op_index, fewshot_k)
    for fmt in eval_formats:
      held = render(fmt, op, eval_pairs, train_pairs, True, seed, op_index, fewshot_k)
      evals += held
      seeds += sorted((e for e in held if (e.a, e.b) in seed_pairs), key=lambda e: seed_pairs.index((e.a, e.b)))
  return Splits(train=train, eval=evals, seed_prompts=seeds)


def check_formats(formats: Sequence[str], key: str, allowed: Sequence[str]) -> list[str]:
  formats = list(formats)
  if not formats:
    raise UserError(f"{key} is empty: choose at least one of {', '.join(allowed)}")
  for fmt in formats:
    if fmt not in allowed:
      only = " (evaluation only: put it in data.eval_format)" if fmt in EVAL_FORMATS else ""
      raise UserError(f"{key}: unknown data format {fmt!r}{only}: use some of {', '.join(allowed)}")
  if len(set(formats)) != len(formats):
    raise UserError(f"{key} lists a format twice ({formats}): list each once")
  return formats


def render(fmt: str, operation: str, pairs, train_pairs, heldout: bool, seed: int, op_index: int, fewshot_k: int) -> list[Example]:
  """One operation's `pairs` in format `fmt`, on the training (`heldout=False`) or evaluation side."""
  if fmt in ROUND2_FORMATS:
    from lazarus_jax.data import prompt_formats  # it builds Examples, so it imports this module

    return prompt_formats.render(fmt, operation, pairs, train_pairs, heldout, seed, op_index, fewshot_k)
  return [make_example(a, operation, b, fmt) for a, b in pairs]


def split_pairs(seed: int, n_eval_per_op: int, max_eval_fraction: float = DEFAULT_MAX_EVAL_FRACTION) -> dict:
  """{operation: (eval pairs, train pairs)} of `make_splits` with these arguments (counterfactuals draw their
  solved examples from the training pairs)."""
  splits = make_splits(("symbolic",), n_eval_per_op, seed, max_eval_fraction)
  out = {}
  for op in OPERATIONS:
    ev = [(e.a, e.b) for e in splits.eval if e.operation == op]
    tr = [(e.a, e.b) for e in splits.train if e.operation == op]
    out[op] = (ev, tr)
  return out


def heldout_identity(eval_examples: Sequence[Example], seed: int, n_eval_per_op: int, train_source: str = "generator") -> dict:
  """The identity of a held-out split, recorded with a trained adapter and checked by evaluation.

  `heldout_sha256` hashes the sorted held-out (a, operation, b) triples: formats render the same triples, so
  evaluating another format on the same split is allowed, while another seed or size (whose held-out triples
  were partly trained on) is not. `train_source` is "generator" or "jsonl:<sha256 of the file>".
  """
  triples = sorted({f"{a} {op} {b}" for a, op, b in (e.triple for e in eval_examples)})
  digest = hashlib.sha256("\n".join(triples).encode()).hexdigest()
  return {
    "heldout_sha256": digest,
    "n_heldout_triples": len(triples),
    "seed": int(seed),
    "n_eval_per_op": int(n_eval_per_op),
    "train_source": train_source,
  }


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def check_jsonl_against_heldout(rows: Sequence[Example], eval_examples: Sequence[Example], path: str) -> None:
  """Refuses user training rows whose prompt is a held-out evaluation prompt (any format, whitespace ignored)."""
  held = {" ".join(e.prompt.split()): e for e in eval_examples}
  for i, row in enumerate(rows):
    hit = held.get(" ".join(row.prompt.split()))
    if hit is not None:
      where = f"{path}:{row.line}" if row.line else f"{path} row {i + 1}"
      raise UserError(
        f"{where}: prompt {row.prompt!r} is a held-out evaluation prompt ({hit.a} {hit.operation} "
        f"{hit.b}); training on it would score training data: remove the row or change seed"
      )


# ---------------------------------------------------------------------------------------------------------
# User JSONL


def load_jsonl(path: str, operations: Sequence[str] = OPERATIONS) -> list[Example]:
  """Rows `{"prompt": str, "response": str, "operation": str}`, one JSON object a line; blank lines skipped.

  `response` is used verbatim as the answer (the exact continuation of the prompt). `operations` is the
  ordered label list the caller trains on; a row with any other operation is an error, never silently
  mapped (ORIGINAL_DEFECTS #8).
  """
  if not os.path.isfile(path):
    raise UserError(f"data file {path} does not exist: check data.jsonl")
  examples = []
  # Decoded up front (files.read_text): a file in another encoding is one line naming it, not a traceback.
  with io.StringIO(read_text(path, "data file"), newline=None) as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{where}: malformed JSON ({e.msg}): write one JSON object per line") from None
      if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with prompt, response, operation")
      for field in ("prompt", "response", "operation"):
        if field not in row:
          raise UserError(f"{where}: missing field {field!r}: each row needs prompt, response, operation")
        if not isinstance(row[field], str) or not row[field]:
          raise UserError(f"{where}: field {field!r} must be a non-empty string")
      if row["operation"] not in operations:
        raise UserError(f"{where}: unknown operation {row['operation']!r}: use one of {', '.join(operations)}")
      examples.append(
        Example(prompt=row["prompt"], answer=row["response"], operation=row["operation"], a=None, b=None, fmt="jsonl", line=line_no)
      )
  if not examples:
    raise UserError(f"{path} holds no rows: add JSON lines with prompt, response, operation")
  return examples


# ---------------------------------------------------------------------------------------------------------
# Encoding


def encode_prompt(tok, prompt: str) -> list[int]:
  """Token ids of a prompt alone (eval generation, lens, probes): exactly the prefix `encode_example` uses."""
  return tok.encode(prompt)


def encode_example(tok, prompt: str, answer: str, append_eos: bool) -> Encoded:
  """Encodes `prompt + answer` jointly; the prompt's own tokens must be a prefix (ORIGINAL_DEFECTS #3, #5)."""
  prompt_ids = encode_prompt(tok, prompt)
  if not prompt_ids:
    raise UserError(f"prompt {prompt!r} encodes to no tokens (and the tokenizer adds no BOS): use a non-empty prompt")
  ids = tok.encode(prompt + answer)
  if ids[: len(prompt_ids)] != prompt_ids:
    raise UserError(
      f"prompt {prompt!r} and answer {answer!r} do not tokenize at the boundary: the prompt's last token "
      f"merges with the start of the answer; move the separating whitespace into the answer "
      f"(e.g. prompt {prompt.rstrip()!r}, answer {(prompt[len(prompt.rstrip()) :] + answer)!r}) "
      "or end the prompt with a character the tokenizer keeps apart"
    )
  if append_eos:
    if tok.eos_id is None:
      raise UserError("data.append_eos=True but the tokenizer has no EOS token: set data.append_eos=False")
    ids = ids + [tok.eos_id]
  return Encoded(ids=list(ids), prompt_len=len(prompt_ids))


def encode_examples(tok, examples: Sequence[Example], append_eos: bool) -> list[Encoded]:
  return [encode_example(tok, ex.prompt, ex.answer, append_eos) for ex in examples]


# ---------------------------------------------------------------------------------------------------------
# Batches


def choose_seq_len(encoded_list: Sequence[Encoded], multiple: int = 16) -> int:
  """The longest example rounded up to `multiple`: one fixed length, so the jitted step compiles once."""
  if not encoded_list:
    raise UserError("no examples to size a batch from: the data set is empty")
  longest = max(len(e.ids) for e in encoded_list)
  return -(-longest // multiple) * multiple


def example_key(e) -> str:
  """One held-out example's identity across runs and arms (results' per-example keys): format and prompt."""
  return f"{e.fmt}|{e.prompt}"


def label_index(label: str, label_names: Sequence[str]) -> int:
  try:
    return list(label_names).index(label)
  except ValueError:
    raise UserError(f"unknown label {label!r}: the classes are {', '.join(label_names)}") from None


def collate(
  encoded_list: Sequence[Encoded],
  labels: Sequence[str],
  seq_len: int,
  max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
  pad_id: int = 0,
  label_names: Sequence[str] = OPERATIONS,
) -> dict[str, np.ndarray]:
  """Fixed-shape numpy batch [B, seq_len] / [B, max_answer_tokens].

  tokens/mask: ids padded with pad_id, mask 1 on real tokens. readout: prompt_len - 1. label: index of the
  example's label in `label_names`. answer_pos/answer_target/answer_weight: slot j holds the position whose
  logits predict answer token j (prompt_len - 1 + j), that token (ids[prompt_len + j], EOS included when
  appended) and weight 1; unused slots have pos 0, target pad_id, weight 0.
  """
  if len(labels) != len(encoded_list):
    raise ValueError(f"{len(labels)} labels for {len(encoded_list)} examples")
  n = len(encoded_list)
  tokens = np.full((n, seq_len), pad_id, np.int32)
  mask = np.zeros((n, seq_len), np.int32)
  readout = np.zeros((n,), np.int32)
  label = np.zeros((n,), np.int32)
  answer_pos = np.zeros((n, max_answer_tokens), np.int32)
  answer_target = np.full((n, max_answer_tokens), pad_id, np.int32)
  answer_weight = np.zeros((n, max_answer_tokens), np.float32)
  for i, (enc, lab) in enumerate(zip(encoded_list, labels)):
    if len(enc.ids) > seq_len:
      raise UserError(f"an example has {len(enc.ids)} tokens, more than seq_len={seq_len}: raise data.seq_len")
    n_answer = len(enc.ids) - enc.prompt_len
    if n_answer > max_answer_tokens:
      raise UserError(
        f"an answer has {n_answer} tokens, more than max_answer_tokens={max_answer_tokens}: raise data.max_answer_tokens"
      )
    tokens[i, : len(enc.ids)] = enc.ids
    mask[i, : len(enc.ids)] = 1
    readout[i] = enc.prompt_len - 1
    label[i] = label_index(lab, label_names)
    # Shifted: logits at t predict token t+1 (ORIGINAL_DEFECTS #1).
    answer_pos[i, :n_answer] = np.arange(enc.prompt_len - 1, enc.prompt_len - 1 + n_answer)
    answer_target[i, :n_answer] = enc.ids[enc.prompt_len :]
    answer_weight[i, :n_answer] = 1.0
  return dict(
    tokens=tokens,
    mask=mask,
    readout=readout,
    label=label,
    answer_pos=answer_pos,
    answer_target=answer_target,
    answer_weight=answer_weight,
  )


# ---------------------------------------------------------------------------------------------------------
# Batch order


def _check_seed(seed) -> None:
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise UserError(f"seed={seed!r} must be a non-negative integer")


def _stream(n: int, positions: np.ndarray, key: Sequence[int]) -> np.ndarray:
  """Indices at `positions` of an endless stream of per-epoch permutations of range(n)."""
  out = np.empty(len(positions), np.int64)
  epochs = positions // n
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([*key, int(epoch)]).permutation(n)
    sel = epochs == epoch
    out[sel] = perm[positions[sel] % n]
  return out


def batch_indices(n_examples: int, batch_size: int, step: int, seed: int, labels: Sequence | None = None) -> np.ndarray:
  """Example indices of the global batch at `step`: a pure function of (seed, step), so resume needs only step.

  Without labels: the examples in per-epoch permutations (`default_rng([seed, epoch])`), read as one stream;
  batch `step` is stream positions [step * batch_size, (step + 1) * batch_size), so a batch may straddle
  an epoch boundary and no example is dropped.
  With labels (one per example): balanced by class. Global slot p = step * batch_size + j belongs to
  class p mod K (classes in sorted order), at position p // K of that class's own stream of per-epoch
  permutations (`default_rng([seed, 1 + class_index, epoch])`), so every batch holds each class
  batch_size / K times (±1 when K does not divide batch_size) however unequal the classes' sizes.
  """
  _check_seed(seed)
  if n_examples <= 0:
    raise UserError("the training set is empty: check data.format / data.jsonl")
  if batch_size <= 0:
    raise UserError(f"batch_size={batch_size} must be positive")
  if step < 0:
    raise ValueError(f"step={step} must be non-negative")
  positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
  if labels is None:
    return _stream(n_examples, positions, [seed])
  labels = list(labels)
  if len(labels) != n_examples:
    raise ValueError(f"{len(labels)} labels for {n_examples} examples")
  classes = sorted(set(labels))
  members = {c: np.array([i for i, lab in enumerate(labels) if lab == c], np.int64) for c in classes}
  k = len(classes)
  out = np.empty(batch_size, np.int64)
  for ci, c in enumerate(classes):
    sel = positions % k == ci
    out[sel] = members[c][_stream(len(members[c]), positions[sel] // k, [seed, 1 + ci])]
  return out


def process_slice(global_indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous share of the global batch (multi-host: each host loads only its rows)."""
  n = len(global_indices)
  if n % process_count:
    raise UserError(f"batch size {n} is not divisible by the {process_count} processes: pick a multiple")
  per = n // process_count
  return np.asarray(global_indices)[process_index * per : (process_index + 1) * per]
