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


def random_adapter_dir(cfg, path) -> str:
  """A PEFT adapter of random LoRA weights (rank 4, v and o, every layer) for the tiny model `cfg`, written to
  `path`: an adapter that visibly changes the model, for tests that load one."""
  import numpy as np

  from lazarus_jax.models.adapters import export_peft, model_fingerprint
  from lazarus_jax.models.lora import LoRAConfig

  n, r = cfg.num_layers, 4
  rng = np.random.default_rng(0)
  kv, q = cfg.num_kv_heads * cfg.head_dim, cfg.num_heads * cfg.head_dim
  params = {
    "v_a": rng.normal(size=(n, cfg.hidden_size, r)),
    "v_b": rng.normal(size=(n, r, kv)),
    "o_a": rng.normal(size=(n, q, r)),
    "o_b": rng.normal(size=(n, r, cfg.hidden_size)),
  }
  lcfg = LoRAConfig(rank=r, alpha=8.0, targets=("v", "o"), layer_start=0, layer_end=n)
  export_peft(params, lcfg, (0, n), str(path), "tiny-random", model_fingerprint(cfg))
  return str(path)
