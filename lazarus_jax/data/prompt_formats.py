"""Prompt formats whose operation is not written in the prompt, and the evaluation-only transfer probe.

The round-1 formats (`symbolic` "7 * 8 = ", `semantic` "What is 7 times 8? ") name the operation with one input
token, so a classifier at layer L can be a relabelling of that token. These formats hide it (DESIGN.md §3):

- `fewshot`: "3 # 4 = 12\\n5 # 2 = 10\\n7 # 8 = " -> "56". The symbol is redrawn per prompt from a pool of neutral
  symbols; only the k solved examples (`data.fewshot_k`, default 2) say which operation it stands for. Every
  example fits exactly one of the four operations on its own (2 # 2 = 4 fits add and multiply and is never drawn),
  so the examples determine the operation. Examples are drawn from the operation's *training* pairs only (a
  held-out answer is never shown), never equal to the query. Held-out prompts use symbols from a disjoint pool
  that no training prompt contains.
- `word`: word problems with no operation word and no operator symbol, from templates; evaluation uses a disjoint
  set of held-out templates per operation that training never sees.
- `symbolic_alt` (evaluation only): the symbolic format with operator spellings never trained on (multiply as
  "×" and "x", divide as "÷" and ":"); add and subtract have no second spelling, so this format holds multiply
  and divide prompts only. Training on it is refused.

Every format renders the same held-out (a, operation, b) triples (data.make_splits), so the formats can be
compared on the same problems (the transfer matrix). Rendering is a pure function of (seed, format, split side):
each format draws from its own random stream, so adding a format to a run changes no other format's prompts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Neutral symbols: none is an arithmetic operator (no ^ % ! · or comparison), "=" or a digit, and none is an
# alternate spelling in `ALT_SPELLINGS`. Each is one token in SmolLM2's tokenizer (" #"), so no held-out symbol
# shares a byte-piece token with a training one (¤ and ¶ would both start with the token of byte 0xC2). The two
# pools are disjoint: held-out prompts use symbols training never showed.
FEWSHOT_TRAIN_SYMBOLS = ("#", "@", "&", "$", "~", "|", "α", "β")
FEWSHOT_HELDOUT_SYMBOLS = ("§", "£", "©", "°", "γ", "δ")
DEFAULT_FEWSHOT_K = 2

# Held-out operator spellings (the list): evaluation only.
ALT_SPELLINGS = {"multiply": ("×", "x"), "divide": ("÷", ":")}

# Word templates: `{a}` and `{b}` are the triple's operands, the answer is `a op b`. No template contains an
# operation word (times, plus, minus, divided, multiply, add, subtract, divide, sum, product, difference, quotient)
# or an operator symbol (tests/test_prompt_formats.py checks). The prompt ends with "? " like `semantic`, so the
# readout predicts the answer's first digit.
WORD_TEMPLATES = {
  "multiply": (
    "A box holds {b} pens. How many pens are in {a} boxes? ",
    "Each bag has {b} apples. How many apples are in {a} bags? ",
    "A shelf has {b} books. How many books are on {a} shelves? ",
    "There are {a} rows of seats with {b} seats in each row. How many seats are there? ",
    "A ticket costs {b} dollars. How much do {a} tickets cost? ",
    "Each car carries {b} people. How many people do {a} cars carry? ",
    "One crate weighs {b} kilos. How many kilos do {a} crates weigh? ",
    "A team has {b} players. How many players are on {a} teams? ",
  ),
  "add": (
    "Tom has {a} marbles and finds {b} more. How many marbles does Tom have now? ",
    "A bus carries {a} people, and {b} more get on. How many people are on the bus? ",
    "There are {a} red cars and {b} blue cars. How many cars are there in all? ",
    "Anna read {a} pages on Monday and {b} pages on Tuesday. How many pages did she read? ",
    "A farm has {a} cows and {b} sheep. How many animals does the farm have? ",
    "A jar holds {a} coins. Someone puts in {b} more. How many coins are in the jar? ",
    "Ben walked {a} miles, then {b} miles further. How many miles did he walk? ",
    "A class has {a} girls and {b} boys. How many children are in the class? ",
  ),
  "subtract": (
    "Sam had {a} apples and gave away {b}. How many apples does Sam have now? ",
    "A bus carries {a} people, and {b} get off. How many people are still on the bus? ",
    "There were {a} birds on a tree. {b} flew away. How many birds are left? ",
    "A shop had {a} cakes and sold {b}. How many cakes are left? ",
    "Mia has {a} stickers and loses {b}. How many stickers does Mia have now? ",
    "A tank holds {a} liters of water, and {b} liters leak out. How many liters remain? ",
    "A book has {a} pages. Ken has read {b}. How many pages has he still to read? ",
    "A box had {a} pens. {b} were taken out. How many pens are in the box now? ",
  ),
  "divide": (
    "{a} cookies are shared equally among {b} children. How many cookies does each child get? ",
    "{a} pens are packed into {b} equal boxes. How many pens are in each box? ",
    "A rope {a} meters long is cut into {b} equal pieces. How long is each piece in meters? ",
    "{a} students form {b} equal teams. How many students are on each team? ",
    "{a} apples are put into bags of {b}. How many bags are filled? ",
    "A prize of {a} dollars is split evenly between {b} winners. How many dollars does each winner get? ",
    "{a} chairs are set out in {b} equal rows. How many chairs are in each row? ",
    "A trip of {a} miles is driven in {b} equal days. How many miles are driven each day? ",
  ),
}
WORD_HELDOUT_TEMPLATES = {
  "multiply": (
    "A garden has {a} rows with {b} flowers in every row. How many flowers does it have? ",
    "Every page holds {b} stamps. How many stamps fit on {a} pages? ",
    "A worker earns {b} coins per hour. How many coins does the worker earn in {a} hours? ",
  ),
  "add": (
    "A shop sold {a} hats in the morning and {b} hats in the afternoon. How many hats did it sell? ",
    "Lily picked {a} berries, then picked {b} others. How many berries does she have? ",
    "A library got {a} new books in May and {b} in June. How many new books did it get? ",
  ),
  "subtract": (
    "A rope is {a} meters long. A piece of {b} meters is cut off. How many meters are left? ",
    "Jo had {a} dollars and spent {b}. How many dollars does Jo have now? ",
    "A parking lot had {a} cars. {b} drove out. How many cars are still there? ",
  ),
  "divide": (
    "{a} stamps are spread evenly over {b} pages. How many stamps are on each page? ",
    "{a} eggs fill cartons of {b}. How many cartons are filled? ",
    "A bill of {a} dollars is paid equally by {b} friends. How many dollars does each friend pay? ",
  ),
}

EVAL_ONLY_FORMATS = ("symbolic_alt",)
# A stream per format, apart from make_splits' triple draws ([seed, op_index]) and select_examples' cap.
_STREAM = {"fewshot": 104729, "word": 130363, "symbolic_alt": 155921}


def fitting_operations(a: int, b: int, result: int) -> list[str]:
  """The operations under which `a ? b = result` holds (division only when exact)."""
  from lazarus_jax.data.arithmetic import OPERATIONS

  out = []
  for op in OPERATIONS:
    if op == "multiply":
      ok = a * b == result
    elif op == "add":
      ok = a + b == result
    elif op == "subtract":
      ok = a - b == result
    else:
      ok = b != 0 and a % b == 0 and a // b == result
    if ok:
      out.append(op)
  return out


def unambiguous_pairs(operation: str, pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
  """The pairs whose solved example `a ? b = a op b` fits `operation` and no other (example candidates)."""
  from lazarus_jax.data.arithmetic import compute

  return [(a, b) for a, b in pairs if fitting_operations(a, b, compute(a, operation, b)) == [operation]]


def fewshot_prompt(symbol: str, shots: Sequence[tuple[int, int, int]], a: int, b: int) -> str:
  """`a1 # b1 = r1\\n...\\na # b = ` from the solved examples (a, b, shown result) and the query."""
  lines = [f"{x} {symbol} {y} = {r}" for x, y, r in shots]
  return "\n".join(lines + [f"{a} {symbol} {b} = "])


def draw_shots(
  operation: str, candidates: Sequence[tuple[int, int]], query: tuple[int, int], k: int, rng: np.random.Generator
) -> tuple[tuple[int, int, int], ...]:
  """k distinct solved examples of `operation` from `candidates` (unambiguous training pairs), none the query."""
  from lazarus_jax.data.arithmetic import compute

  pool = [p for p in candidates if p != query]
  if len(pool) < k:
    raise ValueError(f"only {len(pool)} example pairs for {operation}, fewshot_k={k}")
  idx = rng.choice(len(pool), size=k, replace=False)
  return tuple((pool[i][0], pool[i][1], compute(pool[i][0], operation, pool[i][1])) for i in idx)


def render(
  fmt: str,
  operation: str,
  pairs: Sequence[tuple[int, int]],
  train_pairs: Sequence[tuple[int, int]],
  heldout: bool,
  seed: int,
  op_index: int,
  fewshot_k: int = DEFAULT_FEWSHOT_K,
) -> list:
  """The `Example`s of one operation's `pairs` in a round-2 format; `heldout` picks the evaluation pools.
  `train_pairs` are the operation's training pairs (the fewshot examples come from them)."""
  from lazarus_jax.data.arithmetic import Example, compute

  rng = np.random.default_rng([seed, op_index, _STREAM[fmt], int(heldout)])
  out = []
  if fmt == "fewshot":
    symbols = FEWSHOT_HELDOUT_SYMBOLS if heldout else FEWSHOT_TRAIN_SYMBOLS
    candidates = unambiguous_pairs(operation, train_pairs)
    for a, b in pairs:
      symbol = symbols[rng.integers(len(symbols))]
      shots = draw_shots(operation, candidates, (a, b), fewshot_k, rng)
      out.append(
        Example(
          prompt=fewshot_prompt(symbol, shots, a, b),
          answer=str(compute(a, operation, b)),
          operation=operation,
          a=a,
          b=b,
          fmt=fmt,
          symbol=symbol,
          shots=shots,
        )
      )
  elif fmt == "word":
    templates = (WORD_HELDOUT_TEMPLATES if heldout else WORD_TEMPLATES)[operation]
    for a, b in pairs:
      t = int(rng.integers(len(templates)))
      out.append(
        Example(
          prompt=templates[t].format(a=a, b=b),
          answer=str(compute(a, operation, b)),
          operation=operation,
          a=a,
          b=b,
          fmt=fmt,
          template=t,
        )
      )
  elif fmt == "symbolic_alt":
    for a, b in pairs:
      for spelling in ALT_SPELLINGS.get(operation, ()):
        out.append(
          Example(
            prompt=f"{a} {spelling} {b} = ",
            answer=str(compute(a, operation, b)),
            operation=operation,
            a=a,
            b=b,
            fmt=fmt,
            symbol=spelling,
          )
        )
  else:
    raise ValueError(f"not a round-2 format: {fmt!r}")
  return out


