"""The mechanism analyses on the cue-free formats (fewshot, word): counterpart prompts for patching and steering,
token roles for the readout-attention analysis, and one evaluate run with the mechanism on both formats (tiny model,
real code path)."""

import json
import math
import os
import sys

import numpy as np
import pytest

from lazarus_jax.analysis import interventions as iv
from lazarus_jax.analysis import vo_analysis
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data import prompt_formats as pf
from lazarus_jax.models.tiny import tiny_tokenizer
from lazarus_jax.reporting import evaluate

import repo

sys.path.insert(0, repo.ROOT)
from configs import tiny as tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def splits():
  return data_lib.make_splits(formats=("fewshot", "word"), n_eval_per_op=24, seed=5)


def _held(splits, fmt):
  return [e for e in splits.eval if e.fmt == fmt]


def test_fewshot_counterparts_keep_query_and_symbol_and_show_the_other_operation(splits):
  train_pairs = iv.train_pairs_by_operation(splits.train)
  held = _held(splits, "fewshot")
  assert {e.operation for e in held} == set(data_lib.OPERATIONS)
  for e in held:
    cp = iv.counterpart_example(e, train_pairs, seed=5)
    op = iv.STEER_TO[e.operation]
    assert (cp.a, cp.b, cp.symbol, cp.operation, cp.fmt) == (e.a, e.b, e.symbol, op, "fewshot") and op != e.operation
    assert cp.answer == str(data_lib.compute(e.a, op, e.b))
    assert cp.prompt.split("\n")[-1] == e.prompt.split("\n")[-1] == f"{e.a} {e.symbol} {e.b} = "  # the same query
    assert len(cp.shots) == len(e.shots) and cp.shots != e.shots
    for x, y, r in cp.shots:  # solved examples of the counterpart's operation only, from its training pairs
      assert pf.fitting_operations(x, y, r) == [op] and (x, y) in train_pairs[op] and (x, y) != (e.a, e.b)
      assert f"{x} {e.symbol} {y} = {r}" in cp.prompt
    assert iv.counterpart_example(e, train_pairs, seed=5) == cp  # a pure function of (example, seed)
  with pytest.raises(ValueError, match="training pairs"):
    iv.counterpart_example(held[0], None)


def test_word_counterparts_use_the_other_operations_template_of_the_same_side(splits):
  for e in _held(splits, "word"):
    cp = iv.counterpart_example(e)
    op = iv.STEER_TO[e.operation]
    assert (cp.a, cp.b, cp.operation, cp.fmt) == (e.a, e.b, op, "word")
    assert cp.answer == str(data_lib.compute(e.a, op, e.b))
    heldout, index, template = pf.word_template(cp)
    _, own_index, _ = pf.word_template(e)
    assert heldout and template == pf.WORD_HELDOUT_TEMPLATES[op][own_index % len(pf.WORD_HELDOUT_TEMPLATES[op])]
    assert cp.prompt == template.format(a=e.a, b=e.b) and index == cp.template
  train = [e for e in splits.train if e.fmt == "word"][:50]
  for e in train:  # a training prompt's counterpart stays on the training side
    assert not pf.word_template(iv.counterpart_example(e))[0]


def _pieces(tok, ids, roles):
  """{role: the text of its tokens, decoded together}."""
  return {r: tok.decode([t for t, x in zip(ids, roles) if x == r]) for r in set(roles)}


def test_fewshot_token_roles_cover_the_symbol_query_operands_and_examples(splits):
  tok = tiny_tokenizer()
  held = _held(splits, "fewshot")
  symbols = set()
  for e in held:
    ids = data_lib.encode_prompt(tok, e.prompt)
    roles = vo_analysis.token_roles(tok, e, ids)
    pieces = _pieces(tok, ids, roles)
    query = e.prompt.rfind("\n") + 1
    assert pieces["examples"] == e.prompt[:query]  # every solved-example token, newlines included, and nothing else
    assert pieces["operator"] == e.symbol  # the query's symbol only (two byte tokens for a two-byte symbol)
    assert (pieces["operand_a"].strip(), pieces["operand_b"].strip()) == (str(e.a), str(e.b))
    assert set(roles) <= set(vo_analysis.FORMAT_ROLES["fewshot"]) and roles[-1] == "readout_token"
    symbols.add(e.symbol)
  assert any(len(s.encode()) > 1 for s in symbols)  # a multi-byte symbol was among them


