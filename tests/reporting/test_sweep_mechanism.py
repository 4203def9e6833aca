"""Is the classifier used more after dual-reward training than after SFT? The sweep's paired class-ablation contrast
(sweep_stats.mechanism_contrasts): arms' mechanism sections computed by the real intervention code on the tiny
model, the pooled figures checked against a direct numpy computation of the same per-prompt differences, and the
sweep's reporting run end to end on arms whose results.json hold those sections."""

import json
import os
import sys

import numpy as np
import pytest
from test_sweep import fake_results

from lazarus_jax.analysis import mechanism, stats
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.reporting import sweep, sweep_report, sweep_stats

import repo

sys.path.insert(0, os.path.join(repo.ROOT, "tests", "analysis"))
sys.path.insert(0, repo.ROOT)
from test_mechanism_per_example import LABELS, _digit_model, _section  # noqa: E402

from configs import tiny as tiny_config  # noqa: E402

FRACTION = 0.25  # the tiny model's 4 blocks: L = 1, row 2, one of the rows _section edits (0, 2, 4)
ROW = 2


def _adapted(model, tok, examples, key: int) -> dict:
  """The mechanism section of the model with a random rank-4 LoRA-like update (draw `key`; A as LoRA initialises it,
  B Gaussian, scale alpha / rank = 2) merged into blocks 1-2's v and o: a stand-in for a trained arm. Merged
  (W + scale * A B) and drawn with numpy, so generation reuses the base model's compiled forward and no jax.random
  kernel compiles (seconds each on a slow CPU)."""
  rng = np.random.default_rng(key)
  saved = {t: getattr(model.layers, t)[...] for t in ("v", "o")}
  for t, w in saved.items():
    _, din, dout = w.shape
    a = rng.uniform(-(din**-0.5), din**-0.5, (2, din, 4))
    b = 0.3 * rng.standard_normal((2, 4, dout))
    getattr(model.layers, t)[...] = w.at[1:3].add((2.0 * a @ b).astype(w.dtype))
  try:
    return _section(model, tok, examples, integers_only=False)
  finally:
    for t, w in saved.items():
      getattr(model.layers, t)[...] = w


@pytest.fixture(scope="module")
def arms():
  """{seed: {arm: section}}: per seed its own held-out prompts (12 and 16, so a mean over seeds of per-seed means is
  not the mean over all prompts), the base model and two adapters (sft, dual). Some clean answers of the tiny model
  are not integers: those prompts count as wrong (`_section(integers_only=False)`)."""
  model, tok = _digit_model()
  out = {}
  for seed, operands in ((0, (3, 7, 12)), (1, (4, 9, 11, 13))):
    examples = [data_lib.make_example(a, op, b, "symbolic") for a in operands for op in LABELS[:2] for b in (2, 5)]
    out[seed] = {
      "base": _section(model, tok, examples, integers_only=False),
      "sft": _adapted(model, tok, examples, 10 + seed),
      "dual": _adapted(model, tok, examples, 20 + seed),
    }
  return out


ARM_WEIGHTS = {"base": None, "sft": 0.0, "dual": 0.7}


def _arm(name: str, seed: int) -> sweep.Arm:
  w = ARM_WEIGHTS[name]
  return sweep.Arm(name, w, "symbolic", FRACTION if name == "dual" else None, seed)


def _results(name: str, section: dict | None) -> dict:
  """The parts of an arm's results.json that mechanism_runs reads: the base arm evaluates the base model alone."""
  tag = "base" if ARM_WEIGHTS[name] is None else "adapted"
  mech = None if section is None else {"base": None, "adapted": None, tag: section}
  return {"model": {"n_layers": 4}, "mechanism": mech}


def _runs(arms, fractions=(FRACTION,)) -> list[dict]:
  return [
    run
    for seed, by_arm in arms.items()
    for name, sec in by_arm.items()
    for run in sweep_stats.mechanism_runs(_arm(name, seed), _results(name, sec), list(fractions))
  ]


def _vectors(sec: dict, row: int):
  """Direct from the per-prompt strings: clean correct, class-ablated correct, first Gaussian draw correct."""
  pe = sec["per_example"]
  i = pe["ablation"]["rows"].index(row)
  return tuple(stats.unbits(s).astype(int) for s in (pe["answer_correct"], pe["ablation"]["class"][i], pe["ablation"]["random"][i]))


