"""The controlled comparison: the grid, the statistics across seeds, and a micro sweep that resumes."""

import csv
import json
import os
import sys

import jax
import numpy as np
import pytest

from lazarus_jax.analysis.stats import mcnemar_exact, wilson_interval
from lazarus_jax.config import default_config
from lazarus_jax.errors import UserError
from lazarus_jax.reporting import sweep, sweep_report, sweep_stats

import repo

REPO = repo.ROOT
sys.path.insert(0, REPO)
from configs import tiny as tiny_config  # noqa: E402


def test_plan_runs_depth_independent_arms_once():
  c = tiny_config.get_config()
  c.sweep.weights, c.sweep.formats, c.sweep.layer_fractions, c.sweep.seeds = "0,0.7,1", "symbolic,semantic", "0.25,0.55,0.85", "0,1,2"
  arms = sweep.plan(c)
  # Per (format, seed): base + sft once each, dual and classifier at each of 3 depths.
  assert len(arms) == 2 * 3 * (1 + 1 + 3 + 3)
  assert len({a.name for a in arms}) == len(arms)
  names = {a.arm for a in arms}
  assert names == {"base", "sft", "dual", "classifier"}
  assert all(a.layer_fraction is None for a in arms if a.arm in ("base", "sft"))


def test_arm_configs_differ_only_in_the_arm_keys():
  c = tiny_config.get_config()
  a = sweep.arm_config(c, sweep.Arm("dual", 0.7, "semantic", 0.4, 2))
  b = sweep.arm_config(c, sweep.Arm("sft", 0.0, "semantic", None, 2))
  from lazarus_jax.config import flat_config

  fa, fb = flat_config(a), flat_config(b)
  assert {k for k in fa if fa[k] != fb[k]} == {"classifier.weight", "classifier.layer_fraction"}
  assert a.classifier.layer == -1 and a.data.format == "semantic" and a.seed == 2 and a.resume
  assert a.train.steps == c.train.steps and a.lora.targets == c.lora.targets and a.train.lr == c.train.lr
  with pytest.raises(AttributeError):  # locked: a typo cannot slip in
    a.classifier.wieght = 1.0


@pytest.mark.parametrize(
  "key,value", [("weights", "0,1.5"), ("formats", "symbolic,poetry"), ("layer_fractions", "0,0.5"), ("seeds", "0,x"), ("seeds", "1,1")]
)
def test_bad_grid_is_a_user_error(key, value):
  c = tiny_config.get_config()
  c.sweep[key] = value
  with pytest.raises(UserError):
    sweep.plan(c)


# ---- synthetic arms: results.json blocks with known per-example outcomes (no training) ------------------


def _bits(v) -> str:
  return "".join("1" if x else "0" for x in v)


OPS = ("multiply", "add", "subtract", "divide")


def fake_results(fmt, keys, answer, lens_rows, first=None, n_layers=4, operations=None):
  """A results.json model block: `lens_rows` holds one 0/1 vector per lens row (n_layers + 1), or one vector
  used at every row; answer/first may be None (generation off)."""
  n = len(keys)
  if not isinstance(lens_rows, list):
    lens_rows = [lens_rows] * (n_layers + 1)

  def acc(v):
    return {
      "accuracy": float(np.mean(v)),
      "n": n,
      "n_correct": int(np.sum(v)),
      **dict(zip(("ci_low", "ci_high"), wilson_interval(int(np.sum(v)), n))),
    }

  answers = (
    None
    if answer is None
    else {**acc(answer), "by_format": {fmt: {**acc(answer), "first_token_accuracy": None if first is None else acc(first)}}}
  )
  return {
    "model": {"n_layers": n_layers},
    "class_targets": {"targets": [{}, {}, {}, {}]},
    "lens": [{"by_format": {fmt: {**acc(v), "vocab_top1_accuracy": float(np.mean(v)), "mean_correct_prob": 0.5}}} for v in lens_rows],
    "probes": None,
    "answer_accuracy": answers,
    "per_example": {
      "key": [f"{fmt}|{k}" for k in keys],
      "format": [fmt] * n,
      "operation": [OPS[i % 4] for i in range(n)] if operations is None else operations,
      "answer_correct": None if answer is None else _bits(answer),
      "first_token_correct": None if first is None else _bits(first),
      "lens_correct": [_bits(v) for v in lens_rows],
    },
  }


