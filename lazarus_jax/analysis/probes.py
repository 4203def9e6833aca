"""Linear probes on hidden states: the "hidden-space classifier" of the seed, measured honestly.

The seed reports 100% probe accuracy at layer 0 on 16 prompts: the operator symbol is in the input, so a
probe can read it off the embedding (ORIGINAL_DEFECTS.md #13). Here every probe result comes with
  - a held-out test split (accuracy with a Wilson 95% interval),
  - a control task with random labels (Hewitt & Liang 2019) and selectivity = test - control accuracy,
  - a lexical baseline: what a probe on the bag of input token ids alone achieves.

Probes are multinomial logistic regressions with L2, fitted full-batch (Adam by default, or L-BFGS) for at
most a fixed number of steps, one per layer, all layers and both tasks (real + control) in one jitted,
vmapped call.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lazarus_jax.analysis.stats import accuracy_summary, wilson_interval

# Train-set standard deviations below this count as constant: such a feature (a dead dimension, a token
# seen in every train prompt) is only centred, so a test value that differs cannot be scaled up by 1/~0.
_STD_FLOOR = 1e-6


# ---------------------------------------------------------------------------------------------------------
# Splits and labels


def split_indices(
  n: int,
  test_fraction: float = 0.25,
  seed: int = 0,
  stratify_labels: Sequence | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Seeded random train/test split of range(n): (train_idx, test_idx), each sorted, disjoint, non-empty.

  With `stratify_labels`, each class is split separately so class proportions match across the split;
  every class with at least 2 examples gets at least one example on each side.
  """
  if n < 2:
    raise ValueError(f"need at least 2 examples to split, got {n}")
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
  rng = np.random.default_rng(seed)
  if stratify_labels is None:
    perm = rng.permutation(n)
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    test = perm[:n_test]
  else:
    y = np.asarray(stratify_labels)
    if y.shape != (n,):
      raise ValueError(f"stratify_labels has shape {y.shape}, expected ({n},)")
    test_parts = []
    for cls in np.unique(y):  # sorted order: deterministic across runs
      idx = np.flatnonzero(y == cls)
      idx = idx[rng.permutation(idx.size)]
      k = int(round(test_fraction * idx.size))
      if idx.size >= 2:
        k = min(idx.size - 1, max(1, k))
      test_parts.append(idx[:k])
    test = np.concatenate(test_parts)
    if test.size == 0 or test.size == n:
      raise ValueError("stratified split left one side empty; use more examples or another test_fraction")
  mask = np.zeros(n, dtype=bool)
  mask[test] = True
  return np.flatnonzero(~mask), np.flatnonzero(mask)


def control_labels(
  labels: Sequence | np.ndarray,
  seed: int = 0,
  types: Sequence | np.ndarray | None = None,
) -> np.ndarray:
  """Random labels for the control task, as class indices 0..C-1 (C = number of distinct labels).

  Without `types`: the label vector is permuted with a fixed seed (class frequencies are kept, any link to
  the input is broken). With `types` (one hashable per example, e.g. the operand tokens or the prompt
  format): Hewitt & Liang's control, each distinct type gets one random label, drawn with the empirical
  class frequencies, so the control is learnable from the input only by memorising types.
  """
  _, y = np.unique(np.asarray(labels), return_inverse=True)
  y = y.ravel()
  rng = np.random.default_rng(seed)
  if types is None:
    return y[rng.permutation(y.size)]
  t = np.asarray(types)
  if t.shape[0] != y.size:
    raise ValueError(f"types has {t.shape[0]} entries, labels has {y.size}")
  _, t_idx = np.unique(t, axis=0 if t.ndim > 1 else None, return_inverse=True)
  t_idx = t_idx.ravel()
  freqs = np.bincount(y) / y.size
  per_type = rng.choice(freqs.size, size=int(t_idx.max()) + 1, p=freqs)
  return per_type[t_idx]


def _encode_labels(labels) -> tuple[np.ndarray, np.ndarray]:
  classes, y = np.unique(np.asarray(labels), return_inverse=True)
  return classes, y.ravel().astype(np.int32)


def _check_split(n: int, train_idx, test_idx) -> tuple[np.ndarray, np.ndarray]:
  tr = np.asarray(train_idx, dtype=np.int64).ravel()
  te = np.asarray(test_idx, dtype=np.int64).ravel()
  if tr.size == 0 or te.size == 0:
    raise ValueError("train and test splits must both be non-empty")
  for name, idx in (("train", tr), ("test", te)):
    if idx.min() < 0 or idx.max() >= n:
      raise ValueError(f"{name} indices out of range [0, {n})")
    if np.unique(idx).size != idx.size:
      raise ValueError(f"{name} indices contain duplicates")
  if np.intersect1d(tr, te).size:
    raise ValueError("train and test indices overlap: held-out accuracy would be meaningless")
  return tr, te


