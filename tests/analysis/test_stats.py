"""Statistics helpers against values worked out by hand from the formulas."""

import math

import numpy as np
import pytest

from lazarus_jax.analysis.stats import (
  accuracy_summary,
  bootstrap_mean,
  design_min_detectable_effect,
  hierarchical_bootstrap,
  mcnemar_exact,
  mean_ci,
  min_detectable_effect,
  newcombe_interval,
  paired_difference,
  paired_wilson_interval,
  t_critical,
  unpaired_difference,
  wilson_interval,
)

Z95 = 1.959963984540054  # standard normal 97.5% quantile


def test_wilson_8_of_10():
  # centre = (0.8 + z^2/20) / (1 + z^2/10), half = z/(1 + z^2/10) * sqrt(0.016 + z^2/400)
  z2 = Z95**2
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
  assert high == pytest.approx(Z95**2 / (20 + Z95**2), abs=1e-12)
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


def test_mcnemar_exact_by_hand():
  # 1 vs 5 discordant pairs: 2 * P(X <= 1 | Binomial(6, 1/2)) = 2 * (1 + 6) / 64.
  assert mcnemar_exact(1, 5) == 14 / 64 and mcnemar_exact(5, 1) == 14 / 64
  assert mcnemar_exact(0, 10) == 2 / 1024
  assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(4, 4) == 1.0  # the two-sided sum passes 1: capped
  assert mcnemar_exact(np.int64(0), np.int64(80)) == 2 / 2**80  # numpy counts: no int64 overflow in 2 ** n
  import scipy.stats as st

  for b, c in ((3, 11), (20, 35), (0, 1), (7, 7)):
    assert mcnemar_exact(b, c) == pytest.approx(st.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
  with pytest.raises(ValueError):
    mcnemar_exact(-1, 2)


def test_hierarchical_bootstrap_is_seeded_and_has_the_right_spread():
  rng = np.random.default_rng(0)
  groups = [(rng.random(400) < p).astype(int) for p in (0.3, 0.5, 0.7)]
  a, b = hierarchical_bootstrap(groups, 3000, seed=5), hierarchical_bootstrap(groups, 3000, seed=5)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, hierarchical_bootstrap(groups, 3000, seed=6))
  # One group: the example bootstrap of a mean, whose SE is sqrt(p (1 - p) / n).
  one = groups[1]
  p = one.mean()
  assert np.std(hierarchical_bootstrap([one], 20000, 1)) == pytest.approx(np.sqrt(p * (1 - p) / one.size), rel=0.05)
  # Several groups that differ: drawing seeds adds the between-seed spread (the old t-interval's only source).
  seeds_sd = np.std([g.mean() for g in groups], ddof=0) / np.sqrt(3)
  within = np.sqrt(np.mean([g.mean() * (1 - g.mean()) for g in groups]) / 400 / 3)
  assert np.std(a) == pytest.approx(np.sqrt(seeds_sd**2 + within**2), rel=0.1)
  # Continuous values work too (the shortcut resamples distinct values with their counts).
  x = rng.normal(size=50)
  assert np.mean(hierarchical_bootstrap([x], 4000, 2)) == pytest.approx(x.mean(), abs=0.02)
  with pytest.raises(ValueError):
    hierarchical_bootstrap([np.zeros(0)])


def test_bootstrap_mean_falls_back_to_wilson_when_every_value_agrees():
  rng = np.random.default_rng(1)
  varied = [(rng.random(100) < 0.6).astype(int) for _ in range(3)]
  s = bootstrap_mean(varied)
  assert s["method"] == "bootstrap" and s["ci_low"] < s["mean"] < s["ci_high"]
  assert s["mean"] == pytest.approx(np.mean([g.mean() for g in varied])) and s["n"] == 300 and s["n_groups"] == 3
  # Seeds that agree on the mean but not on the examples: the interval still has width.
  same_mean = [np.roll(np.array([1] * 50 + [0] * 50), k) for k in range(3)]
  assert bootstrap_mean(same_mean)["ci_high"] - bootstrap_mean(same_mean)["ci_low"] > 0.1
  full = bootstrap_mean([np.ones(40), np.ones(40), np.ones(40)])
  assert full["method"] == "wilson" and (full["ci_low"], full["ci_high"]) == wilson_interval(120, 120)
  assert full["mean"] == 1.0 and full["se"] > 0
  empty = bootstrap_mean([np.zeros(10)])
  assert (empty["ci_low"], empty["ci_high"]) == wilson_interval(0, 10)


def test_paired_difference_contains_the_truth_and_checks_with_mcnemar():
  rng = np.random.default_rng(2)
  pairs = []
  for _ in range(3):
    b = (rng.random(300) < 0.5).astype(int)
    flip = rng.random(300) < 0.3
    a = np.where(flip, 1, b)  # a is b with 30% of its examples made correct: a - b > 0
    pairs.append((a, b))
  true = np.mean([np.mean(a - b) for a, b in pairs])
  d = paired_difference(pairs, n_resamples=4000)
  assert d["mean_diff"] == pytest.approx(true) and d["method"] == "bootstrap"
  assert 0 < d["ci_low"] < true < d["ci_high"]
  # Pairing removes the shared per-example variation: narrower than treating the arms as independent.
  unpaired = unpaired_difference([a for a, _ in pairs], [b for _, b in pairs])
  assert d["ci_high"] - d["ci_low"] < unpaired["ci_high"] - unpaired["ci_low"]
  for (a, b), t in zip(pairs, d["mcnemar"]):
    n10, n01 = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    assert (t["n10"], t["n01"], t["p"]) == (n10, n01, mcnemar_exact(n10, n01)) and n01 == 0
  # Identical arms: every difference is 0, the bootstrap collapses; the discordant-pair interval does not.
  same = paired_difference([(np.ones(50), np.ones(50))] * 2)
  assert same["method"] == "paired wilson" and same["mean_diff"] == 0.0
  assert (same["ci_low"], same["ci_high"]) == paired_wilson_interval(0, 0, 100)
  hi = wilson_interval(0, 100, 0.975)[1]
  assert same["ci_low"] == pytest.approx(-hi) and same["ci_high"] == pytest.approx(hi)
  with pytest.raises(ValueError):
    paired_difference([(np.ones(3), np.ones(4))])


def test_newcombe_against_the_paper():
  # Newcombe (1998), Stat Med 17:873, table II example (a): 56/70 vs 48/80, method 10 gives 0.0524 to 0.3339.
  low, high = newcombe_interval(56, 70, 48, 80)
  assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
  d = unpaired_difference([np.ones(30)], [np.r_[np.ones(15), np.zeros(15)]])
  assert d["method"] == "newcombe" and (d["ci_low"], d["ci_high"]) == newcombe_interval(30, 30, 15, 30)


def test_minimum_detectable_effect():
  z = Z95 + 0.8416212335729143  # z_0.975 + z_0.8
  assert min_detectable_effect(0.02) == pytest.approx(z * 0.02, rel=1e-9)
  # 600 paired examples, worst case Var(a - b) = 0.25 + 0.25: SE = sqrt(0.5 / 600).
  assert design_min_detectable_effect(600) == pytest.approx(z * math.sqrt(0.5 / 600), rel=1e-9)
  assert round(design_min_detectable_effect(600), 4) == 0.0809
  with pytest.raises(ValueError):
    design_min_detectable_effect(0)
