"""Small-sample statistics for reported accuracies: Wilson intervals and t-intervals across seeds.

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
