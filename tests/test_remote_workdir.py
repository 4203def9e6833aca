"""A remote workdir (gs://... in production) end to end on a local stand-in, through the same code path.

`standin://bucket/run` is registered with etils.epath as a remote scheme whose objects live under a local
directory. The run's code sees a URL: `files`, `workdir`, metrics, TensorBoard, the PEFT export and evaluate
take their remote branch (epath, whole-object uploads, no flock, no os.replace), and orbax gets the URL as it
would a gs:// one. Train, a preempted run resumed, then evaluate: outputs complete and the resume exact.
"""

import json
import os

import jax
import numpy as np
import pytest
from etils import epath
from etils.epath import gpath

from lazarus_jax import files
from lazarus_jax.reporting import evaluate
from lazarus_jax.training import loop as train

from tiny_runs import STEPS, restore_final, sigterm_after_step, tiny_config

SCHEME = "standin://"
ROOT = {"dir": None}  # the local directory the stand-in's objects live in


@epath.register_path_cls(SCHEME)
class StandinPath(gpath.PosixGPath):
  """`standin://a/b` stored at `<ROOT>/a/b` (orbax's own tensorstore writes take the same URL to the same place:
  it normalises `standin://a` to the relative path `standin:/a`, so ROOT is `<cwd>/standin:`)."""

  def __new__(cls, *parts):
    full = "/".join(os.fspath(p) for p in parts)
    if full.startswith(SCHEME):
      full = os.path.join(ROOT["dir"], full[len(SCHEME) :])
    return super().__new__(cls, full)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ROOT["dir"] = str(tmp_path / "standin:")
  os.makedirs(ROOT["dir"])
  return tmp_path / "standin:"


def test_the_stand_in_is_remote():
  assert files.is_remote("standin://b/run") and not files.is_remote("/tmp/run")
  assert files.join("standin://b/run/", "eval", "results.json") == "standin://b/run/eval/results.json"


def test_train_preempt_resume_evaluate_on_a_remote_workdir(bucket, tmp_path, monkeypatch):
  url = "standin://bucket/run"
  local = bucket / "bucket" / "run"
  n = STEPS // 2
  with sigterm_after_step(monkeypatch, n):
    first = train.run(tiny_config(), url)
  assert first.preempted and first.final_step == n
  assert n in [int(s) for s in os.listdir(local / "checkpoints") if s.isdigit()]
  assert not (local / ".lock").exists()  # remote: no flock file

  resumed = train.run(tiny_config(resume=True), url)
  assert resumed.final_step == STEPS and not resumed.preempted
  rows = [json.loads(line) for line in (local / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert any(name.startswith("events.out.tfevents") and (local / "tb" / name).stat().st_size > 0 for name in os.listdir(local / "tb"))
  assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(local / "adapter"))
  assert not [n for n in os.listdir(local) if ".tmp" in n]

  # The same run on a local workdir: the remote one resumed to the same state, bit for bit.
  plain = tmp_path / "plain"
  train.run(tiny_config(), str(plain))
  step_a, state_a, _ = restore_final(local)
  step_b, state_b, _ = restore_final(plain)
  assert step_a == step_b == STEPS
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state_a), jax.tree_util.tree_leaves(state_b)):
    assert np.array_equal(a, b), f"{jax.tree_util.keystr(path)} differs after the remote resume"
  assert (local / "adapter" / "adapter_model.safetensors").read_bytes() == (
    plain / "adapter" / "adapter_model.safetensors"
  ).read_bytes()

  # evaluate reads the adapter, metrics and checkpoints back through the remote path, and writes eval/ there.
  c = tiny_config()
  c.eval.enabled, c.eval.max_examples_per_op = True, 2
  results = evaluate.run(c, url)
  assert results["model"]["adapter"] == "adapter"
  assert results["model"]["adapter_origin"]["check"].startswith("verified: step")
  assert results["training"]["n_logged"] == STEPS
  on_disk = json.loads((local / "eval" / "results.json").read_text())
  assert on_disk["classifier_eval"]["accuracy"] == results["classifier_eval"]["accuracy"]
  assert (local / "eval" / "report.md").exists()


def test_a_sweep_on_a_remote_workdir_runs_and_resumes(bucket):
  """A base arm and an SFT arm, the tables and figures, then a second call that reuses both arms (read back)."""
  from lazarus_jax.reporting import sweep

  c = tiny_config()
  c.sweep.weights, c.sweep.formats, c.sweep.layer_fractions, c.sweep.seeds = "0", "symbolic", "0.5", "0"
  c.train.steps, c.train.table_steps = 2, (2,)
  c.eval.max_examples_per_op, c.eval.probes, c.eval.max_new_tokens = 2, False, 2
  url, local = "standin://bucket/sweep", bucket / "bucket" / "sweep"
  out = sweep.run(c, url)
  assert sorted(out["ran"]) == ["base-symbolic-s0", "sft-symbolic-s0"]
  for name, rel in out["arm_dirs"].items():
    assert rel.startswith(f"arms/{name}-")  # relative to the sweep, not a URL or a local path
    assert (local / rel / "eval" / "results.json").is_file() and (local / rel / "config.json").is_file()
  assert (local / out["arm_dirs"]["sft-symbolic-s0"] / "adapter" / "adapter_model.safetensors").is_file()
  for name in ("sweep_config.json", "sweep_runs.csv", "sweep_summary.csv", "sweep.md", "sweep_lens.png", "sweep_results.json"):
    assert (local / name).stat().st_size > 0, name
  assert not [p for p in local.rglob("*") if ".tmp" in p.name or p.name == ".lock"]
  assert json.loads((local / "sweep_results.json").read_text())["arm_dirs"] == out["arm_dirs"]

  again = sweep.run(c, url)
  assert again["ran"] == [] and sorted(again["skipped"]) == sorted(out["ran"])
  assert again["summary"] == out["summary"]


def test_an_unknown_scheme_is_one_error_line(tmp_path):
  from lazarus_jax.errors import UserError

  with pytest.raises(UserError, match=r"no filesystem is registered for nosuch://"):
    train.run(tiny_config(), "nosuch://bucket/run")