# ---------------------------------------------------------------------------------------------------------
# Fitting


def _standardise(x_train: jax.Array, x_test: jax.Array) -> tuple[jax.Array, jax.Array]:
  # Train statistics only, so nothing about the test set leaks into the probe.
  mu = x_train.mean(axis=0)
  sd = x_train.std(axis=0)
  sd = jnp.where(sd < _STD_FLOOR, 1.0, sd)
  return (x_train - mu) / sd, (x_test - mu) / sd


def _make_fit(n_classes: int, steps: int, method: str, learning_rate: float, tol: float):
  """Returns fit(x_train [N, D], y [N], l2) -> (params, final loss, steps taken), one probe; vmapped."""

  def loss_fn(params, x, y, l2):
    logits = x @ params["w"] + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    # The bias is not penalised: it only encodes class frequencies.
    return ce + l2 * jnp.sum(params["w"] ** 2)

  def fit(x, y, l2):
    d = x.shape[-1]
    # Zero init: the objective is strictly convex (l2 > 0), so the seed has nothing to do here and the
    # result is a deterministic function of the data.
    params = {"w": jnp.zeros((d, n_classes), jnp.float32), "b": jnp.zeros((n_classes,), jnp.float32)}
    f = lambda p: loss_fn(p, x, y, l2)
    if method == "lbfgs":
      opt = optax.lbfgs()
      vg = optax.value_and_grad_from_state(f)
    elif method == "adam":
      opt = optax.adam(learning_rate)
      vg = jax.value_and_grad(f)
    else:
      raise ValueError(f"unknown probe method {method!r} (lbfgs or adam)")
    state = opt.init(params)

    def cond(carry):
      _, _, i, gnorm, _ = carry
      return (i < steps) & (gnorm > tol)

    def body(carry):
      params, state, i, _, _ = carry
      if method == "lbfgs":
        value, grad = vg(params, state=state)
        updates, new_state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
      else:
        value, grad = vg(params)
        updates, new_state = opt.update(grad, state, params)
      new_params = optax.apply_updates(params, updates)
      gnorm = optax.tree.norm(grad)
      # Do not step from a converged point (L-BFGS curvature pairs degenerate there) or into non-finite
      # values; a probe that stops early keeps its parameters while vmapped siblings run on.
      ok = (gnorm > tol) & jnp.isfinite(optax.tree.norm(new_params))
      keep = lambda new, old: jnp.where(ok, new, old)
      return (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_state, state), i + 1, gnorm, value)

    # A while loop rather than a scan: the vmapped loop ends when every probe has converged (gradient norm
    # <= tol) or `steps` is reached, which is often far sooner for L-BFGS. Deterministic either way.
    init = (params, state, jnp.int32(0), jnp.float32(jnp.inf), jnp.float32(jnp.nan))
    params, _, n_steps, _, _ = jax.lax.while_loop(cond, body, init)
    return params, f(params), n_steps

  return fit


def _fit_all(x_train, x_test, ys, l2, *, n_classes, steps, method, learning_rate, tol):
  """x_train [L, Ntr, D], x_test [L, Nte, D], ys [T, Ntr] -> logits for every (task, layer)."""
  fit = _make_fit(n_classes, steps, method, learning_rate, tol)

  def one(xtr, xte, y):
    xtr, xte = _standardise(xtr, xte)
    params, loss, n_steps = fit(xtr, y, l2)
    return xtr @ params["w"] + params["b"], xte @ params["w"] + params["b"], loss, n_steps

  over_layers = jax.vmap(one, in_axes=(0, 0, None))
  over_tasks = jax.vmap(over_layers, in_axes=(None, None, 0))
  return over_tasks(x_train, x_test, ys)


_fit_all_jit = jax.jit(_fit_all, static_argnames=("n_classes", "steps", "method", "learning_rate", "tol"))


# ---------------------------------------------------------------------------------------------------------
# Results


def _none_if_nan(v: float):
  return None if (isinstance(v, float) and math.isnan(v)) else v


