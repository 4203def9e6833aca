"""The training step gives the same losses on any mesh (8 simulated CPU devices) as on one device."""

import jax
import numpy as np
import pytest

from lazarus_jax.errors import UserError
from lazarus_jax.models import sharding
from lazarus_jax.training import loop as train

from tiny_runs import tiny_config

STEPS = 3
KEYS = ("loss", "classifier_loss", "answer_loss", "grad_norm")


def run_on(monkeypatch, workdir, shape, n_devices):
  """train.run on the first n_devices devices (train.make_mesh takes every device; narrow it here)."""
  monkeypatch.setattr(train, "make_mesh", lambda dims: sharding.make_mesh(dims, jax.devices()[:n_devices]))
  c = tiny_config(**{"train.steps": STEPS, "train.checkpoint_every": 100})
  c.mesh.shape = shape
  return train.run(c, str(workdir))


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    result = run_on(mp, tmp_path_factory.mktemp("mesh111"), (1, 1, 1), 1)
  return [{k: r[k] for k in KEYS} for r in result.history]


def test_eight_simulated_devices():
  assert len(jax.devices()) == 8


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)], ids=["data8", "fsdp8", "mixed222"])
def test_mesh_matches_single_device(single_device, monkeypatch, tmp_path, shape):
  result = run_on(monkeypatch, tmp_path, shape, 8)
  assert [r["step"] for r in result.history] == list(range(1, STEPS + 1))
  for ref, row in zip(single_device, result.history):
    for k in KEYS:
      np.testing.assert_allclose(row[k], ref[k], atol=1e-5, rtol=0, err_msg=f"{k} on mesh {shape}")
  assert single_device[-1]["loss"] != single_device[0]["loss"]  # the steps update the adapters


def test_tensor_parallelism_must_divide_heads(monkeypatch, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(UserError) as e:
    run_on(monkeypatch, workdir, (2, 1, 3), 6)
  msg = str(e.value)
  assert "\n" not in msg and "tensor parallelism 3" in msg and "8 attention heads" in msg
  assert not workdir.exists()  # refused before any output is written
