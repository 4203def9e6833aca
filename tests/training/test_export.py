"""`python -m lazarus_jax.export`: the PEFT adapter of any checkpoint of a run, the last one byte for byte what
training wrote (training/export.py)."""

import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from lazarus_jax.errors import UserError
from lazarus_jax.training import export
from lazarus_jax.training import loop as train

import cli_run
from tiny_runs import tiny_config

FILES = ("adapter_config.json", "adapter_model.safetensors", "lazarus_jax_model.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  train.run(tiny_config(), str(workdir))  # 6 steps, checkpoints at 2, 4, 6
  return workdir


def test_the_latest_export_is_the_adapter_training_wrote(run):
  step, out, written = export.export_checkpoint(str(run))
  assert (step, out, written) == (6, str(run / "adapter-step-6"), True)
  for name in FILES:  # tensors, PEFT config and our record: the same bytes
    assert (run / "adapter-step-6" / name).read_bytes() == (run / "adapter" / name).read_bytes(), name
  cli_run.assert_same_tensors(load_file(str(run / "adapter-step-6" / FILES[1])), cli_run.adapter_tensors(str(run)))
  # again: it holds that adapter already, left as it is
  mtime = os.stat(run / "adapter-step-6" / FILES[1]).st_mtime_ns
  assert export.export_checkpoint(str(run))[2] is False
  assert os.stat(run / "adapter-step-6" / FILES[1]).st_mtime_ns == mtime


def test_an_earlier_step_exports_that_checkpoints_adapters(run, tmp_path):
  step, out, _ = export.export_checkpoint(str(run), step=4, out=str(tmp_path / "a4"))
  assert step == 4
  tensors = load_file(str(tmp_path / "a4" / FILES[1]))
  saved = cli_run.restore_checkpoint(str(run), 4)["lora"]["lora"]
  for t in ("v", "o"):  # the tiny config's targets, layers [0, 4)
    for layer in range(4):
      key = f"base_model.model.model.layers.{layer}.self_attn.{t}_proj.lora_{{}}.weight"
      assert np.array_equal(tensors[key.format("A")], np.asarray(saved[f"{t}_a"][layer], np.float32).T)
      assert np.array_equal(tensors[key.format("B")], np.asarray(saved[f"{t}_b"][layer], np.float32).T)
  last = cli_run.adapter_tensors(str(run))
  assert any(not np.array_equal(tensors[k], last[k]) for k in last)  # step 4 is not step 6
  # an existing directory holding something else is refused, then replaced when asked
  with pytest.raises(UserError, match="already holds a different directory: pass --overwrite"):
    export.export_checkpoint(str(run), step=6, out=str(tmp_path / "a4"))
  export.export_checkpoint(str(run), step=6, out=str(tmp_path / "a4"), overwrite=True)
  assert (tmp_path / "a4" / FILES[1]).read_bytes() == (run / "adapter" / FILES[1]).read_bytes()


def test_the_command(run, tmp_path):
  out = tmp_path / "cli"
  ok = cli_run.run("lazarus_jax.export", ["--workdir", str(run), "--step", "2", "--out", str(out)])
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert f"checkpoint step 2 -> {out}" in ok.stdout
  assert sorted(os.listdir(out)) == sorted(FILES)
  missing_step = cli_run.run("lazarus_jax.export", ["--workdir", str(run), "--step", "5"])
  cli_run.assert_one_line_error(missing_step, "--step 5", "steps 2, 4, 6")
  missing_dir = cli_run.run("lazarus_jax.export", ["--workdir", str(tmp_path / "nope")])
  cli_run.assert_one_line_error(missing_dir, str(tmp_path / "nope"), "does not exist")
  no_workdir = cli_run.run("lazarus_jax.export", [])
  cli_run.assert_one_line_error(no_workdir, "--workdir")
  assert not (run / "adapter-step-5").exists()