@dataclasses.dataclass
class ProbeResults:
  """Per-layer probe results; arrays are indexed by layer row (0 = embedding output, L+1 = after block L)."""

  train_accuracy: np.ndarray  # [n_rows]
  test_accuracy: np.ndarray  # [n_rows]
  test_ci: np.ndarray  # [n_rows, 2] Wilson interval
  control_train_accuracy: np.ndarray  # [n_rows] how well the probe memorises random labels
  control_accuracy: np.ndarray  # [n_rows] held-out accuracy on random labels
  control_ci: np.ndarray  # [n_rows, 2]
  selectivity: np.ndarray  # [n_rows] test_accuracy - control_accuracy
  final_loss: np.ndarray  # [n_rows] training objective at the end (real labels)
  steps_taken: np.ndarray  # [n_rows] optimizer steps used (real labels); == config steps if not converged
  n_train: int
  n_test: int
  n_classes: int
  classes: list
  majority_baseline: float  # test accuracy of always predicting the most frequent train class
  config: dict

  def to_json(self) -> list[dict]:
    rows = []
    for i in range(self.test_accuracy.shape[0]):
      rows.append(
        {
          "layer": i,
          "train_accuracy": float(self.train_accuracy[i]),
          "test_accuracy": float(self.test_accuracy[i]),
          "test_ci": [float(self.test_ci[i, 0]), float(self.test_ci[i, 1])],
          "control_accuracy": float(self.control_accuracy[i]),
          "control_ci": [float(self.control_ci[i, 0]), float(self.control_ci[i, 1])],
          "control_train_accuracy": float(self.control_train_accuracy[i]),
          "selectivity": float(self.selectivity[i]),
          "final_loss": _none_if_nan(float(self.final_loss[i])),
          "steps_taken": int(self.steps_taken[i]),
          "n_train": self.n_train,
          "n_test": self.n_test,
        }
      )
    return rows

  def summary(self) -> dict:
    """Run-level facts that are the same for every layer."""
    return {
      "n_train": self.n_train,
      "n_test": self.n_test,
      "n_classes": self.n_classes,
      "classes": [c.item() if hasattr(c, "item") else c for c in self.classes],
      "majority_baseline": self.majority_baseline,
      "chance": 1.0 / self.n_classes,
      "config": self.config,
    }

  def dumps(self) -> str:
    return json.dumps({"summary": self.summary(), "layers": self.to_json()}, indent=2)


def fit_probes(
  features,
  labels,
  train_idx,
  test_idx,
  *,
  l2: float = 1e-3,
  steps: int = 300,
  seed: int = 0,
  method: str = "adam",
  learning_rate: float = 1e-2,
  tol: float = 1e-5,
  control_types=None,
  confidence: float = 0.95,
) -> ProbeResults:
  """Fits one linear probe per layer row on real labels and on control labels, in one compiled call.

  features: [n_rows, N, D] float (n_rows = n_layers + 1, row 0 = embeddings); labels: [N], any hashable
  values (mapped to 0..C-1 in sorted order). train_idx / test_idx: disjoint example indices.
  l2: weight of sum(W**2) added to the mean cross-entropy. steps: most optimizer steps (full batch); a
  probe stops earlier once its gradient norm is <= tol. method: "adam" (default; learning_rate) or "lbfgs".
  Both reach the same optimum on standardised features (the problem is convex); on CPU, vmapped L-BFGS is
  ~20x slower per sweep (its line search runs in lock-step across all probes), so Adam is the default.
  seed: only the control labels are random (init is zero, data are full-batch), so equal seeds give
  identical results. control_types: see `control_labels`; default is a seeded permutation of the labels.
  """
  feats = np.asarray(features)
  if feats.ndim != 3:
    raise ValueError(f"features must be [n_rows, N, D], got shape {feats.shape}")
  n_rows, n, _ = feats.shape
  classes, y = _encode_labels(labels)
  if y.size != n:
    raise ValueError(f"labels has {y.size} entries, features has {n} examples")
  if classes.size < 2:
    raise ValueError("probing needs at least 2 distinct labels")
  if steps < 1 or l2 < 0:
    raise ValueError(f"need steps >= 1 and l2 >= 0, got steps={steps}, l2={l2}")
  tr, te = _check_split(n, train_idx, test_idx)
  n_classes = int(classes.size)
  y_ctrl = control_labels(y, seed=seed, types=control_types).astype(np.int32)

  x = jnp.asarray(feats, dtype=jnp.float32)
  ys = jnp.asarray(np.stack([y[tr], y_ctrl[tr]]))
  logits_tr, logits_te, final_loss, steps_taken = _fit_all_jit(
    x[:, tr],
    x[:, te],
    ys,
    jnp.float32(l2),
    n_classes=n_classes,
    steps=int(steps),
    method=method,
    learning_rate=float(learning_rate),
    tol=float(tol),
  )
  pred_tr = np.asarray(jnp.argmax(logits_tr, axis=-1))  # [2, n_rows, Ntr]
  pred_te = np.asarray(jnp.argmax(logits_te, axis=-1))
  final_loss = np.asarray(final_loss)
  steps_taken = np.asarray(steps_taken)

  # Accuracies from integer counts, so the Wilson intervals use the exact numerators.
  def acc_ci(pred, target):
    k = (pred == target[None, :]).sum(axis=1)
    m = target.size
    ci = np.array([wilson_interval(int(ki), m, confidence) for ki in k])
    return k / m, ci

  train_acc, _ = acc_ci(pred_tr[0], y[tr])
  test_acc, test_ci = acc_ci(pred_te[0], y[te])
  ctrl_train_acc, _ = acc_ci(pred_tr[1], y_ctrl[tr])
  ctrl_acc, ctrl_ci = acc_ci(pred_te[1], y_ctrl[te])
  majority = int(np.bincount(y[tr], minlength=n_classes).argmax())

  return ProbeResults(
    train_accuracy=train_acc,
    test_accuracy=test_acc,
    test_ci=test_ci,
    control_train_accuracy=ctrl_train_acc,
    control_accuracy=ctrl_acc,
    control_ci=ctrl_ci,
    selectivity=test_acc - ctrl_acc,
    final_loss=final_loss[0],
    steps_taken=steps_taken[0],
    n_train=int(tr.size),
    n_test=int(te.size),
    n_classes=n_classes,
    classes=list(classes),
    majority_baseline=float(np.mean(y[te] == majority)),
    config={
      "l2": float(l2),
      "steps": int(steps),
      "tol": float(tol),
      "seed": int(seed),
      "method": method,
      "learning_rate": float(learning_rate) if method == "adam" else None,
      "control": "per_type" if control_types is not None else "permuted_labels",
      "confidence": confidence,
    },
  )


