"""Issue 16 §2: one writer per workdir. A second train, evaluate or sweep on a directory in use is refused in one
line naming the holder; the lock is the kernel's (flock), so a killed holder never leaves it stuck; sweep arms are
locked one by one as well (a second sweep over the same arms once resumed an arm the first one was training)."""

from __future__ import annotations

import importlib.util
import os
import signal
import time

import pytest

from lazarus_jax import workdir as workdir_lib
from lazarus_jax.errors import UserError

import cli_run


def test_the_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path):
  workdir = str(tmp_path / "run")
  with cli_run.lock_held(workdir) as holder:
    with pytest.raises(UserError, match=r"in use by another run \(a test, pid \d+ on .*since"):
      with workdir_lib.WorkdirLock(workdir, "train"):
        pass
    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock with the process
    holder.wait(timeout=30)
  with workdir_lib.WorkdirLock(workdir, "train"):
    with workdir_lib.WorkdirLock(workdir, "evaluate"):  # re-entrant in one process: train runs evaluate
      pass
    assert os.path.realpath(workdir) in workdir_lib._held  # the outer hold survives the inner one's exit
  assert os.path.realpath(workdir) not in workdir_lib._held


def test_a_second_train_is_refused_while_the_first_runs(tmp_path):
  """The scenario of the issue: two processes on one workdir. The second (resume or overwrite) is refused in one
  line and writes nothing; the first is undisturbed: one metrics row per logged step, and the adapter of an
  uninterrupted run, bit for bit."""
  ref = cli_run.reference_run()
  workdir = str(tmp_path / "run")
  with cli_run.server() as srv:
    first = srv.start("lazarus_jax.train", cli_run.train_args(workdir), str(tmp_path / "first"))
    deadline = time.monotonic() + 240
    metrics = os.path.join(workdir, "metrics.jsonl")
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
      assert time.monotonic() < deadline and first.returncode is None, first.stderr()[-3000:]
      time.sleep(0.01)
    first.kill(signal.SIGSTOP)  # paused mid-run (a tiny run would finish before the second one starts)
    try:
      for extra in (["--config.resume=True"], ["--config.overwrite=True"]):
        second = cli_run.run_train(workdir, *extra, out_dir=str(tmp_path / f"second{len(extra[0])}"))
        cli_run.assert_one_line_error(second, workdir, "in use by another run", "train, pid")
    finally:
      first.kill(signal.SIGCONT)
    assert first.wait() == 0, first.stderr()[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [int(line.split('"step": ')[1].split(",")[0].rstrip("}")) for line in f]
  assert steps == list(range(2, 41, 2))
  cli_run.assert_same_tensors(cli_run.adapter_tensors(workdir), cli_run.adapter_tensors(ref))


def _tiny_config(**overrides):
  spec = importlib.util.spec_from_file_location("tiny_config", os.path.join(cli_run.REPO, "configs", "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def test_a_sweep_refuses_an_arm_another_process_writes(tmp_path):
  from lazarus_jax.reporting import sweep

  c = _tiny_config(**{"sweep.weights": "0", "sweep.formats": "symbolic", "sweep.seeds": "0"})
  workdir = str(tmp_path / "sweep")
  first = sweep.plan(c)[0]
  armdir = sweep.arm_dir(os.path.abspath(workdir), first, sweep.arm_config(c, first))
  with cli_run.lock_held(armdir):
    with pytest.raises(UserError, match=f"{armdir} is in use by another run"):
      sweep.run(c, workdir)
  assert os.listdir(armdir) == [workdir_lib.LOCK_FILE]  # the arm was not touched
