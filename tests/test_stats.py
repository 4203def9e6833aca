"""Statistics helpers against values worked out by hand from the formulas."""

import math

import numpy as np
import pytest

from lazarus_jax.stats import accuracy_summary, mean_ci, t_critical, wilson_interval

Z95 = 1.959963984540054  # standard normal 97.5% quantile


def test_wilson_8_of_10():
  # centre = (0.8 + z^2/20) / (1 + z^2/10), half = z/(1 + z^2/10) * sqrt(0.016 + z^2/400)
  z2 = Z95 ** 2
  denom = 1 + z2 / 10
  centre = (0.8 + z2 / 20) / denom
  half = Z95 / denom * math.sqrt(0.8 * 0.2 / 10 + z2 / 400)
  low, high = wilson_interval(8, 10)
  assert low == pytest.approx(centre - half, abs=1e-12)
  assert high == pytest.approx(centre + half, abs=1e-12)
  assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def test_wilson_edges():
  # 0/n: the lower end is exactly 0 and the upper end is z^2 / (n + z^2).
  low, high = wilson_interval(0, 20)
  assert low == 0.0
  assert high == pytest.approx(Z95 ** 2 / (20 + Z95 ** 2), abs=1e-12)
  # n/n mirrors 0/n.
  low2, high2 = wilson_interval(20, 20)
  assert high2 == 1.0 and low2 == pytest.approx(1 - high, abs=1e-12)
  assert wilson_interval(0, 0) == (0.0, 1.0)
  # Exact ends at every n (no 0.99999... from round-off).
  for n in range(1, 300):
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
  # Symmetry k/n <-> (n-k)/n, and a wider interval at higher confidence.
  a = wilson_interval(3, 17)
  b = wilson_interval(14, 17)
  assert a[0] == pytest.approx(1 - b[1]) and a[1] == pytest.approx(1 - b[0])
  w95 = wilson_interval(30, 100)
  w99 = wilson_interval(30, 100, confidence=0.99)
  assert w99[0] < w95[0] < 0.3 < w95[1] < w99[1]
  with pytest.raises(ValueError):
    wilson_interval(5, 4)
  with pytest.raises(ValueError):
    wilson_interval(1, 4, confidence=1.0)


def test_t_critical_table():
  # Two-sided 95% values from any t table; df=1 is tan(0.475*pi) exactly.
  assert t_critical(0.95, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-12)
  assert t_critical(0.95, 2) == pytest.approx(4.302653, abs=1e-6)  # sqrt(2 / (1 - c^2) - 2) form
  assert t_critical(0.95, 4) == pytest.approx(2.776445, abs=1e-6)
  assert t_critical(0.95, 9) == pytest.approx(2.262157, abs=1e-6)
  assert t_critical(0.99, 30) == pytest.approx(2.749996, abs=1e-6)
  # Large df approaches the normal quantile.
  assert t_critical(0.95, 100000) == pytest.approx(Z95, abs=1e-4)


def test_t_critical_matches_scipy():
  import scipy.stats as st
  for df in (1, 2, 3, 5, 8, 17, 64, 501):
    for c in (0.8, 0.95, 0.99):
      assert t_critical(c, df) == pytest.approx(st.t.ppf(0.5 + c / 2, df), rel=1e-9)


def test_mean_ci():
  mean, low, high = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
  # sd = sqrt(2.5), sem = sqrt(0.5), t(0.975, 4) = 2.776445
  half = 2.7764451051977934 * math.sqrt(0.5)
  assert mean == 3.0
  assert low == pytest.approx(3 - half, rel=1e-9) and high == pytest.approx(3 + half, rel=1e-9)
  # One seed: the mean is reported, the interval is undefined (nan), not zero-width.
  m1, l1, h1 = mean_ci([0.7])
  assert m1 == 0.7 and math.isnan(l1) and math.isnan(h1)
  # Identical values: zero-width interval.
  assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
  with pytest.raises(ValueError):
    mean_ci([])
  with pytest.raises(ValueError):
    mean_ci([1.0, float("nan")])


def test_accuracy_summary():
  s = accuracy_summary(np.array([True] * 8 + [False] * 2))
  assert s["accuracy"] == 0.8 and s["n"] == 10 and s["n_correct"] == 8
  assert (s["ci_low"], s["ci_high"]) == wilson_interval(8, 10)
  assert accuracy_summary([1, 0, 1, 1])["n_correct"] == 3
  empty = accuracy_summary(np.zeros(0, dtype=bool))
  assert empty["n"] == 0 and math.isnan(empty["accuracy"]) and (empty["ci_low"], empty["ci_high"]) == (0.0, 1.0)
  with pytest.raises(ValueError):
    accuracy_summary([0.3, 1.0])
