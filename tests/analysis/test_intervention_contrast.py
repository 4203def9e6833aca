"""Steering and patching, adapted minus base, paired prompt by prompt (mechanism.intervention_contrast): sections from
the real intervention code on the tiny model, every figure checked against a direct numpy computation from the
per_example strings, the overlap of two different counterpart subsets, refusals and skips, and report.md's tables."""

import os
import sys

import numpy as np
import pytest

from lazarus_jax.analysis import mechanism, stats
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.reporting import mechanism_report

import repo

sys.path.insert(0, os.path.join(repo.ROOT, "tests", "reporting"))
sys.path.insert(0, os.path.join(repo.ROOT, "tests", "analysis"))
from test_mechanism_per_example import LABELS, _digit_model, _section  # noqa: E402
from test_sweep_mechanism import _adapted  # noqa: E402

STEERING = (("target_answer", "class_target_answer"), ("target_output", "class_target_output"))
STEERING += (("random_target_output", "random_target_output"),)
PATCHING = (("follows_source", "follows_source"), ("follows_source_output", "follows_source_output"))


@pytest.fixture(scope="module")
def sections():
  """Base and a stand-in adapted model (a random LoRA-like update merged into v/o) on the same 12 prompts."""
  model, tok = _digit_model()
  examples = [data_lib.make_example(a, op, b, "symbolic") for a in (3, 7, 12) for op in LABELS[:2] for b in (2, 5)]
  return _section(model, tok, examples, integers_only=False), _adapted(model, tok, examples, 20)


def _full(section: dict, name: str, what: str, i: int) -> np.ndarray:
  """One counterpart-ordered string spread over all prompts: its 0/1 where the prompt is in `counterpart`, -1 elsewhere."""
  pe = section["per_example"]
  mask = stats.unbits(pe["counterpart"])
  out = np.full(mask.shape, -1)
  out[mask] = stats.unbits(pe[name][what][i])
  return out


def _check(con: dict, a: dict, b: dict) -> float:
  """Every figure against numpy on the prompts in both counterpart subsets; returns the largest |difference| seen."""
  ma, mb = (stats.unbits(s["per_example"]["counterpart"]) for s in (a, b))
  shared = ma & mb
  assert con["n"] == int(shared.sum()) and con["n_counterpart"] == [int(ma.sum()), int(mb.sum())]
  entries = []
  sa, sb = a["per_example"]["steering"], b["per_example"]["steering"]
  assert [e["alpha"] for e in con["steering"]["alphas"]] == [x for x in sa["alphas"] if x in sb["alphas"]]
  for e in con["steering"]["alphas"]:
    i, j = sa["alphas"].index(e["alpha"]), sb["alphas"].index(e["alpha"])
    entries += [(e[k], _full(a, "steering", w, i)[shared], _full(b, "steering", w, j)[shared]) for k, w in STEERING]
  qa, qb = a["per_example"]["patching"], b["per_example"]["patching"]
  assert [e["row"] for e in con["patching"]["rows"]] == [r for r in qa["rows"] if r in qb["rows"]]
  for e in con["patching"]["rows"]:
    i, j = qa["rows"].index(e["row"]), qb["rows"].index(e["row"])
    entries += [(e[k], _full(a, "patching", w, i)[shared], _full(b, "patching", w, j)[shared]) for k, w in PATCHING]
  largest = 0.0
  for d, x, y in entries:
    assert x.min() >= 0 and y.min() >= 0  # only prompts both models steered and patched
    assert d["a_rate"] == pytest.approx(x.mean(), abs=1e-12) and d["b_rate"] == pytest.approx(y.mean(), abs=1e-12)
    assert d["mean_diff"] == pytest.approx((x - y).mean(), abs=1e-12) and d["n"] == x.size
    assert d["ci_low"] <= d["mean_diff"] <= d["ci_high"]
    n10, n01 = int(np.sum((x == 1) & (y == 0))), int(np.sum((x == 0) & (y == 1)))
    assert d["mcnemar"] == {"n10": n10, "n01": n01, "p": stats.mcnemar_exact(n10, n01)}
    largest = max(largest, abs(d["mean_diff"]))
  return largest


def _drop_first_counterpart(section: dict) -> dict:
  """The section with its first counterpart prompt taken out of steering and patching (as if its answer matched)."""
  pe = section["per_example"]
  mask = stats.unbits(pe["counterpart"])
  mask[np.argmax(mask)] = False
  out = {**pe, "counterpart": stats.bits(mask)}
  for name in ("steering", "patching"):
    out[name] = {k: (v if k in ("alphas", "rows") else [s[1:] for s in v]) for k, v in pe[name].items()}
  return {**section, "per_example": out}


