"""Paired difference of two evaluations on the same held-out prompts (issue 11's figures).

  python docs/results/issue11/paired.py A/results.json adapted|base B/results.json adapted|base FORMAT METRIC

METRIC: answer_correct, first_token_correct or lens_correct (the lens at the run's classifier layer). Prompts are
matched by their per-example key; the interval is stats.paired_difference's bootstrap (4000 resamples, seed 0),
with McNemar's exact test beside it.
"""

import json
import sys

import numpy as np

from lazarus_jax.analysis import stats
from lazarus_jax.analysis.stats import unbits


def outcomes(path: str, which: str, metric: str, fmt: str) -> dict:
  r = json.load(open(path))
  m = r if which == "adapted" else r["base"]
  pe = m["per_example"]
  bits = pe[metric][r["lens_row"]] if metric == "lens_correct" else pe[metric]
  return {k: int(x) for k, x, f in zip(pe["key"], unbits(bits), pe["format"]) if f == fmt}


def main(argv):
  a_path, a_which, b_path, b_which, fmt, metric = argv
  a, b = outcomes(a_path, a_which, metric, fmt), outcomes(b_path, b_which, metric, fmt)
  keys = sorted(set(a) & set(b))
  x = np.array([a[k] for k in keys], np.int8)
  y = np.array([b[k] for k in keys], np.int8)
  d = stats.paired_difference([(x, y)], 0.95, 4000, 0)
  n10, n01 = int(np.sum((x == 1) & (y == 0))), int(np.sum((x == 0) & (y == 1)))
  print(f"{fmt} {metric}: A {x.mean():.3f} B {y.mean():.3f} A-B {d['mean_diff']:+.3f} "
        f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] ({d['method']}), n={len(keys)}, n10:n01={n10}:{n01}, "
        f"McNemar p={stats.mcnemar_exact(n10, n01):.2g}")


if __name__ == "__main__":
  main(sys.argv[1:])
