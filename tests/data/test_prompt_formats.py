"""The round-2 formats (prompt_formats.py): nothing held out reaches training, fewshot examples determine one
operation, word prompts carry no operation word, counterfactual and shuffled prompts are built as described."""

import re

import pytest

from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data import prompt_formats as pf
from lazarus_jax.errors import UserError
from lazarus_jax.models.tiny import tiny_tokenizer

ALL = ("symbolic", "semantic", "fewshot", "word", "symbolic_alt")


@pytest.fixture(scope="module")
def splits():
  return data_lib.make_splits(formats=("fewshot", "word"), n_eval_per_op=60, seed=3, eval_formats=ALL)


def _shot_lines(prompt):
  """(a, symbol, b, result) of each solved line and (a, symbol, b) of the query, parsed back from the text."""
  *shots, query = prompt.split("\n")
  solved = [re.fullmatch(r"(\d+) (\S+) (\d+) = (-?\d+)", s).groups() for s in shots]
  q = re.fullmatch(r"(\d+) (\S+) (\d+) = ", query).groups()
  return [(int(a), s, int(b), int(r)) for a, s, b, r in solved], (int(q[0]), q[1], int(q[2]))


def test_no_heldout_triple_symbol_or_template_in_training(splits):
  held = {e.triple for e in splits.eval}
  held_swaps = {(b, op, a) for a, op, b in held if op in data_lib.COMMUTATIVE}
  train_pairs = {op: {(e.a, e.b) for e in splits.train if e.operation == op} for op in data_lib.OPERATIONS}
  for e in splits.train:
    assert e.triple not in held and e.triple not in held_swaps
    if e.fmt == "fewshot":
      solved, (qa, sym, qb) = _shot_lines(e.prompt)
      assert sym in pf.FEWSHOT_TRAIN_SYMBOLS and (qa, qb) == (e.a, e.b)
      for a, s, b, r in solved:  # no held-out problem is shown solved, in any operation's training prompt
        assert (a, e.operation, b) not in held and (a, b) in train_pairs[e.operation]
      for held_sym in pf.FEWSHOT_HELDOUT_SYMBOLS:
        assert held_sym not in e.prompt
    if e.fmt == "word":
      assert e.prompt == pf.WORD_TEMPLATES[e.operation][e.template].format(a=e.a, b=e.b)
      for t in pf.WORD_HELDOUT_TEMPLATES[e.operation]:
        assert e.prompt != t.format(a=e.a, b=e.b)
  # The pools and template sets are disjoint, and the evaluation side uses only the held-out ones.
  assert not set(pf.FEWSHOT_TRAIN_SYMBOLS) & set(pf.FEWSHOT_HELDOUT_SYMBOLS)
  for op in data_lib.OPERATIONS:
    assert len(pf.WORD_TEMPLATES[op]) >= 8 and pf.WORD_HELDOUT_TEMPLATES[op]
    assert not set(pf.WORD_TEMPLATES[op]) & {t for ts in pf.WORD_HELDOUT_TEMPLATES.values() for t in ts}
  fewshot_eval = [e for e in splits.eval if e.fmt == "fewshot"]
  word_eval = [e for e in splits.eval if e.fmt == "word"]
  assert fewshot_eval and word_eval
  assert all(_shot_lines(e.prompt)[1][1] in pf.FEWSHOT_HELDOUT_SYMBOLS for e in fewshot_eval)
  assert all(e.prompt == pf.WORD_HELDOUT_TEMPLATES[e.operation][e.template].format(a=e.a, b=e.b) for e in word_eval)
  # Every eval format renders the same held-out triples (symbolic_alt: multiply and divide only).
  by_fmt = {f: {e.triple for e in splits.eval if e.fmt == f} for f in ALL}
  assert by_fmt["fewshot"] == by_fmt["word"] == by_fmt["symbolic"] == by_fmt["semantic"]
  assert by_fmt["symbolic_alt"] == {t for t in by_fmt["symbolic"] if t[1] in ("multiply", "divide")}
  # symbolic_alt is never trained on.
  with pytest.raises(UserError, match="evaluation only"):
    data_lib.make_splits(formats=("symbolic_alt",), n_eval_per_op=20)


def test_every_fewshot_prompt_determines_exactly_one_operation(splits):
  fewshot = [e for e in splits.train + splits.eval if e.fmt == "fewshot"]
  assert len(fewshot) > 1000
  for e in fewshot:
    solved, (qa, sym, qb) = _shot_lines(e.prompt)
    assert len(solved) == 2 == len(e.shots)
    assert len({s for _, s, _, _ in solved} | {sym}) == 1  # one symbol per prompt
    fits = [set(pf.fitting_operations(a, b, r)) for a, _, b, r in solved]
    assert all(f == {e.operation} for f in fits), (e.prompt, fits)  # each example alone fits only the label
    assert (qa, qb) not in {(a, b) for a, _, b, _ in solved}
    assert e.answer == str(data_lib.compute(qa, e.operation, qb))
  # The excluded kind really exists in the ranges (2 # 2 = 4 fits add and multiply), so the rule is not vacuous.
  assert pf.fitting_operations(2, 2, 4) == ["multiply", "add"]
  assert (2, 2) not in pf.unambiguous_pairs("multiply", [(2, 2), (3, 4)])


