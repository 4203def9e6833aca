"""Small-sample statistics: Wilson and t-intervals, McNemar, and the hierarchical bootstrap over seeds and examples.

Pure Python + numpy on purpose: no scipy dependency. The normal quantile comes from the standard library
(`statistics.NormalDist`); the Student-t quantile is computed exactly for integer degrees of freedom by
inverting the closed-form CDF series (Abramowitz & Stegun 26.7.3-4), which is all that seed counts need.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np


def _check_confidence(confidence: float) -> None:
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def normal_quantile(p: float) -> float:
  """Inverse standard normal CDF."""
  return NormalDist().inv_cdf(p)


def _t_central_prob(t: float, df: int) -> float:
  """P(|T| < t) for Student-t with integer df >= 1 (A&S 26.7.3 / 26.7.4, exact)."""
  theta = math.atan(t / math.sqrt(df))
  s, c = math.sin(theta), math.cos(theta)
  c2 = c * c
  if df % 2 == 1:
    # Odd df: (2/pi) * (theta + sin*cos*(1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df-3 over 2 extra terms.
    if df == 1:
      return 2.0 * theta / math.pi
    term, total = c, c
    for k in range(1, (df - 1) // 2):
      term *= c2 * (2 * k) / (2 * k + 1)
      total += term
    return 2.0 / math.pi * (theta + s * total)
  # Even df: sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), (df-2)/2 extra terms.
  term, total = 1.0, 1.0
  for k in range(1, df // 2):
    term *= c2 * (2 * k - 1) / (2 * k)
    total += term
  return s * total


def t_critical(confidence: float, df: int) -> float:
  """Two-sided critical value t* with P(|T_df| < t*) = confidence (integer df >= 1)."""
  _check_confidence(confidence)
  if int(df) != df or df < 1:
    raise ValueError(f"df must be a positive integer, got {df}")
  df = int(df)
  # Bracket, then bisect: the CDF is monotone and cheap, so 200 halvings reach float precision.
  lo, hi = 0.0, 1.0
  while _t_central_prob(hi, df) < confidence:
    hi *= 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if _t_central_prob(mid, df) < confidence:
      lo = mid
    else:
      hi = mid
    if hi - lo <= 1e-15 * max(1.0, hi):
      break
  return 0.5 * (lo + hi)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion.

  Unlike the normal (Wald) interval it stays inside [0, 1] and is sensible at 0/n and n/n, which matters
  for probe accuracies near 100% on a few hundred examples. n == 0 carries no information: (0, 1).
  """
  _check_confidence(confidence)
  if n < 0 or successes < 0 or successes > n:
    raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
  if n == 0:
    return (0.0, 1.0)
  z = normal_quantile(0.5 + confidence / 2.0)
  z2 = z * z
  p = successes / n
  denom = 1.0 + z2 / n
  centre = (p + z2 / (2.0 * n)) / denom
  half = (z / denom) * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
  low, high = centre - half, centre + half
  # The formula gives exactly 0 at k = 0 and 1 at k = n; pin them so round-off cannot show 0.99999...
  low = 0.0 if successes == 0 else max(0.0, low)
  high = 1.0 if successes == n else min(1.0, high)
  return (low, high)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
  """Mean and two-sided Student-t interval across independent runs (e.g. seeds): (mean, low, high).

  One value gives (v, nan, nan): a single seed says nothing about seed-to-seed spread, and (v, v, v) would
  read as zero uncertainty. Callers that write JSON should turn nan into null. Empty input is an error.
  """
  _check_confidence(confidence)
  x = np.asarray(values, dtype=np.float64).ravel()
  if x.size == 0:
    raise ValueError("mean_ci needs at least one value")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"mean_ci got non-finite values: {x.tolist()}")
  mean = float(x.mean())
  if x.size == 1:
    return (mean, math.nan, math.nan)
  sem = float(x.std(ddof=1)) / math.sqrt(x.size)
  half = t_critical(confidence, x.size - 1) * sem
  return (mean, mean - half, mean + half)


def accuracy_summary(correct, confidence: float = 0.95) -> dict:
  """{accuracy, n, n_correct, ci_low, ci_high} for a vector of per-example booleans (Wilson interval).

  n == 0 gives accuracy nan and the uninformative interval (0, 1).
  """
  c = np.asarray(correct)
  if c.dtype != np.bool_:
    if c.size and not np.isin(c, (0, 1)).all():
      raise ValueError("accuracy_summary expects booleans (or 0/1)")
    c = c.astype(bool)
  c = c.ravel()
  n = int(c.size)
  k = int(c.sum())
  low, high = wilson_interval(k, n, confidence)
  return {
    "accuracy": (k / n) if n else math.nan,
    "n": n,
    "n_correct": k,
    "ci_low": low,
    "ci_high": high,
  }


