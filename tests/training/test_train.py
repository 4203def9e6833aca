"""`train.run` end to end on the tiny model: outputs, one compilation, and exact resumption after preemption."""

import json
import logging
import os
import re

import jax
import numpy as np
import pytest

from lazarus_jax.training import loop as train

import repo
from tiny_runs import STEPS, restore_final, sigterm_after_step, tiny_config

ROOT = repo.ROOT
LOSS_KEYS = ("loss", "classifier_loss", "answer_loss", "classifier_accuracy", "grad_norm", "learning_rate")


class CompileCounter(logging.Handler):
  """Counts XLA compilations of the train step (jax_log_compiles logs each backend compile by name)."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.names = []

  def emit(self, record):
    m = re.match(r"Finished XLA compilation of (\S+)", record.getMessage())
    if m:
      self.names.append(m.group(1))

  def __enter__(self):
    self._logger = logging.getLogger("jax")
    self._logger.addHandler(self)
    self._old = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    return self

  def __exit__(self, *exc):
    jax.config.update("jax_log_compiles", self._old)
    self._logger.removeHandler(self)

  @property
  def steps(self):
    return [n for n in self.names if re.search(r"\bstep\b", n)]


def run_counting(config, workdir):
  with CompileCounter() as counter:
    result = train.run(config, str(workdir))
  return result, counter


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result, counter = run_counting(tiny_config(), workdir)
  return workdir, result, counter


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_run_writes_every_output(uninterrupted):
  workdir, result, _ = uninterrupted
  assert result.final_step == STEPS and not result.preempted
  with open(workdir / "config.json") as f:
    assert json.load(f)["train"]["steps"] == STEPS
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  for r in rows:
    assert set(LOSS_KEYS) <= set(r)
    assert all(np.isfinite(r[k]) for k in LOSS_KEYS)
  assert rows[-1]["loss"] < rows[0]["loss"]  # lr 1e-2 on the tiny model: it learns within 6 steps
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tb"))
  assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [2, 4, 6]
  assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(workdir / "adapter"))
  table = (workdir / "training_table.md").read_text()
  assert table.startswith("| Step | Total Loss | Classifier Loss | Answer Loss | Cls Accuracy |")
  assert f"| {STEPS} | {rows[-1]['loss']:.3f} |" in table


def test_step_compiles_once_per_run(uninterrupted):
  _, _, counter = uninterrupted
  assert len(counter.steps) == 1, counter.names


def test_resume_after_preemption_is_exact(uninterrupted, tmp_path, monkeypatch):
  """Run to N, get SIGTERM (as a TPU VM's preemption notice), resume to 2N: the same state, bit for bit."""
  full_dir, _, _ = uninterrupted
  n = STEPS // 2
  with sigterm_after_step(monkeypatch, n):
    first, _ = run_counting(tiny_config(), tmp_path)
  assert first.preempted and first.final_step == n
  assert not (tmp_path / "adapter").exists()
  assert n in [int(s) for s in os.listdir(tmp_path / "checkpoints")]

  resumed, counter = run_counting(tiny_config(resume=True), tmp_path)
  assert resumed.final_step == STEPS and not resumed.preempted
  assert len(counter.steps) == 1, counter.names

  step_a, state_a, meta_a = restore_final(full_dir)
  step_b, state_b, meta_b = restore_final(tmp_path)
  assert step_a == step_b == STEPS and meta_a == meta_b
  leaves_a = jax.tree_util.tree_flatten_with_path(state_a)[0]
  leaves_b = jax.tree_util.tree_flatten_with_path(state_b)[0]
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  paths = [jax.tree_util.keystr(p) for p, _ in leaves_a]
  assert any("opt_state" in p and "mu" in p for p in paths) and any("_b'" in p for p in paths)
  for (path, a), (_, b) in zip(leaves_a, leaves_b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
    assert np.array_equal(a, b), f"{jax.tree_util.keystr(path)} differs after resume"
  assert (full_dir / "adapter" / "adapter_model.safetensors").read_bytes() == (
    tmp_path / "adapter" / "adapter_model.safetensors"
  ).read_bytes()
  # One metrics row per step, and the same numbers as the uninterrupted run.
  rows_a, rows_b = read_metrics(full_dir), read_metrics(tmp_path)
  assert [r["step"] for r in rows_b] == list(range(1, STEPS + 1))
  for ra, rb in zip(rows_a, rows_b):
    assert {k: ra[k] for k in LOSS_KEYS} == {k: rb[k] for k in LOSS_KEYS}