# ---- counterfactuals and counterparts (evaluation of fewshot and word) -----------------------------------


def fewshot_with_operation(e, operation: str, candidates: Sequence[tuple[int, int]], rng: np.random.Generator, fmt: str):
  """Fewshot example `e`'s query and symbol with as many solved examples of `operation`, drawn from `candidates`
  (that operation's unambiguous training pairs): the answer is the query under `operation`, `source` e's own."""
  from lazarus_jax.data.arithmetic import Example, compute

  shots = draw_shots(operation, candidates, (e.a, e.b), len(e.shots), rng)
  return Example(
    prompt=fewshot_prompt(e.symbol, shots, e.a, e.b),
    answer=str(compute(e.a, operation, e.b)),
    operation=operation,
    a=e.a,
    b=e.b,
    fmt=fmt,
    symbol=e.symbol,
    shots=shots,
    source=e.operation,
  )


def counterfactual_examples(examples: Sequence, train_pairs_by_op: dict, seed: int) -> list:
  """For each held-out fewshot example: the same query and symbol with solved examples of another operation,
  drawn at random among those under which the query is a valid problem (division exact, subtraction
  non-negative; every query is valid under add and multiply, so there is always one). The label is the operation
  the new examples show: a classifier that reads the examples follows it (the flip rate); one that reads the
  query's operands does not. The answer is the query under the new operation. The new examples come from that
  operation's training pairs, like every fewshot example."""
  from lazarus_jax.data.arithmetic import OPERATIONS

  rng = np.random.default_rng([seed, _STREAM["fewshot"], 17])
  candidates = {op: unambiguous_pairs(op, train_pairs_by_op[op]) for op in OPERATIONS if op in train_pairs_by_op}
  out = []
  for e in examples:
    others = [op for op in OPERATIONS if op != e.operation and op in candidates and valid_query(e.a, op, e.b)]
    if others:
      op = others[int(rng.integers(len(others)))]
      out.append(fewshot_with_operation(e, op, candidates[op], rng, "fewshot_counterfactual"))
  return out