def _outcomes(rng, n, p):
  return (rng.random(n) < p).astype(int)


def _arm_rows(arm, w, frac, seed, res, fmt="symbolic", fracs=(0.5,)):
  return sweep.arm_rows(sweep.Arm(arm, w, fmt, frac, seed), res, list(fracs))


def test_arm_config_keeps_the_confidence():
  c = tiny_config.get_config()
  c.sweep.confidence = 0.9
  ac = sweep.arm_config(c, sweep.Arm("dual", 0.7, "symbolic", 0.5, 0))
  assert ac.sweep.confidence == 0.9  # evaluate's intervals in the arm use the sweep's level


def test_arm_dir_is_keyed_by_the_result_config():
  c = tiny_config.get_config()
  arm = sweep.Arm("dual", 0.7, "symbolic", 0.5, 0)

  def h(**changes):
    cc = tiny_config.get_config()
    for k, v in changes.items():
      section, key = k.split("__")
      cc[section][key] = v
    return sweep.config_hash(sweep.arm_config(cc, arm))

  base = h()
  assert sweep.arm_dir("/w", arm, sweep.arm_config(c, arm)) == f"/w/arms/dual-symbolic-f0.5-s0-{base}"
  for change in (
    {"train__steps": 21},
    {"data__n_eval_per_op": 20},
    {"lora__rank": 8},
    {"eval__max_examples_per_op": 5},
    {"sweep__confidence": 0.9},
    {"model__compute_dtype": "bfloat16"},
  ):
    assert h(**change) != base, change  # a config that changes results never finds the old arm
  for change in (
    {"sweep__seeds": "0,1,2,3"},
    {"sweep__weights": "0,0.5"},
    {"train__log_every": 1},
    {"eval__batch_size": 3},
    {"train__table_steps": (1,)},
  ):
    assert h(**change) == base, change  # the grid and logging do not: a grown sweep reuses its arms
  # eval.mechanism adds a results section no sweep table reads: arms recorded before it existed keep their hash.
  cc = tiny_config.get_config()
  cc.eval.mechanism.enabled, cc.eval.mechanism.rows = True, "0,1"
  assert sweep.config_hash(sweep.arm_config(cc, arm)) == base
  old = sweep.arm_config(c, arm).to_dict()
  del old["eval"]["mechanism"]
  assert sweep.config_hash(old) == base
  # Every key left out of the hash is one train accepts when it resumes a partly trained arm.
  from lazarus_jax.training.loop import RESUMABLE_KEYS

  assert all(any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS) for k in sweep.NON_RESULT_KEYS)


def test_per_example_vectors_and_pairing_by_key():
  res = fake_results("symbolic", ["a", "b", "c"], [1, 0, 1], np.array([1, 1, 0]), first=None)
  keys, v = sweep_stats.per_example_vector(res, "answer_correct", "symbolic")
  assert keys == ["symbolic|a", "symbolic|b", "symbolic|c"] and v.tolist() == [1, 0, 1]
  assert sweep_stats.per_example_vector(res, "lens_correct", "symbolic", row=3)[1].tolist() == [1, 1, 0]
  assert sweep_stats.per_example_vector(res, "first_token_correct", "symbolic") is None  # generation off: not a zero
  with pytest.raises(UserError, match="format"):
    sweep_stats.per_example_vector(res, "answer_correct", "semantic")
  with pytest.raises(UserError, match="per_example"):
    sweep_stats.per_example_vector({k: v for k, v in res.items() if k != "per_example"}, "answer_correct", "symbolic")
  # Pairing follows the keys, not the order; arms on different prompts are refused.
  va, vb = sweep_stats.align((["x", "y", "z"], np.array([1, 0, 0])), (["z", "x", "y"], np.array([1, 1, 0])), "t")
  assert va.tolist() == [1, 0, 0] and vb.tolist() == [1, 0, 1]
  with pytest.raises(UserError, match="same prompts"):
    sweep_stats.align((["x", "y"], np.array([1, 0])), (["x", "w"], np.array([1, 0])), "dual vs sft")


