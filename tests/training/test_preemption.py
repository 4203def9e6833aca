"""Issue 6 §3: SIGTERM (a TPU VM's preemption notice) and SIGINT checkpoint the current step and stop in
order (status 128 + signal, one line saying where and how to continue); the next run resumes from exactly
that step and ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

import cli_run

# No periodic checkpoint inside the run: the one found at the stop step is the preemption's.
OVERRIDES = ("--config.train.checkpoint_every=1000",)


def _logged_steps(workdir: str) -> int:
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return sum(1 for line in f if line.endswith("\n"))
  except FileNotFoundError:
    return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_resumes(tmp_path, sig):
  ref = cli_run.reference_run()
  workdir = str(tmp_path / "run")
  with cli_run.server() as srv:
    child = srv.start("lazarus_jax.train", cli_run.train_args(workdir, *OVERRIDES), str(tmp_path / "first"))
    deadline = time.monotonic() + 240
    while _logged_steps(workdir) < 1:  # in the loop: step 2 is logged
      assert time.monotonic() < deadline and child.returncode is None
      time.sleep(0.005)
    child.kill(sig)
    code = child.wait()
  err = child.stderr()
  assert code == 128 + sig, err[-3000:]
  assert "Traceback" not in err
  m = re.search(rf"stopped by {sig.name} at step (\d+): checkpoint (\S+) saved; continue with --config.resume=True", err)
  assert m, err[-3000:]
  step = int(m.group(1))
  assert 2 <= step < 40
  assert m.group(2) == os.path.join(workdir, "checkpoints", str(step))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(step)]  # saved, finalized, the only one
  assert not os.path.exists(os.path.join(workdir, "adapter"))  # an unfinished run exports nothing
  if sig == signal.SIGINT:
    return  # the resume is the same for both signals: run it once

  proc = cli_run.run_train(workdir, *OVERRIDES, "--config.resume=True", out_dir=str(tmp_path / "second"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(rf"resumed from \S+ at step {step}\b", proc.stderr), proc.stderr[-3000:]
  cli_run.assert_same_tensors(cli_run.adapter_tensors(workdir), cli_run.adapter_tensors(ref))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_before_the_loop_is_one_line(tmp_path, sig):
  """Ctrl-C / SIGTERM while the model loads or compiles: nothing to checkpoint yet; one line, status 128+signal,
  no traceback (the signal is a flag checked between set-up stages, never an exception a library could swallow)."""
  workdir = str(tmp_path / "run")
  with cli_run.server() as srv:
    child = srv.start("lazarus_jax.train", cli_run.train_args(workdir), str(tmp_path / "logs"))
    deadline = time.monotonic() + 120
    while "class targets" not in child.stderr():  # past argument parsing, before the loop
      assert time.monotonic() < deadline and child.returncode is None
      time.sleep(0.002)
    child.kill(sig)
    code = child.wait()
  err = child.stderr()
  assert code == 128 + sig, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  last = err.rstrip().splitlines()[-1]
  name = signal.Signals(sig).name
  assert last.startswith(f"stopped by {name}") or (sig == signal.SIGINT and last == "error: interrupted"), last
