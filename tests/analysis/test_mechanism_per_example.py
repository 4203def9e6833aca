"""The mechanism's per-prompt outcomes (mechanism.per_example) and the paired ablation-effect contrast they allow
(mechanism.ablation_contrast), on the tiny model (real code path): the bits aggregate exactly to the reported
accuracies, a model against itself differs by exactly 0, and an evaluate run with the mechanism on writes its
whole section (both into results.json and report.md, the figures, the intervention contrast)."""

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lazarus_jax.analysis import interventions as iv
from lazarus_jax.analysis import mechanism, stats
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.errors import UserError
from lazarus_jax.models.generate import parse_integer
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import PROJS
from lazarus_jax.reporting import evaluate

import repo
from tiny_runs import random_adapter_dir

sys.path.insert(0, repo.ROOT)
from configs import tiny as tiny_config  # noqa: E402

MAX_NEW = 3
LABELS = ["multiply", "add", "subtract", "divide"]
CLASS_IDS = [5, 17, 40, 77]
LAST_ROW = 4  # the tiny model's 4 blocks: row 4 is after the last one


def _digit_model():
  """The tiny model with larger weights and every non-digit token's (tied) embedding shrunk: its greedy answers are
  integers that vary with the prompt, so answer outcomes are mixed (a random tiny model answers no integer)."""
  pre = load_pretrained("tiny-random")
  model, tok = pre.build(), pre.tokenizer
  for name in PROJS:
    var = getattr(model.layers, name)
    var[...] = var[...] * 6.0
  digits = np.zeros((model.cfg.vocab_size,), bool)
  digits[[tok.encode(str(d))[-1] for d in range(10)]] = True
  emb = model.embed if model.cfg.tie_word_embeddings else model.lm_head
  emb[...] = emb[...] * jnp.where(jnp.asarray(digits)[:, None], 1.0, 0.1).astype(emb[...].dtype)
  return model, tok


@pytest.fixture(scope="module")
def tiny():
  model, tok = _digit_model()
  examples = [data_lib.make_example(a, op, b, "symbolic") for a in (3, 7, 12) for op in LABELS[:2] for b in (2, 5)]
  examples += [data_lib.make_example(a, "subtract", b, "symbolic") for a, b in ((9, 4), (15, 6))]
  return model, tok, examples


def _section(model, tok, examples, integers_only: bool = True):
  """One model's mechanism outcomes, with the "correct" answer set to the model's own clean answer on every other
  prompt (and one more on the rest), so the clean run is half right and the edits move answers both ways.
  integers_only: every clean answer must parse as an integer (asserted); otherwise a prompt whose clean answer is
  not an integer keeps its true answer, which a non-integer output cannot match (wrong, as evaluate scores it)."""
  prep = iv.prepare(model, tok, examples, MAX_NEW)
  parsed = [parse_integer(t) for t in prep.clean.texts]
  if integers_only:
    assert all(v is not None for v in parsed), prep.clean.texts
  own = np.asarray([int(e.answer) if v is None else v for v, e in zip(parsed, examples)])
  answers = np.where(np.arange(len(own)) % 2 == 0, own, own + 1)
  answers = np.where([v is None for v in parsed], own, answers).astype(int)
  prep = dataclasses.replace(prep, answers=answers, first_ids=iv.first_answer_tokens(tok, examples, answers))
  out = {
    "rows": [0, 2, 4],
    "ablation": iv.ablation(model, tok, prep, CLASS_IDS, rows=[0, 2, 4], n_random=2),
    "steering": iv.steering(model, tok, prep, CLASS_IDS, LABELS, row=3, alphas=[0, 4]),
    "patching": iv.patching(model, tok, prep, rows=[0, 4]),
  }
  out["per_example"] = mechanism.per_example(prep, out)
  return out


def _count(text: str) -> int:
  return int(stats.unbits(text).sum())