def test_fewshot_symbols_are_redrawn_and_k_is_configurable():
  s = data_lib.make_splits(formats=("fewshot",), n_eval_per_op=20, seed=0, fewshot_k=3)
  symbols = {_shot_lines(e.prompt)[1][1] for e in s.train}
  assert symbols == set(pf.FEWSHOT_TRAIN_SYMBOLS)
  assert all(len(e.shots) == 3 for e in s.train + s.eval)
  # Deterministic, and independent of which other formats are rendered.
  again = data_lib.make_splits(formats=("symbolic", "fewshot"), n_eval_per_op=20, seed=0, fewshot_k=3)
  assert [e.prompt for e in again.train if e.fmt == "fewshot"] == [e.prompt for e in s.train]
  with pytest.raises(UserError, match="fewshot_k"):
    data_lib.make_splits(formats=("fewshot",), fewshot_k=0)


def test_word_prompts_name_no_operation():
  banned = [
    "times",
    "plus",
    "minus",
    "divided",
    "multipl",
    "add",
    "subtract",
    "divide",
    "sum",
    "product",
    "difference",
    "quotient",
    "*",
    "+",
    "/",
    "×",
    "÷",
    "=",
  ]
  for op in data_lib.OPERATIONS:
    for t in pf.WORD_TEMPLATES[op] + pf.WORD_HELDOUT_TEMPLATES[op]:
      text = t.format(a=7, b=3).lower()
      assert not [w for w in banned if w in text], (t, [w for w in banned if w in text])
      assert " - " not in text and t.endswith("? ")
  # The operation-word targets never occur in any format's prompt as tokens (the resolver would refuse them).
  from lazarus_jax.data.targets import resolve_targets

  tok = tiny_tokenizer()
  s = data_lib.make_splits(formats=("fewshot", "word"), n_eval_per_op=20, seed=0, eval_formats=ALL)
  resolve_targets(tok, None, prompts=[e.prompt for e in s.train + s.eval])


def test_formats_encode_with_the_one_encode_function():
  tok = tiny_tokenizer()
  s = data_lib.make_splits(formats=("fewshot", "word"), n_eval_per_op=16, seed=0, eval_formats=ALL)
  for e in s.train[::50] + s.eval:
    enc = data_lib.encode_example(tok, e.prompt, e.answer, append_eos=True)
    assert tok.decode(enc.answer_ids).strip() == e.answer


def test_counterfactual_prompts_keep_query_and_symbol_and_swap_the_examples(splits):
  held = [e for e in splits.eval if e.fmt == "fewshot"]
  pairs = data_lib.split_pairs(seed=3, n_eval_per_op=60)
  cf = pf.counterfactual_examples(held, {op: tr for op, (_, tr) in pairs.items()}, seed=3)
  assert len(cf) == len(held)  # every query is valid under add and multiply, so each has a counterfactual
  held_triples = {e.triple for e in splits.eval}
  for orig, e in zip(held, cf):
    solved, (qa, sym, qb) = _shot_lines(e.prompt)
    assert (qa, qb) == (orig.a, orig.b) and sym == orig.symbol and e.source == orig.operation
    assert e.operation != orig.operation and pf.valid_query(qa, e.operation, qb)
    assert all(pf.fitting_operations(a, b, r) == [e.operation] for a, _, b, r in solved)
    assert all((a, e.operation, b) not in held_triples for a, _, b, _ in solved)
    assert e.answer == str(data_lib.compute(qa, e.operation, qb))
  assert len({e.operation for e in cf}) == 4


def test_shuffled_prompts_keep_operands_and_break_the_results(splits):
  held = [e for e in splits.eval if e.fmt == "fewshot"]
  sh = pf.shuffled_examples(held, seed=3)
  assert 0.5 * len(held) < len(sh) <= len(held)
  orig = {(e.a, e.b, e.operation, e.symbol): e for e in held}
  for e in sh:
    o = orig[(e.a, e.b, e.operation, e.symbol)]
    solved, query = _shot_lines(e.prompt)
    assert [(a, b) for a, _, b, _ in solved] == [(a, b) for a, b, _ in o.shots]  # operands kept
    assert all(e.operation not in pf.fitting_operations(a, b, r) for a, _, b, r in solved)
    assert query == (o.a, o.symbol, o.b) and e.answer == o.answer
