"""Issue 6 §4: a non-finite loss or gradient is caught inside the jitted step; the update is skipped (adapters
and optimizer state kept) and counted; after `train.max_consecutive_nonfinite` skips in a row the run stops
with one clear line, and its last checkpoints hold the last good (finite) state.

The fault is injected honestly: a learning rate of 1e30 makes the first real update blow the adapters up,
so every following forward pass overflows (no test-only hook in the trainer).
"""

from __future__ import annotations

import json
import math
import os
import re

import jax
import numpy as np

import cli_run

OVERRIDES = (
  "--config.train.lr=1e30",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=1",
  "--config.train.max_to_keep=3",
  "--config.train.max_consecutive_nonfinite=3",
)


def test_nonfinite_updates_skipped_counted_then_stop(tmp_path):
  workdir = str(tmp_path / "run")
  proc = cli_run.run_train(workdir, *OVERRIDES, out_dir=str(tmp_path / "logs"))
  line = cli_run.assert_one_line_error(proc, "3 consecutive non-finite updates were skipped", "last good checkpoint", "lower train.lr")
  m = re.search(r"skipped at step (\d+); the last good checkpoint is step (\d+)", line)
  stop, last = int(m.group(1)), int(m.group(2))
  assert last == stop - 1  # every finished step was checkpointed (checkpoint_every=1)

  rows = [json.loads(r) for r in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(1, stop + 1))
  assert [r["skipped"] for r in rows[-3:]] == [1, 1, 1] and all(r["skipped"] == 0 for r in rows[:-3])
  assert not any(math.isfinite(r["loss"]) for r in rows[-3:])
  assert all(math.isfinite(r["loss"]) for r in rows[:-3])

  # The kept checkpoints: the last good step, then two skipped steps that changed nothing but the counters.
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert steps == [stop - 3, stop - 2, stop - 1]
  states = [cli_run.restore_checkpoint(workdir, s) for s in steps]
  for s, state in zip(steps, states):
    assert int(state["step"]) == s
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state) if np.issubdtype(x.dtype, np.floating))
  assert [int(s["nonfinite"]) for s in states] == [0, 1, 2]
  assert [int(s["skipped"]) for s in states] == [0, 1, 2]
  for later in states[1:]:
    for a, b in zip(
      jax.tree.leaves((states[0]["lora"], states[0]["opt_state"])), jax.tree.leaves((later["lora"], later["opt_state"]))
    ):
      assert np.array_equal(a, b)
  assert not os.path.exists(os.path.join(workdir, "adapter"))  # a diverged run exports nothing