# ---- paired comparisons and the hierarchical bootstrap (the sweep's seeds x held-out examples) -----------


def bits(values) -> str:
  """Per-example booleans as a compact "0110..." string (results.json's per-example outcomes: small, diffable)."""
  return "".join("1" if v else "0" for v in np.asarray(values, bool).tolist())


def unbits(text: str) -> np.ndarray:
  """`bits` read back: a bool array."""
  return np.frombuffer(text.encode(), np.uint8) == ord("1")


def mcnemar_exact(n10: int, n01: int) -> float:
  """Two-sided exact McNemar p-value for n10 / n01 discordant pairs: 2 * P(X <= min) under Binomial(n10 + n01, 1/2).

  Exact integer sums (math.comb), so no scipy. No discordant pairs: p = 1.
  """
  n10, n01 = int(n10), int(n01)  # Python ints: 2 ** n must not overflow as a numpy integer would
  if n10 < 0 or n01 < 0:
    raise ValueError(f"discordant counts must be >= 0, got {n10}, {n01}")
  n = n10 + n01
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(min(n10, n01) + 1))
  return min(1.0, 2 * tail / 2**n)  # int / int is correctly rounded even for huge n


def _resampled_means(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  # Resampling n values with replacement only matters through how often each distinct value is drawn: a
  # multinomial over the distinct values has the same law as drawing indices, at a cost that does not grow with n.
  vals, counts = np.unique(values, return_counts=True)
  draws = rng.multinomial(values.size, counts / values.size, size=size)  # [size, n_distinct]
  return draws @ vals / values.size


def hierarchical_bootstrap(groups: Sequence, n_resamples: int = 4000, seed: int = 0) -> np.ndarray:
  """Bootstrap distribution [n_resamples] of the mean over groups (seeds) of each group's mean over examples.

  Each resample draws len(groups) groups with replacement, then the examples of every drawn group with
  replacement (a group drawn twice is resampled twice, independently). Seeded: the same input gives the same draws.
  """
  arrays = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
  if not arrays or any(a.size == 0 for a in arrays):
    raise ValueError("hierarchical_bootstrap needs at least one group, and no empty group")
  rng = np.random.default_rng(seed)
  n_groups = len(arrays)
  pick = rng.integers(n_groups, size=(n_resamples, n_groups))
  total = np.zeros(n_resamples)
  for slot in range(n_groups):
    means = np.stack([_resampled_means(a, n_resamples, rng) for a in arrays])  # [groups, resamples]
    total += means[pick[:, slot], np.arange(n_resamples)]
  return total / n_groups


def _percentile_summary(point: float, boot: np.ndarray, confidence: float) -> dict:
  tail = (1.0 - confidence) / 2.0
  low, high = np.quantile(boot, [tail, 1.0 - tail])
  return {"mean": point, "ci_low": float(low), "ci_high": float(high), "se": float(np.std(boot, ddof=1)), "method": "bootstrap"}


def _is_binary(arrays) -> bool:
  return all(np.isin(a, (0, 1)).all() for a in arrays)


def _se_from_interval(low: float, high: float, confidence: float) -> float:
  # For a fallback interval: the standard error a normal interval of that width would have.
  return (high - low) / (2.0 * normal_quantile(0.5 + confidence / 2.0))


def bootstrap_mean(groups: Sequence, confidence: float = 0.95, n_resamples: int = 4000, seed: int = 0) -> dict:
  """One cell (e.g. an arm's accuracy over seeds): {mean, ci_low, ci_high, se, method, n_groups, n}.

  mean = the mean over groups of each group's mean; the interval is the hierarchical bootstrap's percentile
  interval. Where every value is the same (e.g. 100% correct in every seed) the bootstrap collapses to a point:
  0/1 values then get a Wilson interval on the pooled counts (method "wilson").
  """
  _check_confidence(confidence)
  arrays = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
  boot = hierarchical_bootstrap(arrays, n_resamples, seed)
  point = float(np.mean([a.mean() for a in arrays]))
  out = _percentile_summary(point, boot, confidence)
  pooled = np.concatenate(arrays)
  if np.all(pooled == pooled[0]) and _is_binary(arrays):
    low, high = wilson_interval(int(pooled.sum()), pooled.size, confidence)
    out.update(ci_low=low, ci_high=high, se=_se_from_interval(low, high, confidence), method="wilson")
  out.update(n_groups=len(arrays), n=int(pooled.size))
  return out


def paired_wilson_interval(n10: int, n01: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """Conservative interval for a paired difference (n10 - n01) / n from the two discordant proportions.

  Each proportion gets a Wilson interval at 1 - alpha/2 (Bonferroni), so the difference of their ends covers
  at `confidence` or more. For when the bootstrap collapses (every paired difference the same).
  """
  _check_confidence(confidence)
  level = 1.0 - (1.0 - confidence) / 2.0
  lo10, hi10 = wilson_interval(n10, n, level)
  lo01, hi01 = wilson_interval(n01, n, level)
  return (max(-1.0, lo10 - hi01), min(1.0, hi10 - lo01))


def paired_difference(pairs: Sequence, confidence: float = 0.95, n_resamples: int = 4000, seed: int = 0) -> dict:
  """Arm a minus arm b on the same examples: pairs = [(a, b)] per group (seed), aligned 0/1 vectors.

  {mean_diff, ci_low, ci_high, se, method, n_groups, n, mcnemar: [{n10, n01, p}] per group}: the hierarchical
  bootstrap of the per-example differences (seeds, then examples, the pair kept together), McNemar's exact test
  per group as a check, and `paired_wilson_interval` on the pooled discordant counts where every difference is
  the same (method "paired wilson").
  """
  _check_confidence(confidence)
  diffs, tests = [], []
  for a, b in pairs:
    a, b = np.asarray(a, dtype=np.int64).ravel(), np.asarray(b, dtype=np.int64).ravel()
    if a.shape != b.shape:
      raise ValueError(f"a pair needs vectors of one length, got {a.size} and {b.size}")
    if not _is_binary([a, b]):
      raise ValueError("paired_difference expects 0/1 vectors")
    n10, n01 = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    tests.append({"n10": n10, "n01": n01, "p": mcnemar_exact(n10, n01)})
    diffs.append(a - b)
  out = bootstrap_mean(diffs, confidence, n_resamples, seed)
  pooled = np.concatenate(diffs)
  if np.all(pooled == pooled[0]):
    n10, n01 = sum(t["n10"] for t in tests), sum(t["n01"] for t in tests)
    low, high = paired_wilson_interval(n10, n01, pooled.size, confidence)
    out.update(ci_low=low, ci_high=high, se=_se_from_interval(low, high, confidence), method="paired wilson")
  out = {"mean_diff": out.pop("mean"), **out, "mcnemar": tests}
  return out


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
  """Newcombe's hybrid score interval (his method 10) for p1 - p2 of two independent proportions."""
  p1, p2 = k1 / n1, k2 / n2
  l1, u1 = wilson_interval(k1, n1, confidence)
  l2, u2 = wilson_interval(k2, n2, confidence)
  d = p1 - p2
  return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def unpaired_difference(
  groups_a: Sequence, groups_b: Sequence, confidence: float = 0.95, n_resamples: int = 4000, seed: int = 0
) -> dict:
  """Cell a minus cell b on different examples (e.g. two formats): independent hierarchical bootstraps.

  Where either cell's 0/1 values are all the same its bootstrap has no spread, which would understate the
  difference's: Newcombe's interval on the pooled counts instead (method "newcombe").
  """
  _check_confidence(confidence)
  a = [np.asarray(g, dtype=np.float64).ravel() for g in groups_a]
  b = [np.asarray(g, dtype=np.float64).ravel() for g in groups_b]
  boot = hierarchical_bootstrap(a, n_resamples, seed) - hierarchical_bootstrap(b, n_resamples, seed + 1)
  point = float(np.mean([x.mean() for x in a]) - np.mean([x.mean() for x in b]))
  out = _percentile_summary(point, boot, confidence)
  pa, pb = np.concatenate(a), np.concatenate(b)
  if (np.all(pa == pa[0]) or np.all(pb == pb[0])) and _is_binary(a + b):
    low, high = newcombe_interval(int(pa.sum()), pa.size, int(pb.sum()), pb.size, confidence)
    out.update(ci_low=low, ci_high=high, se=_se_from_interval(low, high, confidence), method="newcombe")
  return {"mean_diff": out.pop("mean"), **out}


def min_detectable_effect(se: float, confidence: float = 0.95, power: float = 0.8) -> float:
  """Smallest true difference a two-sided test at 1 - confidence detects with `power`: (z_{1-a/2} + z_power) * se."""
  _check_confidence(confidence)
  return (normal_quantile(0.5 + confidence / 2.0) + normal_quantile(power)) * se


def design_min_detectable_effect(n_pairs: int, confidence: float = 0.95, power: float = 0.8) -> float:
  """The MDE of a paired difference before any results: the worst case, independent Bernoulli(0.5) outcomes per
  example and arm (variance 0.25 + 0.25 per pair), over n_pairs paired examples in all."""
  if n_pairs <= 0:
    raise ValueError(f"n_pairs must be positive, got {n_pairs}")
  return min_detectable_effect(math.sqrt(0.5 / n_pairs), confidence, power)
