"""The CLIs re-execute once with glibc's huge-page tunable; library imports and other programs never do."""

import json
import os
import subprocess
import sys

from lazarus_jax.cli import hugepages
from lazarus_jax.cli.hugepages import launched_module, reexec_env

import repo

ROOT = repo.ROOT


def test_launched_module():
  assert launched_module(["python", "-m", "lazarus_jax.train", "--config", "x"]) == "lazarus_jax.train"
  assert launched_module(["python", "-u", "-mlazarus_jax.lens"]) == "lazarus_jax.lens"
  assert launched_module(["python", "-c", "import x", "-m", "lazarus_jax.train"]) is None
  assert launched_module(["python", "script.py", "-m", "lazarus_jax.train"]) is None
  assert launched_module(["python", "-m"]) is None
  assert launched_module([]) is None


def test_reexec_env_only_for_the_tools_and_only_once(monkeypatch):
  cli = ["python", "-m", "lazarus_jax.train", "--config", "configs/tiny.py"]
  supported = sys.platform == "linux" and os.path.exists(hugepages.THP_SETTING)
  env = reexec_env({"PATH": "/bin"}, cli)
  if supported and "[never]" not in open(hugepages.THP_SETTING).read():
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    # Existing tunables are kept, and a second pass (after the re-exec) changes nothing.
    kept = reexec_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, cli)
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert reexec_env(kept, cli) is None
  else:
    assert env is None
  assert reexec_env({"LAZARUS_JAX_HUGEPAGES": "0"}, cli) is None
  assert reexec_env({}, ["python", "-m", "pytest"]) is None
  assert reexec_env({}, ["python", "-m", "lazarus_jax.lens"]) is None  # measured slower with huge pages
  assert reexec_env({}, ["python", "-c", "import lazarus_jax.training.loop"]) is None
  monkeypatch.setattr(hugepages, "THP_SETTING", "/nonexistent/enabled")
  assert reexec_env({}, cli) is None


def test_train_cli_runs_with_the_tunable(tmp_path):
  # End to end: a real `python -m lazarus_jax.train` records the environment it ran with (provenance).
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LAZARUS_JAX_HUGEPAGES")}
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "lazarus_jax.train",
      "--config",
      "configs/tiny.py",
      "--workdir",
      str(tmp_path),
      "--config.train.steps=2",
      "--config.train.log_every=1",
      "--config.eval.enabled=False",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "train_summary.json") as f:
    recorded = json.load(f)["provenance"]["runtime_env"]["GLIBC_TUNABLES"]
  expected = reexec_env(env, [sys.executable, "-m", "lazarus_jax.train"])
  assert recorded == (expected["GLIBC_TUNABLES"] if expected else None)


def test_importing_the_package_never_reexecutes():
  # A library import (a notebook, a script) must not re-execute the process: only the CLI entry does.
  code = (
    "import sys; sys.orig_argv = [sys.executable, '-m', 'lazarus_jax.train']\n"
    "import lazarus_jax, lazarus_jax.train, lazarus_jax.evaluate, lazarus_jax.sweep\n"
    "print('still here')"
  )
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LAZARUS_JAX_HUGEPAGES")}
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "still here" in proc.stdout, proc.stderr[-2000:]
