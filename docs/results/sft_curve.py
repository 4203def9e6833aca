"""Where SFT's held-out answer accuracy levels off: SFT arms (w = 0) trained for different numbers of steps.

  python docs/results/sft_curve.py <arms dir> > docs/results/sft_curve.md

Reads every finished `sft-*` arm in the sweep arms directory (`regenerate.sh compare` and `sft_steps` write them
with 100, 300, 600 and 1000 steps), groups them by (format, steps) and gives the held-out answer accuracy per group
with the sweep's interval (a hierarchical bootstrap over seeds and examples), plus the step-to-step change on the
seeds both lengths share (paired by prompt).
"""

from __future__ import annotations

import collections
import json
import os
import sys

from lazarus_jax.analysis import stats
from lazarus_jax.analysis.stats import unbits

N_RESAMPLES, SEED = 4000, 0


def load(arms_dir: str) -> dict:
  """{(format, steps): {seed: (keys, answer_correct)}} over the finished SFT arms."""
  out = collections.defaultdict(dict)
  for name in sorted(os.listdir(arms_dir)):
    path = os.path.join(arms_dir, name, "eval", "results.json")
    if not name.startswith("sft-") or not os.path.isfile(path):
      continue
    with open(os.path.join(arms_dir, name, "config.json")) as f:
      cfg = json.load(f)
    with open(path) as f:
      res = json.load(f)
    pe = res["per_example"]
    fmt = cfg["data"]["format"]
    out[(fmt, cfg["train"]["steps"])][cfg["seed"]] = (pe["key"], unbits(pe["answer_correct"]))
  return out


def pct(x: float) -> str:
  return f"{100 * x:.1f}"


def main(arms_dir: str) -> str:
  groups = load(arms_dir)
  shown = "/".join(os.path.normpath(arms_dir).split(os.sep)[-2:])  # no machine path in the output
  lines = ["# SFT (w = 0) held-out answer accuracy by training length", "",
           f"From `python docs/results/sft_curve.py <runs>/{shown}`: every finished SFT arm of the "
           "sweeps, same config except `train.steps` (the learning-rate schedule spans the run's steps). Cells: mean "
           "over seeds [95% hierarchical bootstrap over seeds and examples]; change: paired by prompt on the seeds "
           "both lengths share.", "",
           "| Format | Steps | Seeds | Answer accuracy | Change from the previous length |", "|---|---|---|---|---|"]
  for fmt in sorted({f for f, _ in groups}):
    previous = None
    for steps in sorted(s for f, s in groups if f == fmt):
      by_seed = groups[(fmt, steps)]
      cell = stats.bootstrap_mean([v for _, v in by_seed.values()], 0.95, N_RESAMPLES, SEED)
      change = "—"
      if previous is not None:
        shared = sorted(set(by_seed) & set(previous[1]))
        if shared:
          pairs = []
          for s in shared:
            (ka, va), (kb, vb) = by_seed[s], previous[1][s]
            index = {k: i for i, k in enumerate(kb)}
            pairs.append((va, vb[[index[k] for k in ka]]))
          d = stats.paired_difference(pairs, 0.95, N_RESAMPLES, SEED)
          verdict = "higher" if d["ci_low"] > 0 else "lower" if d["ci_high"] < 0 else "cannot tell"
          change = (f"{100 * d['mean_diff']:+.1f} pp [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] vs "
                    f"{previous[0]} steps ({verdict}; seeds {shared})")
      lines.append(f"| {fmt} | {steps} | {len(by_seed)} | {pct(cell['mean'])} [{pct(cell['ci_low'])}, "
                   f"{pct(cell['ci_high'])}] | {change} |")
      previous = (steps, by_seed)
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
    sys.exit("usage: python docs/results/sft_curve.py <sweep arms dir>")
  print(main(sys.argv[1]), end="")