def test_cells_bootstrap_over_seeds_and_examples_with_a_wilson_fallback():
  rng = np.random.default_rng(0)
  keys = [str(i) for i in range(60)]
  rows = []
  for seed in (0, 1, 2):
    # Seeds agree exactly on the mean (30/60) but the examples differ: the old t-interval had zero width.
    answer = np.array([1] * 30 + [0] * 30)[rng.permutation(60)]
    rows += _arm_rows("sft", 0.0, None, seed, fake_results("symbolic", keys, answer, np.ones(60, int), first=answer))
  summary = {r["metric"]: r for r in sweep.summarize(rows)}
  ans = summary["answer_accuracy"]
  assert ans["mean"] == 0.5 and ans["method"] == "bootstrap" and ans["n_examples"] == 180
  assert ans["ci_low"] < 0.5 < ans["ci_high"] and ans["ci_high"] - ans["ci_low"] > 0.05
  assert summary["first_token_accuracy"]["mean"] == 0.5  # reported beside answer accuracy
  # Every example right in every seed: the bootstrap collapses, the Wilson interval on 180/180 does not.
  lens = summary["lens_accuracy"]
  assert lens["method"] == "wilson" and (lens["ci_low"], lens["ci_high"]) == wilson_interval(180, 180)
  md = sweep.render_markdown(
    sweep.summarize(rows), [], {"formats": ["symbolic"], "layer_fractions": [0.5], "seeds": [0, 1, 2]}, _meta(), rows
  )
  assert f"100.0% [{100 * wilson_interval(180, 180)[0]:.1f}, 100.0]{sweep_report.FALLBACK_NOTE}" in md
  # One seed still gets an interval: it comes from the examples.
  one = {r["metric"]: r for r in sweep.summarize(rows[:1])}
  assert one["answer_accuracy"]["ci_low"] < 0.5 < one["answer_accuracy"]["ci_high"]


def _meta(**kw):
  return {
    "model": "tiny-random",
    "n_layers": 4,
    "steps": 2,
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "lora_targets": "v,o",
    "lr": 0.01,
    "batch_size": 8,
    "max_examples_per_op": 3,
    "design_pairs": {"symbolic": 600},
    **kw,
  }


def _two_arms(sft_p, dual_p, n=200, seeds=(0, 1, 2), fracs=(0.5,), dual_lens=None, shuffle=False):
  """sft and dual arms on the same prompts; answers drawn with the given accuracies, lens from dual_lens(frac)."""
  rng = np.random.default_rng(1)
  keys = [f"p{i}" for i in range(n)]
  rows = []
  for seed in seeds:
    sft = _outcomes(rng, n, sft_p)
    dual = _outcomes(rng, n, dual_p)
    rows += _arm_rows("sft", 0.0, None, seed, fake_results("symbolic", keys, sft, np.zeros(n, int)), fracs=fracs)
    for f in fracs:
      lens = np.ones(n, int) if dual_lens is None else _outcomes(rng, n, dual_lens[f])
      order = rng.permutation(n) if shuffle else np.arange(n)
      res = fake_results("symbolic", [keys[i] for i in order], dual[order], lens[order])
      rows += _arm_rows("dual", 0.7, f, seed, res)
  return rows


def test_paired_contrast_on_known_outcomes():
  rows = _two_arms(0.6, 0.4, shuffle=True)  # dual's examples in another order: paired by key, not position
  by_seed = {}
  for r in rows:
    by_seed.setdefault(r["seed"], {})[r["arm"]] = r["_examples"]["answer_accuracy"]
  true = np.mean([np.mean(by_seed[s]["dual"][1]) - np.mean(by_seed[s]["sft"][1]) for s in by_seed])
  d = {x["metric"]: x for x in sweep.contrasts(rows)}["answer_accuracy"]
  assert d["contrast"] == "dual - sft" and d["n_pairs"] == 600 and d["n_seeds"] == 3
  assert d["mean_diff"] == pytest.approx(true)
  assert d["ci_low"] < true < d["ci_high"] < 0 and d["verdict"] == "lower" and d["method"] == "bootstrap"
  # McNemar per seed from the aligned pairs, as a check.
  sa, sd = by_seed[0]["sft"], by_seed[0]["dual"]
  dual0 = dict(zip(*sd))
  n10 = sum(dual0[k] == 1 and v == 0 for k, v in zip(*sa))
  n01 = sum(dual0[k] == 0 and v == 1 for k, v in zip(*sa))
  assert d["mcnemar"].startswith(f"s0 {n10}:{n01} p={mcnemar_exact(n10, n01):.2g}")
  assert d["mde_80"] == pytest.approx(2.8015852 * d["se"], rel=1e-6)
  # The same prompts cannot be assumed: a dual arm evaluated on other prompts is refused.
  bad = [dict(r) for r in rows]
  r0 = next(r for r in bad if r["arm"] == "dual")
  keys, v = r0["_examples"]["answer_accuracy"]
  r0["_examples"] = {**r0["_examples"], "answer_accuracy": (["other"] + keys[1:], v)}
  with pytest.raises(UserError, match="same prompts"):
    sweep.contrasts(bad)


