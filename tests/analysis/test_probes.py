"""Linear probes, control task and lexical baseline on synthetic data with known answers."""

import json

import numpy as np
import pytest

from lazarus_jax.analysis.probes import (
  control_labels,
  fit_probes,
  lexical_baseline,
  split_indices,
)

N, D, C = 480, 24, 4


def _synthetic(seed=0):
  """Three layer rows: pure noise, cleanly separable, weakly separable (class means shrunk into noise)."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, C, N)
  means = rng.normal(size=(C, D)) * 3.0
  noise = rng.normal(size=(N, D))
  separable = means[y] + 0.5 * rng.normal(size=(N, D))
  # Large offset and scale: standardisation must make the probe indifferent to them.
  separable = 1000.0 + 50.0 * separable
  weak = 0.15 * means[y] + rng.normal(size=(N, D))
  return np.stack([noise, separable, weak]).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
  x, y = _synthetic()
  tr, te = split_indices(N, test_fraction=0.3, seed=0, stratify_labels=y)
  return x, y, tr, te


@pytest.fixture(scope="module")
def result(data):
  x, y, tr, te = data
  return fit_probes(x, y, tr, te, l2=1e-3, steps=200, seed=0)


def test_split_indices(data):
  _, y, tr, te = data
  assert np.intersect1d(tr, te).size == 0
  assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(N))
  # Stratified: each class is ~30% test.
  for c in range(C):
    frac = np.isin(np.flatnonzero(y == c), te).mean()
    assert abs(frac - 0.3) < 0.02
  tr2, te2 = split_indices(N, test_fraction=0.3, seed=0, stratify_labels=y)
  assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
  _, te3 = split_indices(N, test_fraction=0.3, seed=1, stratify_labels=y)
  assert not np.array_equal(te, te3)
  tr4, te4 = split_indices(10, test_fraction=0.25, seed=3)
  assert te4.size == 2 and tr4.size == 8


def test_probe_accuracies(result):
  chance = 1.0 / C
  # Noise layer: nothing to find on held-out data.
  assert abs(result.test_accuracy[0] - chance) < 0.12
  # Separable layer: (near) perfect, and the interval says so.
  assert result.train_accuracy[1] == 1.0
  assert result.test_accuracy[1] >= 0.98
  assert result.test_ci[1, 0] > 0.9 and result.test_ci[1, 1] == 1.0
  # Weak layer lies between the two.
  assert result.test_accuracy[0] + 0.2 < result.test_accuracy[2] <= result.test_accuracy[1]
  assert np.all(result.test_ci[:, 0] <= result.test_accuracy)
  assert np.all(result.test_accuracy <= result.test_ci[:, 1])


def test_control_and_selectivity(result):
  # Shuffled labels are unpredictable on held-out data at every layer.
  assert np.all(np.abs(result.control_accuracy - 1.0 / C) < 0.12)
  assert np.allclose(result.selectivity, result.test_accuracy - result.control_accuracy)
  assert result.selectivity[1] > 0.6
  assert abs(result.selectivity[0]) < 0.2
  assert abs(result.majority_baseline - 1.0 / C) < 0.1


def test_determinism(data, result):
  x, y, tr, te = data
  again = fit_probes(x, y, tr, te, l2=1e-3, steps=200, seed=0)
  for name in ("train_accuracy", "test_accuracy", "control_accuracy", "selectivity", "final_loss"):
    assert np.array_equal(getattr(result, name), getattr(again, name)), name
  # The seed drives only the control labels: the real-label probe is unchanged.
  other = fit_probes(x, y, tr, te, l2=1e-3, steps=200, seed=1)
  assert np.array_equal(other.test_accuracy, result.test_accuracy)
  assert not np.array_equal(control_labels(y, seed=0), control_labels(y, seed=1))


def test_to_json(result):
  rows = result.to_json()
  assert [r["layer"] for r in rows] == [0, 1, 2]
  for key in ("layer", "train_accuracy", "test_accuracy", "test_ci", "control_accuracy", "selectivity"):
    assert key in rows[0]
  assert rows[1]["test_accuracy"] == float(result.test_accuracy[1])
  parsed = json.loads(result.dumps())
  assert parsed["summary"]["n_test"] == result.n_test and parsed["summary"]["chance"] == 0.25


def test_lbfgs_method(data, result):
  # Same convex objective, other optimizer: same accuracies on the clean layers, and it stops early.
  x, y, tr, te = data
  r = fit_probes(x[:2], y, tr, te, steps=100, method="lbfgs")
  assert r.test_accuracy[1] >= 0.98
  assert abs(r.test_accuracy[0] - 0.25) < 0.12
  assert r.final_loss[1] <= result.final_loss[1] + 1e-3
  assert r.steps_taken[1] <= 100


def test_control_labels_per_type():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 300)
  types = rng.integers(0, 40, 300)
  ctrl = control_labels(y, seed=5, types=types)
  # One label per type; all within the label range.
  for t in np.unique(types):
    assert np.unique(ctrl[types == t]).size == 1
  assert set(np.unique(ctrl)) <= {0, 1, 2}
  # Permutation control keeps class counts.
  assert np.array_equal(np.bincount(control_labels(y, seed=5)), np.bincount(y))


def test_input_errors(data):
  x, y, tr, te = data
  with pytest.raises(ValueError, match="overlap"):
    fit_probes(x, y, tr, np.concatenate([te, tr[:1]]))
  with pytest.raises(ValueError, match="shape"):
    fit_probes(x[0], y, tr, te)
  with pytest.raises(ValueError, match="labels"):
    fit_probes(x, y[:-1], tr, te)


def test_lexical_baseline():
  rng = np.random.default_rng(0)
  n = 240
  y = rng.integers(0, C, n)
  split = split_indices(n, test_fraction=0.25, seed=0, stratify_labels=y)
  # The label's own token (100 + label) sits among distractor tokens, like an operator symbol in a prompt.
  with_label = [list(rng.integers(0, 50, 4)) + [100 + int(c)] + list(rng.integers(0, 50, 3)) for c in y]
  out = lexical_baseline(with_label, y, split)
  assert out["accuracy"] == 1.0 and out["n"] == split[1].size
  # Distractors only: the bag of tokens carries no label information.
  without = [list(rng.integers(0, 50, 8)) for _ in y]
  out2 = lexical_baseline(without, y, split)
  assert out2["accuracy"] < 0.45