def word_template(e) -> tuple[bool, int, str]:
  """(held out?, index, template) of the word template that renders example `e` (its operation's training and
  held-out lists are disjoint, so the prompt names one)."""
  for heldout, table in ((False, WORD_TEMPLATES), (True, WORD_HELDOUT_TEMPLATES)):
    for i, t in enumerate(table[e.operation]):
      if t.format(a=e.a, b=e.b) == e.prompt:
        return heldout, i, t
  raise ValueError(f"no word template renders {e.prompt!r} ({e.operation})")


def counterpart(e, operation: str, train_pairs_by_op: dict | None, seed: int):
  """Example `e` (fewshot or word) with the same operands under `operation`, a pure function of (e, seed):
  - fewshot: the same query and symbol, with solved examples of `operation` from its training pairs
    (`train_pairs_by_op[operation]`), drawn with a stream of (seed, operands, operation);
  - word: `operation`'s template of the same split side and index (modulo that list's length).
  The answer is `e.a operation e.b` (the caller picks an operation under which it is an integer)."""
  from lazarus_jax.data.arithmetic import OPERATIONS, Example, compute

  if e.fmt == "fewshot":
    if not train_pairs_by_op or not train_pairs_by_op.get(operation):
      raise ValueError(f"a fewshot counterpart under {operation!r} needs that operation's training pairs")
    rng = np.random.default_rng([seed, _STREAM["fewshot"], 37, e.a, e.b, OPERATIONS.index(operation)])
    return fewshot_with_operation(e, operation, unambiguous_pairs(operation, train_pairs_by_op[operation]), rng, "fewshot")
  if e.fmt == "word":
    heldout, i, _ = word_template(e)
    templates = (WORD_HELDOUT_TEMPLATES if heldout else WORD_TEMPLATES)[operation]
    t = i % len(templates)
    prompt = templates[t].format(a=e.a, b=e.b)
    return Example(prompt=prompt, answer=str(compute(e.a, operation, e.b)), operation=operation, a=e.a, b=e.b, fmt="word", template=t)
  raise ValueError(f"no counterpart rule for format {e.fmt!r}")