def test_the_classifier_term_costs_helps_or_cannot_tell():
  g = {"formats": ["symbolic"], "layer_fractions": [0.5], "seeds": [0, 1, 2]}
  for sft_p, dual_p, words in (
    (0.8, 0.3, "**costs** answers"),
    (0.3, 0.8, "**helps** answers"),
    (0.5, 0.5, "**cannot tell** (the interval includes 0)"),
  ):
    rows = _two_arms(sft_p, dual_p)
    diffs = sweep.contrasts(rows)
    first = sweep_report.answers(sweep.summarize(rows), diffs, g, rows)[0]
    d = next(x for x in diffs if x["metric"] == "answer_accuracy")
    assert words in first and f"{100 * d['mean_diff']:+.1f} pp [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]" in first
  # Both arms right on every example: the paired bootstrap collapses, the discordant-pair interval does not.
  rows = _two_arms(1.0, 1.0)
  d = next(x for x in sweep.contrasts(rows) if x["metric"] == "answer_accuracy")
  assert d["method"] == "paired wilson" and d["ci_low"] < 0 < d["ci_high"] and d["verdict"] == "cannot tell"


def test_tied_depths_say_cannot_tell_with_the_numbers():
  g = {"formats": ["symbolic"], "layer_fractions": [0.25, 0.5, 0.75], "seeds": [0, 1, 2]}
  rows = _two_arms(0.5, 0.5, fracs=(0.25, 0.5, 0.75))  # lens 100% at every depth
  summary = sweep.summarize(rows)
  depth = sweep_report.answers(summary, sweep.contrasts(rows), g, rows)[2]
  assert "dual, symbolic: **cannot tell** between" in depth
  for f, layer in ((0.25, 1), (0.5, 2), (0.75, 3)):
    assert f"fraction {f:g} (L={layer}) 100.0% [" in depth
  assert "above every other depth" not in depth


def test_a_clear_best_depth_is_named():
  g = {"formats": ["symbolic"], "layer_fractions": [0.25, 0.5, 0.75], "seeds": [0, 1, 2]}
  rows = _two_arms(0.5, 0.5, fracs=(0.25, 0.5, 0.75), dual_lens={0.25: 0.3, 0.5: 0.95, 0.75: 0.5})
  depth = sweep_report.answers(sweep.summarize(rows), [], g, rows)[2]
  assert "dual, symbolic: fraction 0.5 (L=2)" in depth and "above every other depth (closest: fraction 0.75 by +" in depth
  assert "cannot tell" not in depth


def test_symbolic_vs_semantic_unpaired():
  g = {"formats": ["symbolic", "semantic"], "layer_fractions": [0.5], "seeds": [0, 1]}
  rng = np.random.default_rng(3)
  keys = [str(i) for i in range(100)]
  rows = []
  for seed in (0, 1):
    for fmt, lens in (("symbolic", np.ones(100, int)), ("semantic", _outcomes(rng, 100, 0.5))):
      rows += sweep.arm_rows(sweep.Arm("dual", 0.7, fmt, 0.5, seed), fake_results(fmt, keys, None, lens), [0.5])
  line = sweep_report.answers(sweep.summarize(rows), [], g, rows)[1]
  assert "dual, fraction 0.5: symbolic 100.0% [" in line and "symbolic higher (symbolic − semantic +" in line
  assert sweep_report.FALLBACK_NOTE in line  # one side is 100% everywhere: Newcombe's interval, marked


