"""The dual-reward loss (DESIGN.md §2).

total = w * classifier_loss + (1 - w) * answer_loss
- classifier_loss: cross-entropy of lens(h_L) at the readout position (last prompt token) against the class
  token, softmax over the full vocabulary (or over the class tokens only with restrict_to_classes).
- answer_loss: shifted next-token cross-entropy at the final layer over the answer tokens only; the batch
  gives, per answer token j, the position whose logits predict it (`answer_pos`) and the token (`answer_target`).
The answer logits are computed only at those positions, never over the whole sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lazarus_jax.models.model import LlamaModel, residual_stream
from lazarus_jax.models.sharding import constrain


def gather_rows(h, index):
  """h [B,T,D], index [B] or [B,A] -> h at those positions, [B,D] or [B,A,D]."""
  if index.ndim == 1:
    return jnp.take_along_axis(h, index[:, None, None], axis=1)[:, 0]
  return jnp.take_along_axis(h, index[..., None], axis=1)


def classifier_terms(cls_logits, label, class_token_ids, restrict_to_classes: bool):
  """Per-example classifier loss and predictions from lens logits [B,V] at layer L."""
  class_logits = cls_logits[:, class_token_ids]  # [B,C]
  target_token = class_token_ids[label]
  if restrict_to_classes:
    logp = jax.nn.log_softmax(class_logits, axis=-1)
    loss = -jnp.take_along_axis(logp, label[:, None], axis=1)[:, 0]
  else:
    logp = jax.nn.log_softmax(cls_logits, axis=-1)
    loss = -jnp.take_along_axis(logp, target_token[:, None], axis=1)[:, 0]
  class_pred = jnp.argmax(class_logits, axis=-1)
  vocab_pred = jnp.argmax(cls_logits, axis=-1)
  confidence = jax.nn.softmax(cls_logits, axis=-1)[jnp.arange(label.shape[0]), class_token_ids[class_pred]]
  return loss, class_pred, vocab_pred == target_token, confidence


def answer_terms(answer_logits, answer_target, answer_weight):
  """Summed weighted token cross-entropy, the weight sum, and summed token accuracy."""
  logp = jax.nn.log_softmax(answer_logits, axis=-1)
  nll = -jnp.take_along_axis(logp, answer_target[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(answer_logits, axis=-1) == answer_target).astype(jnp.float32)
  return (nll * answer_weight).sum(), answer_weight.sum(), (correct * answer_weight).sum()


def dual_reward_loss(
  model: LlamaModel, batch: dict, class_token_ids, classifier_layer: int, weight, restrict_to_classes: bool = False, answer_tokens=None
):
  """Returns (total, aux). `weight` is an array (changing it does not recompile).

  answer_tokens: what the summed answer NLL is divided by; default this batch's answer-token count. With
  gradient accumulation the step passes (tokens in the whole batch) / (micro-batches), so that the mean of the
  micro-batch losses is the whole batch's token-weighted mean, not a mean of per-micro-batch means."""
  residual = residual_stream(model, batch["tokens"], batch["mask"])  # [n+1,B,T,D]
  h_l = gather_rows(residual[classifier_layer + 1], batch["readout"])  # [B,D] after block L
  h_answer = gather_rows(residual[-1], batch["answer_pos"])  # [B,A,D] final layer
  # One unembedding for both readouts: the [V,D] matrix is the largest tensor the step touches, and one
  # [B+B*A, V] matmul (and one in the backward) streams it half as often as two.
  b, a, d = h_answer.shape
  rows = constrain(jnp.concatenate([h_l, h_answer.reshape(b * a, d)], axis=0), ("batch", "act_embed"))
  logits = model.lens(rows)
  cls_logits, answer_logits = logits[:b], logits[b:].reshape(b, a, -1)
  cls_loss, class_pred, vocab_correct, confidence = classifier_terms(cls_logits, batch["label"], class_token_ids, restrict_to_classes)
  nll_sum, n_answer, correct_sum = answer_terms(answer_logits, batch["answer_target"], batch["answer_weight"])
  classifier_loss = cls_loss.mean()
  if answer_tokens is None:
    answer_tokens = n_answer
  answer_tokens = jnp.maximum(answer_tokens, 1.0)
  answer_loss = nll_sum / answer_tokens
  total = weight * classifier_loss + (1.0 - weight) * answer_loss
  aux = {
    "loss": total,
    "classifier_loss": classifier_loss,
    "answer_loss": answer_loss,
    "classifier_accuracy": (class_pred == batch["label"]).mean(),
    "classifier_vocab_accuracy": vocab_correct.mean(),
    "classifier_confidence": confidence.mean(),
    "answer_token_accuracy": correct_sum / answer_tokens,
  }
  return total, aux
