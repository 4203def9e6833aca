"""The train command: train into the workdir, then (unless `eval.enabled=False`) evaluate it into <workdir>/eval.

Training (training/loop.py) and evaluation (reporting/evaluate.py) know nothing of each other; this chains them.
"""

from __future__ import annotations

import os
import time

import ml_collections

from lazarus_jax import settings
from lazarus_jax.cli import supervise
from lazarus_jax.training import loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, reward_fn=None) -> loop.TrainResult:
  """What `python -m lazarus_jax.train` does. A preempted run is not evaluated (re-run with resume to finish).
  The config is parsed once (every check, evaluate's included, before training starts) for both."""
  parsed = settings.parse(config)
  result = loop.run(parsed, workdir, reward_fn=reward_fn)
  if parsed.eval.enabled and not result.preempted:
    from lazarus_jax.reporting import evaluate  # its imports (plots) only when it runs

    evaluate.run(parsed, result.workdir)
  return result


def main(argv) -> int:
  from absl import flags

  if flags.FLAGS.config.distributed and supervise.wanted():
    supervise.split_off_worker()  # returns in the worker; this process stays its supervisor (cli/supervise.py)
  workdir = flags.FLAGS.workdir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
  result = train_and_evaluate(flags.FLAGS.config, workdir)
  if result.preempted:  # checkpoint saved, run incomplete: the shell's status for "stopped by this signal"
    return 128 + result.signal_number
  return 0 if result.final_step > 0 else 1