def test_lens_survival_past_L():
  n = 100
  keys = [str(i) for i in range(n)]
  above, chance = np.ones(n, int), np.array([1] * 25 + [0] * 75)
  # 8 blocks, L = int(8 * 0.25) = 2 (row 3): clearly above chance on rows 3..5 (blocks 2..4), at chance on row 6.
  lens_rows = [chance, chance, chance, above, above, above, chance, above, above]
  rows = []
  for seed in (0, 1):
    res = fake_results("symbolic", keys, None, lens_rows, n_layers=8)
    rows += sweep.arm_rows(sweep.Arm("dual", 0.7, "symbolic", 0.25, seed), res, [0.25])
  assert [r["lens_survives_to"] for r in rows] == [4, 4]  # the later recovery (blocks 6, 7) does not count
  cell = next(r for r in sweep.summarize(rows) if r["metric"] == "lens_survives_to")
  assert cell["mean"] == 4 and cell["values"] == [4, 4]
  # Not above chance at L itself: no block.
  res = fake_results("symbolic", keys, None, [chance] * 9, n_layers=8)
  assert sweep.arm_rows(sweep.Arm("dual", 0.7, "symbolic", 0.25, 0), res, [0.25])[0]["lens_survives_to"] is None
  # The bar is the majority-class rate, not 1/K: with 40% of the prompts "add", an untrained lens that always says
  # " add" is right 40% of the time at every row, well above 25%, and must not count as a surviving signal.
  ops = ["add"] * 40 + ["multiply"] * 20 + ["subtract"] * 20 + ["divide"] * 20
  always_add = np.array([op == "add" for op in ops], int)
  res = fake_results("symbolic", keys, None, [always_add] * 9, n_layers=8, operations=ops)
  row = sweep.arm_rows(sweep.Arm("dual", 0.7, "symbolic", 0.25, 0), res, [0.25])[0]
  assert row["chance"] == 0.4 and row["lens_survives_to"] is None
  assert sweep_stats.survival_block([0.9, 0.25, 0.9], 5, 0.25) == 5  # at chance is not above it


def test_markdown_states_the_contrast_before_the_results():
  rows = _two_arms(0.6, 0.5)
  g = {"formats": ["symbolic"], "layer_fractions": [0.5], "seeds": [0, 1, 2]}
  summary, diffs = sweep.summarize(rows), sweep.contrasts(rows)
  md = sweep.render_markdown(summary, diffs, g, _meta(design_pairs={"symbolic": 600}), rows)
  pre, results = md.index("## The contrast that matters (stated before the results)"), md.index("## symbolic")
  assert pre < md.index("## Method") < results < md.index("## Answers")
  design = 100 * 2.8015852 * (0.5 / 600) ** 0.5  # worst case: Var(a - b) = 0.25 + 0.25 per pair
  assert "N = 600 paired examples" in md and f"is (z_0.975 + z_0.8) × SE = {design:.1f} pp" in md
  assert "hierarchical bootstrap (4000 resamples" in md and "McNemar" in md and "Wilson" in md
  d = next(x for x in diffs if x["metric"] == "answer_accuracy")
  assert f"| {100 * d['mde_80']:.1f} pp |" in md  # the observed MDE beside the contrast
  assert "| first token |" in md.replace("first token | probe", "first token |")
  assert "| survives to |" in md


@pytest.fixture(autouse=True)
def _compile_cache(tmp_path_factory):
  # Every arm compiles the same programs (the loss weight is an array): a persistent cache pays once.
  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.getbasetemp() / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def _micro_config(weights="0,0.7", seeds="0,1"):
  c = tiny_config.get_config()
  c.sweep.weights, c.sweep.formats, c.sweep.layer_fractions, c.sweep.seeds = weights, "symbolic", "0.5", seeds
  c.sweep.include_base = False
  c.train.steps = 2
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.table_steps = (2,)
  c.eval.max_examples_per_op = 3
  c.eval.probes = False
  c.eval.max_new_tokens = 2
  return c