def test_word_token_roles_have_operands_and_no_operator(splits):
  tok = tiny_tokenizer()
  b_first = 0
  for e in _held(splits, "word"):
    ids = data_lib.encode_prompt(tok, e.prompt)
    roles = vo_analysis.token_roles(tok, e, ids)
    pieces = _pieces(tok, ids, roles)
    assert "operator" not in roles and set(roles) <= set(vo_analysis.FORMAT_ROLES["word"])
    assert (pieces["operand_a"], pieces["operand_b"]) == (str(e.a), str(e.b))
    assert roles[-1] == "readout_token"
    b_first += roles.index("operand_b") < roles.index("operand_a")
  assert b_first > 0  # templates that name b first (a box holds {b} pens ... {a} boxes) are read by the template


def _numbers(o, path="mechanism"):
  if isinstance(o, dict):
    for k, v in o.items():
      yield from _numbers(v, f"{path}.{k}")
  elif isinstance(o, list):
    for i, v in enumerate(o):
      yield from _numbers(v, f"{path}[{i}]")
  elif isinstance(o, (int, float)) and not isinstance(o, bool):
    yield path, o


def test_evaluate_with_the_mechanism_on_the_cue_free_formats(tmp_path):
  """Both cue-free formats in one evaluate run (and symbolic_alt, which has no counterpart prompts): each format's
  prompts are patched, steered and split by token role as its own."""
  c = tiny_config.get_config()
  c.data.format, c.data.eval_format = "fewshot,word", "fewshot,word,symbolic_alt"
  c.eval.adapter = "none"
  c.eval.max_examples_per_op = 3
  c.eval.probes = False
  c.eval.max_new_tokens = 3
  m = c.eval.mechanism
  m.enabled, m.rows, m.n_random, m.steer_alphas, m.max_examples_per_op = True, "0,3,4", 1, "0,2", 3
  m.tuned_lens_train, m.tuned_lens_steps = 16, 5
  evaluate.run(c, str(tmp_path))
  res = json.load(open(tmp_path / "eval" / "results.json"))
  mech = res["mechanism"]
  sec = mech["base"]
  assert res["formats"] == ["fewshot", "symbolic_alt", "word"] and mech["adapted"] is None and sec["rows"] == [0, 3, 4]
  assert mech["skipped_formats"] == ["symbolic_alt"]  # no counterparts there
  assert sec["n"] == 24  # 3 triples per operation, in each of the two analysed formats
  nums = list(_numbers(sec))
  assert len(nums) > 100 and all(math.isfinite(v) for _, v in nums), [p for p, v in nums if not math.isfinite(v)]
  for key in ("answer_accuracy", "first_token_accuracy"):
    assert sec["ablation"]["clean"][key]["accuracy"] is not None
  # Patched after the last block, the first token is the counterpart prompt's own: the counterpart run is the source.
  last = sec["patching"]["rows"][-1]
  assert last["row"] == 4 and last["source_output_first_token"]["accuracy"] == 1.0
  assert sec["patching"]["n"] == sec["steering"]["n"] > 0
  zero = sec["steering"]["alphas"][0]
  assert zero["alpha"] == 0 and zero["class"]["changed_answer_fraction"] == 0.0
  att = sec["attention"]
  assert list(att["by_format"]) == ["fewshot", "word"] and att["by_format"]["fewshot"]["n"] == att["by_format"]["word"]["n"] == 12
  for fmt, part in att["by_format"].items():
    want = list(vo_analysis.FORMAT_ROLES[fmt])
    assert part["roles"] == want, fmt
    total = sum(np.asarray(part["mean_mass"][r]) for r in want)
    np.testing.assert_allclose(total, 1.0, atol=1e-5, err_msg=fmt)  # every readout head's attention, split over the roles
    assert ("operator" in part["mean_mass"]) == ("examples" in part["mean_mass"]) == (fmt == "fewshot"), fmt
  text = open(tmp_path / "eval" / "report.md").read()
  assert "## Mechanism: is the classifier used?" in text and "### Readout attention by token role" in text
  assert "no operator token" in text  # word's prompts
  assert "Not analysed (no counterpart prompts): symbolic_alt." in text
  for name in ("mechanism_interventions.png", "mechanism_tuned_lens.png", "mechanism_heads.png"):
    assert os.path.getsize(tmp_path / "eval" / name) > 0, name
