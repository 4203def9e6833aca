"""Issue 6 §2: SIGKILL a tiny training run at random moments (some while a checkpoint is being written),
resume after each kill, and end with exactly the adapters and optimizer state of an uninterrupted run.

Kill moments (seeded): the instant orbax creates a checkpoint's temporary directory (a save in flight), a
random instant a few steps into the training loop, or a random time into start-up. Every resume must start
from the newest *finalized* checkpoint (orbax's `<step>` directories; a `*.orbax-checkpoint-tmp-*` one is never loaded).
"""

from __future__ import annotations

import os
import random
import re
import signal
import time

import jax
import numpy as np

import cli_run

KILLS = 10
OVERRIDES = ("--config.train.checkpoint_every=2", "--config.train.max_to_keep=2", "--config.resume=True")


def _steps(ckpt_dir: str) -> tuple[list[int], list[str]]:
  """(finalized steps, temporary entries) in the checkpoint directory."""
  try:
    names = os.listdir(ckpt_dir)
  except FileNotFoundError:
    return [], []
  return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


def _wait_for(predicate, child, timeout: float) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if child.returncode is not None or _exited(child):
      return False
    time.sleep(0.002)
  return False


def _exited(child) -> bool:
  try:  # the child is the fork server's: signal 0 tells whether it still exists (a zombie counts as gone)
    with open(f"/proc/{child.pid}/stat") as f:
      return f.read().split(") ")[-1].startswith("Z")
  except FileNotFoundError:
    return True


def _logged_after(workdir: str, step: int) -> int:
  """The newest step in metrics.jsonl past `step` (0 if none yet)."""
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      steps = [int(m.group(1)) for m in re.finditer(r'"step": (\d+)', f.read())]
  except FileNotFoundError:
    return 0
  return max([s for s in steps if s > step], default=0)


def _kill(child, mode: str, rng: random.Random, ckpt_dir: str, resume_step: int) -> bool:
  """Kills `child` at a moment chosen by `mode`; False if it finished first.

  "loop" kills a few steps (random) past the resume point, at a random instant: bounded progress per kill,
  so the run cannot finish before the kills are done, however fast the machine.
  """
  if mode == "startup":
    time.sleep(rng.uniform(0.05, 1.5))
  else:
    if not _wait_for(lambda: "compiled train step" in child.stderr(), child, 120):
      return False
    # Train compiles before it restores (validate first, issue 16), and metrics.jsonl may already hold steps an
    # earlier attempt logged past its last checkpoint: wait for the resume line, or a kill could land before it.
    # A run that wrongly started afresh never prints it: it is not killed, finishes, and the test fails on it.
    if resume_step and not _wait_for(lambda: "resumed from" in child.stderr(), child, 60):
      return False
    if mode == "save":
      _, tmp0 = _steps(ckpt_dir)
      if not _wait_for(lambda: set(_steps(ckpt_dir)[1]) - set(tmp0), child, 60):
        return False
      time.sleep(rng.uniform(0, 0.01))
    else:
      target = resume_step + 2 * rng.randint(1, 3)  # a logged step (log_every=2)
      workdir = os.path.dirname(ckpt_dir)
      if not _wait_for(lambda: _logged_after(workdir, resume_step) >= target, child, 60):
        return False
      time.sleep(rng.uniform(0, 0.05))
  child.kill(signal.SIGKILL)
  return True


def test_sigkill_anywhere_then_resume_is_identical(tmp_path):
  ref = cli_run.reference_run()
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  rng = random.Random(6)
  kills, during_save, attempts, log = 0, 0, 0, []
  while True:
    attempts += 1
    assert attempts <= 3 * KILLS, log
    finalized, tmp_before = _steps(ckpt_dir)
    mode = None if kills >= KILLS else rng.choice(["save", "save", "loop", "loop", "startup"])
    with cli_run.server() as srv:
      child = srv.start("lazarus_jax.train", cli_run.train_args(workdir, *OVERRIDES), str(tmp_path / f"a{attempts}"))
      killed = _kill(child, mode, rng, ckpt_dir, finalized[-1] if finalized else 0) if mode else False
      # a save in flight: a temporary directory this run created (earlier kills may have left some behind)
      in_save = killed and bool(set(_steps(ckpt_dir)[1]) - set(tmp_before))
      code = child.wait(timeout=300)
    err = child.stderr()
    m = re.search(r"resumed from .* at step (\d+)", err)
    resumed = int(m.group(1)) if m else 0
    log.append((mode, code, resumed, finalized, in_save))
    assert "Traceback" not in err, err[-3000:]
    # Never a partial checkpoint: the run resumes from the newest finalized one, or starts fresh if none.
    # (A run killed before it printed where it resumed says nothing either way; the last attempt runs to the end.)
    if "resumed from" in err or code == 0:
      assert resumed == (finalized[-1] if finalized else 0), log
    if code == -signal.SIGKILL:
      kills += 1
      during_save += in_save
      continue
    assert code == 0, (log, err[-3000:])
    break  # finished
  assert kills >= KILLS, f"the run finished after {kills} kills: {log}"
  print(f"{kills} kills ({during_save} during a checkpoint save) in {attempts} starts: {log}")
  assert during_save >= 2, log

  # Identical to the uninterrupted run: adapters bit for bit, and the whole saved state at the last step.
  cli_run.assert_same_tensors(cli_run.adapter_tensors(workdir), cli_run.adapter_tensors(ref))
  mine, theirs = cli_run.restore_checkpoint(workdir, 40), cli_run.restore_checkpoint(ref, 40)
  assert jax.tree.structure(mine) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  # The metrics history holds each logged step once, as a run that was never interrupted.
  import json

  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == list(range(2, 41, 2))
