"""The tiny training run several test files share: its config, a preemption at step n, the final checkpoint."""

import contextlib
import importlib.util
import os
import signal

import jax
import orbax.checkpoint as ocp

from lazarus_jax.training.logging_utils import MetricsWriter

ROOT = os.path.dirname(os.path.abspath(__file__)) + "/.."
STEPS = 6  # 2N, N = 3: past the 2 warm-up steps, so the cosine part of the schedule matters too


def tiny_config(**overrides):
  spec = importlib.util.spec_from_file_location("tiny_config", os.path.join(ROOT, "configs", "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.eval.enabled = False  # the evaluation has its own tests; here it would only cost time
  c.train.steps, c.train.log_every, c.train.checkpoint_every = STEPS, 1, 2
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@contextlib.contextmanager
def sigterm_after_step(monkeypatch, n):
  """Within the block, the process gets SIGTERM (a preemption notice) right after metrics row `n` is written."""
  original_write = MetricsWriter.write

  def write_then_preempt(self, row):
    original_write(self, row)
    if row["step"] == n:
      os.kill(os.getpid(), signal.SIGTERM)  # train.PreemptionFlag turns it into checkpoint-and-stop

  monkeypatch.setattr(MetricsWriter, "write", write_then_preempt)
  try:
    yield
  finally:
    monkeypatch.setattr(MetricsWriter, "write", original_write)


def restore_final(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  manager.close()
  return step, jax.device_get(restored.state), restored.meta