def test_intervention_contrast_matches_numpy(sections):
  base, adapted = sections
  con = mechanism.intervention_contrast(adapted, base)
  assert (con["a"], con["b"], con["skipped"]) == ("adapted", "base", {})
  assert con["steering"]["row"] == base["steering"]["row"] == 3 and con["steering"]["layer"] == 2
  assert _check(con, adapted, base) > 0  # not vacuous: the adapter moves some answers differently
  # A model against itself: every paired difference is exactly 0, with no discordant prompt.
  same = mechanism.intervention_contrast(base, base, ("base", "base"))
  assert _check(same, base, base) == 0.0 and same["n"] == same["n_counterpart"][0] > 0
  # Different counterpart subsets: only the prompts both steered and patched are paired (by prompt, not position).
  fewer = _drop_first_counterpart(base)
  part = mechanism.intervention_contrast(adapted, fewer)
  assert part["n"] == int(
    (stats.unbits(adapted["per_example"]["counterpart"]) & stats.unbits(fewer["per_example"]["counterpart"])).sum()
  )
  _check(part, adapted, fewer)
  # The report's tables: one line per alpha and per row, the paired figures printed.
  text = "\n".join(mechanism_report.intervention_contrast_rows({"intervention_contrast": con}, heading=True))
  assert "### Is the classifier used more after training?" in text and "moves the adapted model's answer more often" in text
  for head, n in (
    ("| steering at row 3, alpha |", len(con["steering"]["alphas"])),
    ("| patching row |", len(con["patching"]["rows"])),
  ):
    assert len(text[text.index(head) :].split("\n\n")[0].splitlines()) == 2 + n
  assert mechanism_report._signed(con["patching"]["rows"][-1]["follows_source_output"]) in text


def test_intervention_contrast_refuses_or_skips(sections):
  base, adapted = sections
  assert mechanism.intervention_contrast(adapted, None) is None
  other = {**base, "per_example": {**base["per_example"], "key": base["per_example"]["key"][::-1]}}
  with pytest.raises(ValueError, match="same prompts"):
    mechanism.intervention_contrast(adapted, other)
  # Another row L+1 (another classifier layer): steering is not compared, patching still is.
  moved = {**base, "steering": {**base["steering"], "row": 2}}
  con = mechanism.intervention_contrast(adapted, moved)
  assert con["steering"] is None and "different rows (3 and 2)" in con["skipped"]["steering"]
  assert [r["row"] for r in con["patching"]["rows"]] == [0, 4] and "steering" not in con["patching"]
  text = "\n".join(mechanism_report.intervention_contrast_rows({"intervention_contrast": con}, heading=False))
  assert "Steering: not compared" in text and "| steering at row" not in text and "| patching row |" in text
  # No counterpart prompt in common: both skipped, nothing paired.
  pe = base["per_example"]
  empty = {**base, "per_example": {**pe, "counterpart": "0" * len(pe["key"])}}
  con = mechanism.intervention_contrast(adapted, empty)
  assert (con["n"], con["steering"], con["patching"]) == (0, None, None) and set(con["skipped"]) == {"steering", "patching"}


def _random_section(rng, keys: list, alphas: list, rows: list) -> dict:
  """A section's steering and patching outcomes drawn at random (half the bits set), over a random counterpart subset:
  dense discordant pairs and shifted positions, which the tiny model's sparse outcomes seldom give."""
  mask = rng.random(len(keys)) < 0.7
  m = int(mask.sum())

  def draw(k: int) -> list:
    return [stats.bits(rng.random(m) < 0.5) for _ in range(k)]

  steering = {"alphas": alphas, **{w: draw(len(alphas)) for _, w in STEERING}, "class_target_first_token": draw(len(alphas))}
  patching = {"rows": rows, **{w: draw(len(rows)) for _, w in PATCHING}, "source_output_first_token": draw(len(rows))}
  per = {"key": keys, "counterpart": stats.bits(mask), "steering": steering, "patching": patching}
  return {"steering": {"row": 3}, "per_example": per}


def test_intervention_contrast_pairs_by_prompt_on_random_outcomes():
  """Different subsets, alphas and rows in another order, one alpha and one row only in a: paired by prompt and value."""
  rng = np.random.default_rng(0)
  keys = [f"symbolic|{i} + 1 = " for i in range(40)]
  a = _random_section(rng, keys, [0.0, 4.0, 8.0], [0, 2, 4])
  b = _random_section(rng, keys, [8.0, 0.0], [4, 0])
  con = mechanism.intervention_contrast(a, b, ("dual", "sft"))
  assert [e["alpha"] for e in con["steering"]["alphas"]] == [0.0, 8.0] and [e["row"] for e in con["patching"]["rows"]] == [0, 4]
  ma, mb = (stats.unbits(s["per_example"]["counterpart"]) for s in (a, b))
  assert 0 < con["n"] < min(ma.sum(), mb.sum())  # a strict overlap, so positions in the two strings differ
  assert _check(con, a, b) > 0
