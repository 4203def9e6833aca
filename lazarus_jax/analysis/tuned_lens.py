"""A tuned lens (Belrose et al. 2023) at the readout position: one affine translator per residual row.

Row r's translator maps h to h + A_r h + b_r (A_r [D, D], b_r [D]; zero-initialised, so before training it IS the
logit lens), and is trained so that lens(h + A_r h + b_r) matches the model's own final distribution at the
readout (KL(final || translated)), on training prompts only. Held-out prompts measure it.

Vocabulary. The readout of an arithmetic prompt puts its mass on a few hundred tokens (digits, spaces); a softmax
over SmolLM2's 49152 tokens for every row, prompt and step costs minutes of CPU per model. So the distributions
are compared over `vocab_ids` (`answer_vocabulary`: the union of each training prompt's top final-layer tokens, plus
the class tokens), both renormalised there; `coverage` reports the final distribution's mass inside that set on the
held-out prompts. `vocab_ids=None` uses the whole vocabulary. The logit lens is scored over the same set.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lazarus_jax.models.model import rms_norm


def answer_vocabulary(final_logits: np.ndarray, top_k: int, extra_ids: Sequence[int] = ()) -> np.ndarray:
  """Sorted token ids: each row's `top_k` final-layer tokens, united, plus `extra_ids` (the class tokens)."""
  top = np.argpartition(-np.asarray(final_logits), top_k - 1, axis=-1)[:, :top_k]
  return np.unique(np.concatenate([top.ravel(), np.asarray(extra_ids, int)]))


def init_translators(n_rows: int, dim: int) -> dict:
  """Zero translators (A = 0, b = 0): every row starts as the logit lens."""
  return {"a": jnp.zeros((n_rows, dim, dim), jnp.float32), "b": jnp.zeros((n_rows, dim), jnp.float32)}


def translate(params: dict, hidden):
  """hidden [R, N, D] -> h + A_r h + b_r per row r (float32)."""
  h = hidden.astype(jnp.float32)
  return h + jnp.einsum("rnd,rde->rne", h, params["a"]) + params["b"][:, None, :]


def lens_logits_subset(final_norm, unembed_rows, eps: float, h):
  """The logit lens restricted to some vocabulary rows: unembed_rows [V', D] (float32)."""
  return rms_norm(h, final_norm, eps, jnp.float32) @ unembed_rows.T


def _kl(target_logits, logits):
  """KL(softmax(target) || softmax(logits)) over the last axis, nats."""
  lp, lq = jax.nn.log_softmax(target_logits, -1), jax.nn.log_softmax(logits, -1)
  return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


@functools.partial(jax.jit, static_argnames=("eps", "steps", "learning_rate", "weight_decay"))
def _fit(params, hidden, target_logits, final_norm, unembed_rows, *, eps, steps, learning_rate, weight_decay):
  tx = optax.adamw(learning_rate, weight_decay=weight_decay, mask={"a": True, "b": False})

  def loss_fn(p):
    logits = lens_logits_subset(final_norm, unembed_rows, eps, translate(p, hidden))  # [R, N, V']
    return jnp.sum(jnp.mean(_kl(target_logits[None], logits), axis=1))  # rows are independent: a sum

  def step(carry, _):
    p, opt = carry
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), loss

  (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return params, losses


def fit(
  hidden: np.ndarray,
  final_logits: np.ndarray,
  final_norm,
  unembed_rows,
  eps: float,
  steps: int = 200,
  learning_rate: float = 1e-3,
  weight_decay: float = 0.0,
) -> tuple[dict, np.ndarray]:
  """Trains one translator per row of hidden [R, N, D] (training prompts' readout rows) against final_logits
  [N, V'] (the model's final logits over the same vocabulary). Full-batch AdamW. Returns (params, loss per step:
  the sum over rows of the mean KL)."""
  r, _, d = hidden.shape
  params, losses = _fit(
    init_translators(r, d),
    jnp.asarray(hidden, jnp.float32),
    jnp.asarray(final_logits, jnp.float32),
    jnp.asarray(final_norm, jnp.float32),
    jnp.asarray(unembed_rows, jnp.float32),
    eps=float(eps),
    steps=int(steps),
    learning_rate=float(learning_rate),
    weight_decay=float(weight_decay),
  )
  return params, np.asarray(losses)


@jax.jit
def _scores(params, hidden, target_logits, final_norm, unembed_rows, eps, class_pos):
  logit = lens_logits_subset(final_norm, unembed_rows, eps, hidden.astype(jnp.float32))
  tuned = lens_logits_subset(final_norm, unembed_rows, eps, translate(params, hidden))
  top = jnp.argmax(target_logits, -1)

  def stats(logits):
    return {
      "kl": jnp.mean(_kl(target_logits[None], logits), axis=1),
      "top1_agreement": jnp.mean(jnp.argmax(logits, -1) == top[None], axis=1),
      "class_pred": jnp.argmax(jnp.take(logits, class_pos, axis=-1), -1),
    }

  return {"logit": stats(logit), "tuned": stats(tuned)}


def evaluate(
  params: dict,
  hidden: np.ndarray,
  final_logits_full: np.ndarray,
  vocab_ids: np.ndarray,
  final_norm,
  unembed,
  eps: float,
  class_ids: Sequence[int],
  labels: np.ndarray,
) -> list[dict]:
  """Per row, the logit lens beside the tuned lens on held-out readout rows hidden [R, N, D]: mean KL from the
  final distribution (over `vocab_ids`), top-1 agreement with the final layer's argmax (over `vocab_ids`), and the
  class accuracy (argmax over the class tokens equals the label `labels` [N])."""
  vocab_ids = np.asarray(vocab_ids)
  class_pos = np.searchsorted(vocab_ids, np.asarray(class_ids))
  assert np.array_equal(vocab_ids[class_pos], np.asarray(class_ids)), "class tokens must be in the vocabulary"
  unembed_rows = np.asarray(jax.device_get(unembed), np.float32)[vocab_ids]
  target = np.asarray(final_logits_full, np.float32)[:, vocab_ids]
  out = jax.device_get(
    _scores(
      params,
      jnp.asarray(hidden),
      jnp.asarray(target),
      jnp.asarray(final_norm, jnp.float32),
      jnp.asarray(unembed_rows),
      jnp.float32(eps),
      jnp.asarray(class_pos),
    )
  )
  rows = []
  for r in range(hidden.shape[0]):
    entry = {"row": r, "layer": r - 1 if r > 0 else None}
    for name in ("logit", "tuned"):
      entry[name] = {
        "kl": float(out[name]["kl"][r]),
        "top1_agreement": float(out[name]["top1_agreement"][r]),
        "class_accuracy": float(np.mean(out[name]["class_pred"][r] == labels)),
      }
    rows.append(entry)
  return rows


def coverage(final_logits_full: np.ndarray, vocab_ids: np.ndarray) -> float:
  """Mean final-distribution probability mass inside `vocab_ids`."""
  x = np.asarray(final_logits_full, np.float64)
  x = x - x.max(-1, keepdims=True)
  p = np.exp(x)
  p /= p.sum(-1, keepdims=True)
  return float(np.mean(p[:, np.asarray(vocab_ids)].sum(-1)))