def test_micro_sweep_writes_tables_and_resumes(tmp_path):
  c = _micro_config()
  out = sweep.run(c, str(tmp_path))
  assert sorted(out["ran"]) == sorted(["sft-symbolic-s0", "sft-symbolic-s1", "dual-symbolic-f0.5-s0", "dual-symbolic-f0.5-s1"])
  assert out["skipped"] == []
  dirs = {k: tmp_path / v for k, v in out["arm_dirs"].items()}
  for name in out["ran"]:
    assert dirs[name].name.startswith(name + "-")  # arms/<name>-<config hash>
    assert os.path.isfile(dirs[name] / "eval" / "results.json")
    assert os.path.isfile(dirs[name] / "adapter" / "adapter_model.safetensors")
  with open(tmp_path / "sweep_summary.csv") as f:
    summary = list(csv.DictReader(f))
  cells = {(r["arm"], r["metric"]): r for r in summary}
  for arm in ("sft", "dual"):
    for metric in ("lens_accuracy", "answer_accuracy", "first_token_accuracy", "vocab_top1_accuracy"):
      r = cells[(arm, metric)]
      assert r["n_seeds"] == "2" and r["layer"] == "2" and r["format"] == "symbolic"
      assert float(r["ci_low"]) < float(r["ci_high"])  # never a zero-width interval
      assert r["method"] in ("bootstrap", "wilson")
    assert cells[(arm, "lens_survives_to")]["method"].startswith("last block")
  # The table's numbers are the arms' own results, averaged over seeds.
  accs = []
  for s in (0, 1):
    with open(dirs[f"dual-symbolic-f0.5-s{s}"] / "eval" / "results.json") as f:
      res = json.load(f)
    assert res["classifier_layer"] == 2 and res["base"] is None
    assert res["provenance"]["config"]["sweep"]["confidence"] == c.sweep.confidence
    accs.append(res["classifier_eval"]["accuracy"])
  np.testing.assert_allclose(float(cells[("dual", "lens_accuracy")]["mean"]), np.mean(accs))
  with open(tmp_path / "sweep_contrasts.csv") as f:
    contrast_rows = list(csv.DictReader(f))
  assert {r["contrast"] for r in contrast_rows} == {"dual - sft"}
  answer = next(r for r in contrast_rows if r["metric"] == "answer_accuracy")
  assert answer["mcnemar"].startswith("s0 ") and answer["verdict"] in ("higher", "lower", "cannot tell")
  assert float(answer["ci_low"]) < float(answer["ci_high"]) and int(answer["n_pairs"]) > 0
  md = (tmp_path / "sweep.md").read_text()
  assert "## symbolic" in md and "| dual | 0.7 | 0.5 | 2 |" in md and "## Answers" in md
  assert md.index("## The contrast that matters") < md.index("## symbolic") and "## Method" in md
  assert "2 training steps per arm" in md
  assert os.path.getsize(tmp_path / "sweep_lens.png") > 0 and os.path.getsize(tmp_path / "sweep_answer.png") > 0

  # Resume: a second call trains nothing and rebuilds the same table.
  mtime = os.path.getmtime(dirs["dual-symbolic-f0.5-s0"] / "eval" / "results.json")
  again = sweep.run(c, str(tmp_path))
  assert again["ran"] == [] and sorted(again["skipped"]) == sorted(out["ran"])
  assert os.path.getmtime(dirs["dual-symbolic-f0.5-s0"] / "eval" / "results.json") == mtime
  assert again["summary"] == out["summary"]


def test_a_changed_config_never_reuses_an_arm(tmp_path):
  c = _micro_config(weights="0", seeds="0")
  first = sweep.run(c, str(tmp_path))
  assert first["ran"] == ["sft-symbolic-s0"]
  c.train.steps = 3  # another run: the old arm's results must not be reported under it
  second = sweep.run(c, str(tmp_path))
  assert second["ran"] == ["sft-symbolic-s0"] and second["skipped"] == []
  assert second["arm_dirs"] != first["arm_dirs"]
  with open(tmp_path / second["arm_dirs"]["sft-symbolic-s0"] / "eval" / "results.json") as f:
    assert json.load(f)["training"]["last"]["step"] == 3
  assert "3 training steps per arm" in (tmp_path / "sweep.md").read_text()
  # A stored config that disagrees with the arm's hash (edited by hand) is refused, not reused.
  cfg = tmp_path / second["arm_dirs"]["sft-symbolic-s0"] / "config.json"
  doc = json.loads(cfg.read_text())
  doc["train"]["lr"] = 1.0
  cfg.write_text(json.dumps(doc))
  with pytest.raises(UserError, match="another config"):
    sweep.run(c, str(tmp_path))


