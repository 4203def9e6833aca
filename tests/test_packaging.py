"""A wheel of the package works outside the checkout: every subpackage and the shipped configs are in it."""

import os
import subprocess
import sys

import repo


def test_a_wheel_installed_elsewhere_trains_from_any_directory(tmp_path):
  wheels, target, cwd = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
  cwd.mkdir()
  build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), repo.ROOT]
  subprocess.run(build, check=True, capture_output=True, timeout=300)
  (wheel,) = wheels.glob("lazarus_jax-*.whl")
  subprocess.run(
    [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=300
  )
  env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS="cpu")  # the wheel first, ahead of the checkout's install
  where = subprocess.run(
    [sys.executable, "-c", "import lazarus_jax.training.loop as m; print(m.__file__)"],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
  )
  assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "lazarus_jax.train",
      "--config",
      "tiny",  # a shipped config by name
      "--workdir",
      str(cwd / "run"),
      "--config.train.steps=2",
      "--config.eval.enabled=False",
    ],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert (cwd / "run" / "adapter" / "adapter_model.safetensors").is_file()
  assert sorted(os.listdir(cwd)) == ["run"]  # nothing written beside the run