def test_pooled_contrast_matches_a_direct_computation(arms):
  cons = sweep_stats.mechanism_contrasts(_runs(arms))
  assert [c["contrast"] for c in cons] == ["dual - sft", "dual - base"]  # sft first: the question's contrast
  for con in cons:
    b = con["b"]
    assert con["seeds"] == [0, 1] and con["unpaired"] == [] and con["layer"] == 1 and con["row"] == ROW
    assert con["n_prompts"] == sum(len(arms[s]["dual"]["per_example"]["key"]) for s in (0, 1))
    assert [r["row"] for r in con["rows"]] == [0, 2, 4] and con["at_L"] is con["rows"][1]
    moved = False
    for r in con["rows"]:
      cls, rnd, broken, effects = [], [], [], []
      for s in (0, 1):
        ca, xa, ra = _vectors(arms[s]["dual"], r["row"])
        cb, xb, rb = _vectors(arms[s][b], r["row"])
        cls.append((ca - xa) - (cb - xb))
        rnd.append((ca - ra) - (cb - rb))
        broken.append((ca & (1 - xa), cb & (1 - xb)))
        effects.append(((ca - xa).mean(), (cb - xb).mean()))
      moved |= any(np.any(d != 0) for d in cls)
      # Point estimates: the mean over seeds of each seed's mean over its prompts.
      assert r["a_effect"] == pytest.approx(np.mean([e[0] for e in effects]), abs=1e-12)
      assert r["b_effect"] == pytest.approx(np.mean([e[1] for e in effects]), abs=1e-12)
      d = r["difference"]
      assert d["mean_diff"] == pytest.approx(np.mean([x.mean() for x in cls]), abs=1e-12)
      assert d["mean_diff"] == pytest.approx(r["a_effect"] - r["b_effect"], abs=1e-12)
      assert r["random_difference"]["mean_diff"] == pytest.approx(np.mean([x.mean() for x in rnd]), abs=1e-12)
      # The interval: seeds, then prompts (the hierarchical bootstrap of those very vectors, percentile ends).
      boot = stats.hierarchical_bootstrap(cls, sweep_stats.N_RESAMPLES, sweep_stats.BOOTSTRAP_SEED)
      assert (d["ci_low"], d["ci_high"]) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-12)
      assert d["ci_low"] <= d["mean_diff"] <= d["ci_high"] and (d["n_groups"], d["n"]) == (2, con["n_prompts"])
      assert r["verdict"] == ("higher" if d["ci_low"] > 0 else "lower" if d["ci_high"] < 0 else "cannot tell")
      # McNemar per seed on the prompts broken in one arm only.
      want = [(int(np.sum((x == 1) & (y == 0))), int(np.sum((x == 0) & (y == 1)))) for x, y in broken]
      assert [(t["n10"], t["n01"]) for t in r["broken"]["mcnemar"]] == want and r["broken"]["seeds"] == [0, 1]
      assert r["broken"]["mean_diff"] == pytest.approx(np.mean([x.mean() - y.mean() for x, y in broken]), abs=1e-12)
    assert moved  # not vacuous: the two arms' ablation effects differ on some prompts
    # Per seed: exactly the single-evaluation contrast of those two sections.
    for ps in con["per_seed"]:
      s = ps.pop("seed")
      assert ps == mechanism.ablation_contrast(arms[s]["dual"], arms[s][b], ("dual", b))