def test_target_sets_and_eval_formats_are_sweep_dimensions():
  c = tiny_config.get_config()
  c.sweep.weights, c.sweep.formats, c.sweep.layer_fractions, c.sweep.seeds = "0,0.7", "fewshot", "0.5", "0"
  c.sweep.target_sets, c.sweep.eval_formats = "operation,arbitrary", "all"
  arms = sweep.plan(c)
  assert [a.arm for a in arms] == ["base", "sft", "dual", "base@arbitrary", "sft@arbitrary", "dual@arbitrary"]
  ac = sweep.arm_config(c, arms[-1])
  assert ac.classifier.target_set == "arbitrary" and ac.data.eval_format == "all" and ac.data.format == "fewshot"
  assert sweep.arm_config(c, arms[3]).eval.adapter == "none"  # base@arbitrary is a base arm
  c.sweep.target_sets = "operation,colours"
  with pytest.raises(UserError, match="target_sets"):
    sweep.grid(c)


def test_keys_added_later_keep_an_older_arms_hash_at_their_defaults():
  c = tiny_config.get_config()
  arm = sweep.Arm("dual", 0.7, "symbolic", 0.5, 0)
  ac = sweep.arm_config(c, arm)
  old = ac.to_dict()  # as a config.json written before these keys existed
  for section, key in (
    ("data", "eval_format"),
    ("data", "fewshot_k"),
    ("classifier", "target_set"),
    ("sweep", "eval_formats"),
    ("sweep", "target_sets"),
    ("model", "attention"),
    ("model", "layer_loop"),
  ):
    del old[section][key]
  assert sweep.config_hash(old) == sweep.config_hash(ac)
  c.data.fewshot_k = 3
  assert sweep.config_hash(sweep.arm_config(c, arm)) != sweep.config_hash(ac)  # a non-default value is a new arm


def test_recorded_arms_keep_their_hash_after_keys_were_added():
  """Keys added later (train.objective, train.init_adapter, grpo.*, sweep.grpo_*) at their defaults leave an arm's
  hash alone: every arm recorded in docs/results/arms still hashes to its directory name."""
  arms_dir = os.path.join(REPO, "docs", "results", "arms")
  names = sorted(os.listdir(arms_dir))
  assert len(names) >= 40
  for name in names:
    with open(os.path.join(arms_dir, name, "config.json")) as f:
      stored = json.load(f)
    if not name.startswith(("grpo", "sft+more")):  # the GRPO arms and their equal-budget control came later
      assert "objective" not in stored["train"] and "grpo" not in stored  # recorded before GRPO existed
    assert sweep.config_hash(stored) == name.rsplit("-", 1)[1], name
    # The same arm configured today holds every key added since, at its default: the hash must not move.
    assert sweep.config_hash(with_defaults(stored, default_config().to_dict())) == name.rsplit("-", 1)[1], name


def with_defaults(stored: dict, defaults: dict) -> dict:
  """`stored` with every key it lacks taken from `defaults` (nested)."""
  out = dict(stored)
  for k, v in defaults.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, dict) and isinstance(out[k], dict):
      out[k] = with_defaults(out[k], v)
  return out