def _check_bits_aggregate(sec: dict) -> None:
  """Every per-prompt string has one character per prompt (of its subset) and counts exactly the reported n_correct."""
  pe, abl = sec["per_example"], sec["ablation"]
  n = len(pe["key"])
  assert n == abl["n"] and len(pe["answer_correct"]) == len(pe["first_token_correct"]) == len(pe["counterpart"]) == n
  assert _count(pe["answer_correct"]) == abl["clean"]["answer_accuracy"]["n_correct"]
  assert _count(pe["first_token_correct"]) == abl["clean"]["first_token_accuracy"]["n_correct"]
  assert pe["ablation"]["rows"] == [r["row"] for r in abl["rows"]]
  for i, r in enumerate(abl["rows"]):
    assert _count(pe["ablation"]["class"][i]) == r["class"]["answer_accuracy"]["n_correct"]
    for control in ("random", "random_tokens"):
      assert len(pe["ablation"][control][i]) == n
      assert _count(pe["ablation"][control][i]) == r[control][0]["answer_accuracy"]["n_correct"]
  m = _count(pe["counterpart"])
  assert m == sec["steering"]["n"] == sec["patching"]["n"]
  st = pe["steering"]
  assert st["alphas"] == [a["alpha"] for a in sec["steering"]["alphas"]]
  for i, a in enumerate(sec["steering"]["alphas"]):
    assert len(st["class_target_answer"][i]) == len(st["class_target_output"][i]) == len(st["random_target_output"][i]) == m
    assert _count(st["class_target_answer"][i]) == a["class"]["target_answer"]["n_correct"]
    assert _count(st["class_target_output"][i]) == a["class"]["target_output"]["n_correct"]
    assert _count(st["class_target_first_token"][i]) == a["class"]["target_first_token"]["n_correct"]
    assert _count(st["random_target_output"][i]) == a["random"]["target_output"]["n_correct"]
  pa = pe["patching"]
  assert pa["rows"] == [r["row"] for r in sec["patching"]["rows"]]
  for i, r in enumerate(sec["patching"]["rows"]):
    assert len(pa["follows_source"][i]) == len(pa["follows_source_output"][i]) == m
    assert _count(pa["follows_source"][i]) == r["follows_source"]["n_correct"]
    assert _count(pa["follows_source_output"][i]) == r["follows_source_output"]["n_correct"]
    assert _count(pa["source_output_first_token"][i]) == r["source_output_first_token"]["n_correct"]
  # Patched after the last block, every prompt's first token is the source run's (by construction).
  assert pa["rows"][-1] == LAST_ROW and pa["source_output_first_token"][-1] == "1" * m
  for name in ("ablation", "steering", "patching"):  # moved to per_example, not left in the aggregate sections
    assert "per_example" not in sec[name]


def _check_contrast(con: dict, a: dict, b: dict) -> None:
  """The contrast's numbers against the two sections' aggregates and a direct count of the discordant prompts."""
  ca, cb = (stats.unbits(s["per_example"]["answer_correct"]) for s in (a, b))
  assert [r["row"] for r in con["rows"]] == a["per_example"]["ablation"]["rows"]
  for i, r in enumerate(con["rows"]):
    want = []
    for s in (a, b):
      at = s["ablation"]["rows"][i]
      want.append(s["ablation"]["clean"]["answer_accuracy"]["accuracy"] - at["class"]["answer_accuracy"]["accuracy"])
    assert r["a_effect"] == pytest.approx(want[0], abs=1e-12) and r["b_effect"] == pytest.approx(want[1], abs=1e-12)
    d = r["difference"]
    assert d["mean_diff"] == pytest.approx(want[0] - want[1], abs=1e-12) and d["ci_low"] <= d["mean_diff"] <= d["ci_high"]
    xa, xb = (stats.unbits(s["per_example"]["ablation"]["class"][i]) for s in (a, b))
    broken_a, broken_b = ca & ~xa, cb & ~xb
    mc = r["broken"]["mcnemar"]
    assert (mc["n10"], mc["n01"]) == (int(np.sum(broken_a & ~broken_b)), int(np.sum(~broken_a & broken_b)))
    assert r["broken"]["mean_diff"] == pytest.approx(broken_a.mean() - broken_b.mean(), abs=1e-12)


def test_per_example_bits_aggregate_and_the_paired_contrast(tiny):
  model, tok, examples = tiny
  base = _section(model, tok, examples)
  _check_bits_aggregate(base)
  pe = base["per_example"]
  assert pe["key"] == [f"symbolic|{e.prompt}" for e in examples]  # data_lib.example_key's form
  # Not vacuous: the clean run is half right, and some ablation row moves answers.
  assert pe["answer_correct"] == "10" * (len(examples) // 2)  # as _section set the answers: in prompt order
  assert any(c != pe["answer_correct"] for c in pe["ablation"]["class"])

  # A model against itself: every per-prompt difference is 0, so the difference and its interval are exactly 0.
  same = mechanism.ablation_contrast(base, base, ("base", "base"))
  assert same["n"] == len(examples) and len(same["rows"]) == 3
  for r in same["rows"]:
    assert r["a_effect"] == r["b_effect"]
    assert (r["difference"]["mean_diff"], r["difference"]["ci_low"], r["difference"]["ci_high"]) == (0.0, 0.0, 0.0)
    assert (r["random_difference"]["mean_diff"], r["random_difference"]["ci_low"], r["random_difference"]["ci_high"]) == (
      0.0,
      0.0,
      0.0,
    )
    assert r["broken"]["mean_diff"] == 0.0 and r["broken"]["mcnemar"] == {"n10": 0, "n01": 0, "p": 1.0}
  _check_contrast(same, base, base)

  # An adapted model on the same prompts: the contrast is its effect minus the base's, prompt by prompt.
  add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("v", "o"), layer_start=1, layer_end=3), seed=0)
  keys = iter(jax.random.split(jax.random.key(3), 2))
  for t in ("v", "o"):
    b = getattr(model.lora, f"{t}_b")
    b[...] = 0.3 * jax.random.normal(next(keys), b[...].shape)
  try:
    adapted = _section(model, tok, examples)
  finally:
    model.lora = nnx.data(None)
  _check_bits_aggregate(adapted)
  con = mechanism.ablation_contrast(adapted, base)
  assert (con["a"], con["b"]) == ("adapted", "base")
  _check_contrast(con, adapted, base)
  assert mechanism.ablation_contrast(adapted, None) is None
  other = {**base, "per_example": {**base["per_example"], "key": base["per_example"]["key"][::-1]}}
  with pytest.raises(ValueError, match="same prompts"):
    mechanism.ablation_contrast(adapted, other)