def test_unpaired_seeds_and_missing_rows_are_reported_not_fatal(arms):
  other = {s: dict(by) for s, by in arms.items()}
  pe = arms[1]["sft"]["per_example"]
  other[1]["sft"] = {**arms[1]["sft"], "per_example": {**pe, "key": pe["key"][::-1]}}  # other prompts' order
  other[2] = {"dual": arms[0]["dual"], "sft": None, "base": None}  # a seed whose baselines ran without the mechanism
  con = next(c for c in sweep_stats.mechanism_contrasts(_runs(other)) if c["b"] == "sft")
  assert con["seeds"] == [0] and [u["seed"] for u in con["unpaired"]] == [1, 2]
  assert "prompts differ" in con["unpaired"][0]["reason"] and con["unpaired"][1]["reason"] == "no mechanism section in sft"
  assert con["at_L"]["difference"]["n_groups"] == 1
  md = "\n".join(sweep_report.mechanism_markdown([con], "95%"))
  assert "| ↳ seed 1 | not paired: the arms' mechanism prompts differ" in md and "| ↳ seed 0 |" in md
  # At depth 0.5 (L = 2, row 3) neither arm edited row 3: the rows both have are kept, the table says why L is empty.
  runs = [r for r in _runs(arms, (0.5,)) if r["arm"] != "dual"]
  runs += sweep_stats.mechanism_runs(sweep.Arm("dual", 0.7, "symbolic", 0.5, 0), _results("dual", arms[0]["dual"]), [0.5])
  con = next(c for c in sweep_stats.mechanism_contrasts(runs) if c["b"] == "sft")
  assert con["at_L"] is None and [r["row"] for r in con["rows"]] == [0, 2, 4]
  md = "\n".join(sweep_report.mechanism_markdown([con], "95%"))
  assert "| dual - sft | symbolic | 0.5 | 3 (L=2) | row 3 not edited in both arms" in md
  # Arms evaluated without eval.mechanism: no runs, no section.
  assert sweep_stats.mechanism_runs(_arm("dual", 0), _results("dual", None), [FRACTION]) == []
  assert sweep_report.mechanism_markdown(None, "95%") == []


def test_sweep_reports_the_contrast_from_the_arms_results(tmp_path, arms):
  """The sweep's own reporting (sweep.run over finished arms: nothing trains) reads the arms' mechanism sections."""
  c = tiny_config.get_config()
  c.sweep.weights, c.sweep.formats, c.sweep.layer_fractions, c.sweep.seeds = "0,0.7", "symbolic", f"{FRACTION}", "0,1"
  c.eval.mechanism.enabled = True
  c.eval.probes = False
  workdir = str(tmp_path)
  rng = np.random.default_rng(0)
  keys = [f"p{i}" for i in range(40)]
  for arm in sweep.plan(c):
    ac = sweep.arm_config(c, arm, workdir)
    armdir = sweep.arm_dir(workdir, arm, ac)
    os.makedirs(os.path.join(armdir, "eval"))
    with open(os.path.join(armdir, "config.json"), "w") as f:
      json.dump(ac.to_dict(), f, default=list)
    outcomes = (rng.random(40) < 0.5).astype(int)
    res = fake_results("symbolic", keys, outcomes, outcomes, first=outcomes)
    res.update(_results(arm.arm, arms[arm.seed][arm.arm]), formats=["symbolic"], classifier_layer=1)
    with open(sweep.results_path(armdir), "w") as f:
      json.dump(res, f)
  out = sweep.run(c, workdir)
  assert out["ran"] == []  # every arm reused: only the reporting ran
  want = sweep_stats.mechanism_contrasts(_runs(arms))
  with open(tmp_path / "sweep_results.json") as f:
    saved = json.load(f)["mechanism"]
  assert [m["contrast"] for m in saved] == ["dual - sft", "dual - base"]
  for got, exp in zip(saved, want):
    assert got["at_L"]["difference"] == pytest.approx(exp["at_L"]["difference"])
    assert got["at_L"]["random_difference"] == pytest.approx(exp["at_L"]["random_difference"])
  md = (tmp_path / "sweep.md").read_text()
  head = md.index("## Is the classifier used more after dual-reward training than after SFT?")
  assert md.index("## symbolic") < head < md.index("## Answers")
  assert "**Positive = the class ablation costs a's answers more than b's on the same prompts" in md
  d, r = want[0]["at_L"]["difference"], want[0]["at_L"]["random_difference"]
  line = next(x for x in md.splitlines() if x.startswith("| dual - sft | symbolic | 0.25 | 2 (L=1) |"))
  assert f"| {100 * d['mean_diff']:+.1f} pp [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] |" in line
  assert f"| {100 * r['mean_diff']:+.1f} pp [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] |" in line
  assert md.count("| ↳ seed ") == 4  # two seeds under each contrast
  # Without mechanism sections the sweep writes no such section (as for its other optional sections).
  assert "Is the classifier used more" not in sweep.render_markdown(out["summary"], out["contrasts"], out["grid"], out["meta"], [])