def valid_query(a: int, operation: str, b: int) -> bool:
  if operation == "divide":
    return b != 0 and a % b == 0
  if operation == "subtract":
    return a >= b
  return True


def shuffled_examples(examples: Sequence, seed: int) -> list:
  """The held-out fewshot examples with their solved examples' results shuffled across the whole set: the
  operands, symbol and query stay, the results no longer follow any operation. Kept only where no single example
  still fits the prompt's operation, so the prompt carries no evidence of its label beyond its operands and
  magnitudes. The label stays the original operation: a lens that computes from the examples falls to the
  input-only baseline here."""
  from lazarus_jax.data.arithmetic import Example

  rng = np.random.default_rng([seed, _STREAM["fewshot"], 29])
  results = [r for e in examples for _, _, r in e.shots]
  perm = rng.permutation(len(results))
  out, i = [], 0
  for e in examples:
    shots = tuple((x, y, results[perm[i + j]]) for j, (x, y, _) in enumerate(e.shots))
    i += len(e.shots)
    if any(e.operation in fitting_operations(x, y, r) for x, y, r in shots):
      continue
    out.append(
      Example(
        prompt=fewshot_prompt(e.symbol, shots, e.a, e.b),
        answer=e.answer,
        operation=e.operation,
        a=e.a,
        b=e.b,
        fmt="fewshot_shuffled",
        symbol=e.symbol,
        shots=shots,
        source=e.operation,
      )
    )
  return out