# ---------------------------------------------------------------------------------------------------------
# Lexical baseline


def bag_of_tokens(token_ids_per_example: Sequence[Sequence[int]], vocab: np.ndarray | None = None):
  """Count matrix [N, V] over `vocab` (sorted token ids); ids outside `vocab` are ignored. Returns (X, vocab)."""
  seqs = [np.asarray(s, dtype=np.int64).ravel() for s in token_ids_per_example]
  if vocab is None:
    vocab = np.unique(np.concatenate(seqs)) if seqs else np.zeros(0, np.int64)
  x = np.zeros((len(seqs), vocab.size), dtype=np.float32)
  for i, s in enumerate(seqs):
    if s.size == 0 or vocab.size == 0:
      continue
    pos = np.clip(np.searchsorted(vocab, s), 0, vocab.size - 1)
    hit = vocab[pos] == s
    np.add.at(x[i], pos[hit], 1.0)
  return x, vocab


def lexical_baseline(
  token_ids_per_example: Sequence[Sequence[int]],
  labels,
  split: tuple,
  *,
  l2: float = 1e-3,
  steps: int = 300,
  confidence: float = 0.95,
  return_correct: bool = False,
) -> dict:
  """Accuracy of predicting the label from the bag of input token ids alone (order ignored).

  A logistic-regression probe on token counts, vocabulary taken from the train split only (test-only ids
  carry no weight). This is roughly what a layer-0 probe can exploit: if the operator symbol is in the
  prompt, this baseline is ~100% and a 100% layer-0 probe shows nothing about computation.
  split: (train_idx, test_idx). `return_correct`: also `correct`, one bool per test example (paired tests).
  """
  train_idx, test_idx = split
  seqs = list(token_ids_per_example)
  classes, y = _encode_labels(labels)
  if y.size != len(seqs):
    raise ValueError(f"labels has {y.size} entries, token_ids_per_example has {len(seqs)}")
  tr, te = _check_split(len(seqs), train_idx, test_idx)
  _, vocab = bag_of_tokens([seqs[i] for i in tr])
  x, _ = bag_of_tokens(seqs, vocab)
  if vocab.size == 0:
    # No tokens at all: only the class prior is available.
    pred_te = np.full(te.size, np.bincount(y[tr], minlength=classes.size).argmax())
    pred_tr = np.full(tr.size, pred_te[0])
  else:
    logits_tr, logits_te, _, _ = _fit_all_jit(
      jnp.asarray(x[tr])[None],
      jnp.asarray(x[te])[None],
      jnp.asarray(y[tr])[None],
      jnp.float32(l2),
      n_classes=int(classes.size),
      steps=int(steps),
      method="adam",
      learning_rate=1e-2,
      tol=1e-5,
    )
    pred_tr = np.asarray(jnp.argmax(logits_tr[0, 0], axis=-1))
    pred_te = np.asarray(jnp.argmax(logits_te[0, 0], axis=-1))
  out = accuracy_summary(pred_te == y[te], confidence)
  out["train_accuracy"] = float(np.mean(pred_tr == y[tr]))
  out["vocab_size"] = int(vocab.size)
  out["method"] = "bag_of_tokens_logreg"
  if return_correct:
    out["correct"] = (pred_te == y[te]).tolist()
  return out
