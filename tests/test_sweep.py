"""The controlled comparison: the grid, the statistics across seeds, and a micro sweep that resumes."""

import csv
import json
import os
import sys

import jax
import numpy as np
import pytest

from lazarus_jax import sweep
from lazarus_jax.errors import UserError
from lazarus_jax.stats import mean_ci

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import tiny as tiny_config  # noqa: E402


def test_plan_runs_depth_independent_arms_once():
  c = tiny_config.get_config()
  c.sweep.weights, c.sweep.formats, c.sweep.layer_fractions, c.sweep.seeds = "0,0.7,1", "symbolic,semantic", \
      "0.25,0.55,0.85", "0,1,2"
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
  from lazarus_jax.train import flat_config
  fa, fb = flat_config(a), flat_config(b)
  assert {k for k in fa if fa[k] != fb[k]} == {"classifier.weight", "classifier.layer_fraction"}
  assert a.classifier.layer == -1 and a.data.format == "semantic" and a.seed == 2 and a.resume
  assert a.train.steps == c.train.steps and a.lora.targets == c.lora.targets and a.train.lr == c.train.lr
  with pytest.raises(AttributeError):  # locked: a typo cannot slip in
    a.classifier.wieght = 1.0


@pytest.mark.parametrize("key,value", [("weights", "0,1.5"), ("formats", "symbolic,poetry"),
                                       ("layer_fractions", "0,0.5"), ("seeds", "0,x"), ("seeds", "1,1")])
def test_bad_grid_is_a_user_error(key, value):
  c = tiny_config.get_config()
  c.sweep[key] = value
  with pytest.raises(UserError):
    sweep.plan(c)


def _row(arm, w, seed, lens, answer, frac=0.5):
  return {"arm": arm, "weight": w, "format": "symbolic", "layer_fraction": frac, "layer": 2, "seed": seed,
          "run": f"{arm}{seed}", "lens_accuracy": lens, "vocab_top1_accuracy": 0.0, "mean_correct_prob": 0.1,
          "probe_accuracy": None, "probe_selectivity": None, "answer_accuracy": answer}


def test_summary_and_paired_contrasts_on_known_values():
  rows = [_row("sft", 0.0, s, lens_acc, a) for s, lens_acc, a in ((0, 0.2, 0.5), (1, 0.3, 0.6), (2, 0.25, 0.7))]
  rows += [_row("dual", 0.7, s, lens_acc, a) for s, lens_acc, a in ((0, 0.8, 0.55), (1, 0.9, 0.6), (2, 0.7, 0.8))]
  summary = sweep.summarize(rows)
  lens = {r["arm"]: r for r in summary if r["metric"] == "lens_accuracy"}
  assert lens["dual"]["n_seeds"] == 3 and lens["dual"]["values"] == [0.8, 0.9, 0.7]
  m, lo, hi = mean_ci([0.8, 0.9, 0.7])
  assert hi > 1.0  # the raw t-interval leaves [0, 1]; an accuracy's interval is clipped to it
  assert (lens["dual"]["mean"], lens["dual"]["ci_low"], lens["dual"]["ci_high"]) == (m, lo, 1.0)
  assert not any(r["metric"] == "probe_accuracy" for r in summary)  # never measured: no row, not a zero
  diffs = {d["metric"]: d for d in sweep.contrasts(rows)}
  np.testing.assert_allclose(diffs["answer_accuracy"]["diffs"], [0.05, 0.0, 0.1], atol=1e-12)
  np.testing.assert_allclose(diffs["lens_accuracy"]["mean_diff"], np.mean([0.6, 0.6, 0.45]))
  assert diffs["answer_accuracy"]["contrast"] == "dual - sft"
  one_seed = sweep.summarize(rows[:1])
  assert one_seed[0]["ci_low"] is None  # one seed: no interval, not a zero-width one


@pytest.fixture(autouse=True)
def _compile_cache(tmp_path_factory):
  # Every arm compiles the same programs (the loss weight is an array): a persistent cache pays once.
  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.getbasetemp() / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def test_micro_sweep_writes_tables_and_resumes(tmp_path):
  c = tiny_config.get_config()
  c.sweep.weights, c.sweep.formats, c.sweep.layer_fractions, c.sweep.seeds = "0,0.7", "symbolic", "0.5", "0,1"
  c.sweep.include_base = False
  c.train.steps = 2
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.table_steps = (2,)
  c.eval.max_examples_per_op = 3
  c.eval.probes = False
  c.eval.max_new_tokens = 2
  out = sweep.run(c, str(tmp_path))
  assert sorted(out["ran"]) == sorted(["sft-symbolic-s0", "sft-symbolic-s1", "dual-symbolic-f0.5-s0",
                                       "dual-symbolic-f0.5-s1"])
  assert out["skipped"] == []
  for name in out["ran"]:
    assert os.path.isfile(tmp_path / "arms" / name / "eval" / "results.json")
    assert os.path.isfile(tmp_path / "arms" / name / "adapter" / "adapter_model.safetensors")
  with open(tmp_path / "sweep_summary.csv") as f:
    summary = list(csv.DictReader(f))
  cells = {(r["arm"], r["metric"]): r for r in summary}
  for arm in ("sft", "dual"):
    for metric in ("lens_accuracy", "answer_accuracy", "vocab_top1_accuracy"):
      r = cells[(arm, metric)]
      assert r["n_seeds"] == "2" and r["layer"] == "2" and r["format"] == "symbolic" and r["ci_low"] != ""
  # The table's numbers are the arms' own results, averaged over seeds.
  accs = []
  for s in (0, 1):
    with open(tmp_path / "arms" / f"dual-symbolic-f0.5-s{s}" / "eval" / "results.json") as f:
      res = json.load(f)
    assert res["classifier_layer"] == 2 and res["base"] is None
    accs.append(res["classifier_eval"]["accuracy"])
  np.testing.assert_allclose(float(cells[("dual", "lens_accuracy")]["mean"]), np.mean(accs))
  with open(tmp_path / "sweep_contrasts.csv") as f:
    assert {r["contrast"] for r in csv.DictReader(f)} == {"dual - sft"}
  md = (tmp_path / "sweep.md").read_text()
  assert "## symbolic" in md and "| dual | 0.7 | 0.5 | 2 |" in md and "## Answers" in md
  assert os.path.getsize(tmp_path / "sweep_lens.png") > 0 and os.path.getsize(tmp_path / "sweep_answer.png") > 0

  # Resume: a second call trains nothing and rebuilds the same table.
  mtime = os.path.getmtime(tmp_path / "arms" / "dual-symbolic-f0.5-s0" / "eval" / "results.json")
  again = sweep.run(c, str(tmp_path))
  assert again["ran"] == [] and sorted(again["skipped"]) == sorted(out["ran"])
  assert os.path.getmtime(tmp_path / "arms" / "dual-symbolic-f0.5-s0" / "eval" / "results.json") == mtime
  assert again["summary"] == out["summary"]