def test_evaluate_writes_the_mechanism_section_per_example_outcomes_and_contrasts(tmp_path):
  """One evaluate run with the mechanism on (base and adapted): the section's structure, the per-prompt bits, the
  paired ablation and intervention contrasts, report.md's tables and the figures; a bad value is refused first."""
  c = tiny_config.get_config()
  c.eval.adapter = random_adapter_dir(load_pretrained("tiny-random").build().cfg, tmp_path / "adapter")
  c.eval.max_examples_per_op = 3
  c.eval.probes = False
  c.eval.max_new_tokens = 3
  m = c.eval.mechanism
  m.enabled, m.rows, m.n_random, m.steer_alphas, m.max_examples_per_op = True, "0,3,4", 1, "0,2", 3
  m.tuned_lens_train, m.tuned_lens_steps = 16, 5
  evaluate.run(c, str(tmp_path / "run"))
  res = json.load(open(tmp_path / "run" / "eval" / "results.json"))
  mech = res["mechanism"]
  base, adapted = mech["base"], mech["adapted"]
  assert mech["vo"]["targets"] == ["o", "v"] and len(mech["vo"]["delta_ov"]["class_fraction"]) == 4
  for name, sec in (("base", base), ("adapted", adapted)):
    assert sec["row"] == 3 and sec["rows"] == [0, 3, 4]
    assert [x["row"] for x in sec["ablation"]["rows"]] == [0, 3, 4]
    assert [x["row"] for x in sec["patching"]["rows"]] == [0, 3, 4]
    zero = sec["steering"]["alphas"][0]
    assert zero["alpha"] == 0 and zero["class"]["changed_answer_fraction"] == 0.0  # alpha 0 is the clean run
    assert len(sec["tuned_lens"]["rows"]) == 5 and set(sec["attention"]["mean_mass"]) == set(
      ("operand_a", "operator", "operand_b", "readout_token", "other")
    )
    assert len(mech["position_lens"][name]["rows"]) == 5
    _check_bits_aggregate(sec)
  assert base["per_example"]["key"] == adapted["per_example"]["key"] and len(base["per_example"]["key"]) == base["n"]
  assert set(base["per_example"]["key"]) <= set(res["per_example"]["key"])  # the evaluation's own example keys
  con = mech["ablation_contrast"]
  assert (con["a"], con["b"], con["n"]) == ("adapted", "base", base["n"])
  _check_contrast(con, adapted, base)
  # Steering and patching paired adapted - base on the same prompts: each side's rate is its own section's figure.
  ic = mech["intervention_contrast"]
  assert (ic["a"], ic["b"]) == ("adapted", "base") and [r["alpha"] for r in ic["steering"]["alphas"]] == [0, 2]
  assert [r["row"] for r in ic["patching"]["rows"]] == [0, 3, 4]
  for r, ra, rb in zip(ic["patching"]["rows"], adapted["patching"]["rows"], base["patching"]["rows"]):
    d = r["follows_source"]
    assert d["a_rate"] == pytest.approx(ra["follows_source"]["accuracy"])
    assert d["b_rate"] == pytest.approx(rb["follows_source"]["accuracy"])
    assert d["mean_diff"] == pytest.approx(d["a_rate"] - d["b_rate"])
    assert d["mcnemar"]["n10"] - d["mcnemar"]["n01"] == round(d["mean_diff"] * d["n"])
  text = open(tmp_path / "run" / "eval" / "report.md").read()
  assert "## Mechanism: is the classifier used?" in text and "### What V/O learned" in text
  assert "| patching row | follows the source" in text and "| steering at row 3, alpha |" in text
  assert "### Is the classifier used more after training?" in text
  assert "A positive value means the class ablation costs the adapted model more correct answers" in text
  table = text[text.index("| row | base effect | adapted effect |") :].split("\n\n")[0].splitlines()
  assert len(table) == 2 + len(con["rows"])  # header, separator, one line per row
  assert [line.split(" ")[1] for line in table[2:]] == [str(r["row"]) for r in con["rows"]]
  for name in ("mechanism_interventions.png", "mechanism_tuned_lens.png", "mechanism_heads.png", "mechanism_position_lens.png"):
    assert (tmp_path / "run" / "eval" / name).stat().st_size > 0, name
  # A bad mechanism value is refused before any work, in one line.
  m.rows = "3,99"
  with pytest.raises(UserError, match=r"eval.mechanism.rows '3,99': rows must lie in 0..4"):
    evaluate.run(c, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "eval")