def test_grpo_arms_warm_start_from_the_same_seeds_sft_arm():
  c = _micro_config(weights="0,0.7", seeds="0,1")
  c.sweep.grpo_arms, c.sweep.grpo_steps, c.sweep.grpo_lr = "grpo,grpo+lens,sft+more,sft+lens", 3, 1e-3
  arms = sweep.plan(c)
  assert [a.name for a in arms if a.seed == 0] == [
    "sft-symbolic-s0",
    "dual-symbolic-f0.5-s0",
    "grpo-symbolic-s0",
    "grpo+lens-symbolic-f0.5-s0",
    "sft+more-symbolic-s0",
    "sft+lens-symbolic-f0.5-s0",
  ]
  from lazarus_jax.config import flat_config

  sft = sweep.Arm("sft", 0.0, "symbolic", None, 1)
  grpo = sweep.Arm("grpo", 0.0, "symbolic", None, 1)
  fs, fg = flat_config(sweep.arm_config(c, sft, "/w")), flat_config(sweep.arm_config(c, grpo, "/w"))
  assert {k for k in fs if fs[k] != fg[k]} == {
    "train.objective",
    "train.steps",
    "train.lr",
    "train.warmup_steps",
    "train.init_adapter",
  }
  assert fg["train.init_adapter"] == os.path.join(sweep.arm_dir("/w", sft, sweep.arm_config(c, sft)), "adapter")
  # The equal-budget control: GRPO's warm start, steps, lr and batches, with the supervised objective.
  more = flat_config(sweep.arm_config(c, sweep.Arm("sft+more", 0.0, "symbolic", None, 1), "/w"))
  assert {k for k in fs if fs[k] != more[k]} == {"train.steps", "train.lr", "train.warmup_steps", "train.init_adapter"}
  assert {k for k in fg if fg[k] != more[k]} == {"train.objective"}
  lens = flat_config(sweep.arm_config(c, sweep.Arm("grpo+lens", 0.7, "symbolic", 0.5, 1), "/w"))
  assert lens["classifier.weight"] == 0.7 and lens["train.objective"] == "grpo"
  # grpo+lens's control: its warm start, steps, lr, batches, weight and layer, with the dual-reward objective.
  sft_lens = flat_config(sweep.arm_config(c, sweep.Arm("sft+lens", 0.7, "symbolic", 0.5, 1), "/w"))
  assert {k for k in lens if lens[k] != sft_lens[k]} == {"train.objective"}
  assert sft_lens["train.objective"] == "dual_reward"
  # The hash holds the SFT arm's directory name, not where the sweep lives.
  assert sweep.config_hash(sweep.arm_config(c, grpo, "/w")) == sweep.config_hash(sweep.arm_config(c, grpo, "/x/y"))
  c.sweep.weights = "0.7"
  with pytest.raises(UserError, match="must include 0"):
    sweep.plan(c)


def test_micro_sweep_with_a_grpo_arm(tmp_path):
  c = _micro_config(weights="0", seeds="0")
  c.sweep.grpo_arms, c.sweep.grpo_steps, c.grpo.group_size, c.grpo.max_new_tokens = "grpo,sft+more,sft+lens", 2, 2, 2
  out = sweep.run(c, str(tmp_path))
  assert out["ran"] == ["sft-symbolic-s0", "grpo-symbolic-s0", "sft+more-symbolic-s0", "sft+lens-symbolic-f0.5-s0"]
  with open(tmp_path / out["arm_dirs"]["sft+lens-symbolic-f0.5-s0"] / "config.json") as f:
    lens_cfg = json.load(f)
  assert lens_cfg["train"]["objective"] == "dual_reward" and lens_cfg["classifier"]["weight"] == 0.7
  with open(tmp_path / out["arm_dirs"]["sft+more-symbolic-s0"] / "train_summary.json") as f:
    more = json.load(f)
  assert more["objective"] == "dual_reward" and more["init_adapter"]["final_step"] == 2  # from the SFT arm's step 2
  with open(tmp_path / out["arm_dirs"]["grpo-symbolic-s0"] / "train_summary.json") as f:
    summary = json.load(f)
  assert summary["objective"] == "grpo" and summary["init_adapter"]["final_step"] == 2
  md = (tmp_path / "sweep.md").read_text()
  assert "GRPO arms (train.objective=grpo)" in md and "| grpo | 0 | 0.5 | 2 |" in md
  assert "**Does GRPO produce better classifiers?**" in md and "vs sft+more" in md
  assert "- sft+more: the same seed's SFT adapter trained 2 more supervised steps" in md
  assert "- sft+lens: the same seed's SFT adapter trained 2 more dual-reward steps (w 0.7)" in md
  with open(tmp_path / "sweep_contrasts.csv") as f:
    assert {r["contrast"] for r in csv.DictReader(f)} == {"grpo - sft", "sft+more - sft", "sft+lens - sft"}
