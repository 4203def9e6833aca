"""GRPO: the third objective (`--config.train.objective=grpo`), on the same LoRA adapters, data and checkpoints.

One round (= one `train.steps` step) on `train.batch_size` training prompts:
1. rollout (jitted): G = `grpo.group_size` completions per prompt, sampled with the model's own KV-cache decoding
   (`generate.decode`: temperature, top-p), then the completions' log-probabilities under the reference (the same
   weights with the adapters off: no second copy) and, when mu > 1, under the sampling policy ("old");
2. rewards (host): 1 for the exact integer answer (`generate.parse_integer`, as evaluation scores it), plus
   `grpo.format_weight` for a completion that is exactly an integer followed by EOS;
3. update (jitted): advantages normalised within each group, then mu = `grpo.updates_per_batch` optimizer steps
   on the clipped-ratio objective with a k3 KL penalty to the reference.

Loss aggregation (`grpo.aggregation`): "token" (default, DAPO): the per-token terms averaged over every
completion token of the batch, so long and short completions weigh each token alike; "sequence" (the original
GRPO): each completion's token mean, then the mean over completions; "constant" (Dr. GRPO): the token sum over
(completions x max_new_tokens). `grpo.scale_rewards=False` drops the division by the group's std (Dr. GRPO).

The lens reward (`classifier.weight` = w > 0): r_lens = log p(class word | lens at layer L, readout position).
The readout is the last prompt token, which no completion can change: r_lens is the same for all G completions
of a prompt, so its group-normalised advantage is exactly 0 and its score-function gradient vanishes. Its whole
gradient is the pathwise one, the gradient of the dual-reward classifier term itself; the objective is therefore
  loss = (1 - w) * clipped_policy_loss + w * classifier_loss(lens at L)   (classifier_loss = -mean r_lens),
which is dual-reward training with the answer loss replaced by the RL objective.
"""

from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lazarus_jax.config import AGGREGATIONS, GRPOConfig  # noqa: F401  (GRPO's typed config, re-exported here)
from lazarus_jax.models import generate
from lazarus_jax.models.model import residual_stream
from lazarus_jax.models.sharding import constrain
from lazarus_jax.training.losses import classifier_terms

INTEGER_ONLY = re.compile(r"\s*-?\d+\s*")  # the format reward's completion: an integer alone (then EOS)


# ---- the objective (pure functions; tests compare them with a float64 numpy reference) -----------------


def group_advantages(rewards, group_size: int, scale: bool, eps: float = 1e-4):
  """rewards [N] (N = prompts x G, each prompt's G completions adjacent) -> advantages [N]:
  r - mean(group), divided by (std(group) + eps) when `scale` (population std, ddof 0)."""
  r = rewards.reshape(-1, group_size)
  centred = r - r.mean(axis=1, keepdims=True)
  if scale:
    centred = centred / (r.std(axis=1, keepdims=True) + eps)
  return centred.reshape(-1)


def aggregate(per_token, mask, aggregation: str):
  """per_token, mask [N, T] -> the scalar loss (module docstring: token | sequence | constant)."""
  masked = per_token * mask
  if aggregation == "token":
    return masked.sum() / jnp.maximum(mask.sum(), 1.0)
  if aggregation == "sequence":
    return (masked.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)).mean()
  if aggregation == "constant":
    return masked.sum() / (mask.shape[0] * mask.shape[1])
  raise ValueError(f"unknown aggregation {aggregation!r}")


def policy_loss(logp, old_logp, ref_logp, advantages, mask, cfg: GRPOConfig):
  """The clipped-ratio objective with the KL penalty, aggregated; (loss, aux) with the clip fraction and KL.

  logp/old_logp/ref_logp/mask [N, T] (ref_logp None when kl_beta = 0), advantages [N]. Per token:
    -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + beta * (exp(ref - logp) - (ref - logp) - 1)
  """
  adv = advantages[:, None]
  ratio = jnp.exp(logp - old_logp)
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high) * adv
  per_token = -jnp.minimum(unclipped, clipped)
  n_tokens = jnp.maximum(mask.sum(), 1.0)
  aux = {"clip_fraction": ((clipped < unclipped) * mask).sum() / n_tokens, "ratio_mean": (ratio * mask).sum() / n_tokens}
  if ref_logp is not None and cfg.kl_beta > 0:
    delta = ref_logp - logp
    kl = jnp.exp(delta) - delta - 1.0
    per_token = per_token + cfg.kl_beta * kl
    aux["kl"] = (kl * mask).sum() / n_tokens
  return aggregate(per_token, mask, cfg.aggregation), aux


def completion_mask(completion, eos_id: int | None):
  """1 on each completion's tokens up to and including its first EOS, 0 after (float32 [N, T])."""
  if eos_id is None:
    return jnp.ones(completion.shape, jnp.float32)
  is_eos = (completion == eos_id).astype(jnp.int32)
  before = jnp.cumsum(is_eos, axis=1) - is_eos  # EOS tokens strictly before this column
  return (before == 0).astype(jnp.float32)


# ---- rewards (host) ----------------------------------------------------------------------------------


def answer_rewards(texts, ended, answers, format_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(rewards, correct, well_formed) float arrays [N]. correct: the completion's integer (`parse_integer`) is the
  answer, as evaluation scores it; well_formed: the completion is exactly an integer and ended with EOS."""
  correct = np.array([generate.exact_match(t, a) for t, a in zip(texts, answers)], np.float64)
  formed = np.array([bool(e and INTEGER_ONLY.fullmatch(t)) for t, e in zip(texts, ended)], np.float64)
  return correct + format_weight * formed, correct, formed


# ---- on-device pieces ----------------------------------------------------------------------------------


def sequences(prompts, prompt_mask, completion, cmask):
  """The prompt (left-padded) and completion as one sequence: tokens, mask and RoPE positions [N, P+T] (positions
  count real tokens, as `generate.decode` gave them while sampling)."""
  tokens = jnp.concatenate([prompts, completion], axis=1)
  mask = jnp.concatenate([prompt_mask, cmask.astype(prompt_mask.dtype)], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  return tokens, mask, positions


def completion_terms(model, batch, temperature: float, classifier_layer: int):
  """One forward pass over prompt + completion. Returns the completion tokens' log-probabilities [N, T] and
  entropies [N, T] under softmax(logits / temperature), and the lens logits at layer L at the readout [N, V]."""
  completion = batch["completion"]
  n, t = completion.shape
  p = batch["prompts"].shape[1]
  tokens, mask, positions = sequences(batch["prompts"], batch["prompt_mask"], completion, batch["completion_mask"])
  residual = residual_stream(model, tokens, mask, positions)
  h_l = residual[classifier_layer + 1][:, p - 1]  # [N, D]: the readout (the last prompt column: left padding)
  h_out = residual[-1][:, p - 1 : p - 1 + t]  # [N, T, D]: logits at column c predict the token at c + 1
  d = h_l.shape[-1]
  # One unembedding for both readouts (as in losses.dual_reward_loss).
  rows = constrain(jnp.concatenate([h_l, h_out.reshape(n * t, d)], axis=0), ("batch", "act_embed"))
  logits = model.lens(rows)
  lens_l, logits = logits[:n], logits[n:].reshape(n, t, -1) / temperature
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logp_all, completion[..., None], axis=-1)[..., 0]
  entropy = -(jnp.exp(logp_all) * logp_all).sum(axis=-1)
  return logp, entropy, lens_l


def make_rollout(graphdef, cfg: GRPOConfig, eos_id: int | None, pad_id: int, classifier_layer: int):
  """`(lora, base, rest, prompts, prompt_mask, rng) -> (batch, next_rng)`: sampling and the no-gradient passes."""
  g = cfg.group_size

  def rollout(lora, base, rest, prompts, prompt_mask, rng):
    key = jax.random.wrap_key_data(rng)
    next_key, sample_key = jax.random.split(key)
    model = nnx.merge(graphdef, base, lora, rest)
    params, lora_range, lora_scale = generate.model_params(model)
    prompts, prompt_mask = jnp.repeat(prompts, g, axis=0), jnp.repeat(prompt_mask, g, axis=0)  # groups adjacent
    completion = generate.decode(
      params,
      prompts,
      prompt_mask,
      jnp.int32(-1 if eos_id is None else eos_id),
      jnp.int32(pad_id),
      sample_key,
      cfg=model.cfg,
      lora_range=lora_range,
      lora_scale=lora_scale,
      max_new_tokens=cfg.max_new_tokens,
      temperature=cfg.temperature,
      top_p=cfg.top_p,
    )
    batch = {
      "prompts": prompts,
      "prompt_mask": prompt_mask,
      "completion": completion,
      "completion_mask": completion_mask(completion, eos_id),
    }
    if cfg.updates_per_batch > 1:  # mu = 1: the old policy is the current one (its log-prob, stop-gradient)
      batch["old_logp"] = completion_terms(model, batch, cfg.temperature, classifier_layer)[0]
    if cfg.kl_beta > 0:
      model.lora = nnx.data(None)  # the reference: the same weights, adapters off
      batch["ref_logp"] = completion_terms(model, batch, cfg.temperature, classifier_layer)[0]
    return batch, jax.random.key_data(next_key)

  return rollout


def make_loss(graphdef, cfg: GRPOConfig, classifier_layer: int, restrict_to_classes: bool):
  """`(lora, base, rest, batch, weight, class_ids) -> (loss, aux)`: (1 - w) * the clipped policy loss + w * the lens
  classifier loss at L (module docstring). `batch` holds the rollout and the advantages [N]."""

  def loss_fn(lora, base, rest, batch, weight, class_ids):
    model = nnx.merge(graphdef, base, lora, rest)
    logp, entropy, lens_l = completion_terms(model, batch, cfg.temperature, classifier_layer)
    old = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
    pg, aux = policy_loss(logp, old, batch.get("ref_logp"), batch["advantages"], batch["completion_mask"], cfg)
    cls_loss, class_pred, vocab_correct, confidence = classifier_terms(lens_l, batch["label"], class_ids, restrict_to_classes)
    classifier_loss = cls_loss.mean()
    total = (1.0 - weight) * pg + weight * classifier_loss
    n_tokens = jnp.maximum(batch["completion_mask"].sum(), 1.0)
    aux.update(
      loss=total,
      policy_loss=pg,
      classifier_loss=classifier_loss,
      lens_logprob=-classifier_loss,
      classifier_accuracy=(class_pred == batch["label"]).mean(),
      classifier_vocab_accuracy=vocab_correct.mean(),
      classifier_confidence=confidence.mean(),
      entropy=(entropy * batch["completion_mask"]).sum() / n_tokens,
    )
    return total, aux

  return loss_fn


def make_update(graphdef, tx, schedule, cfg: GRPOConfig, classifier_layer: int, restrict_to_classes: bool):
  """`(state, base, rest, batch, rewards, weight, class_ids) -> (state, metrics)`: advantages, then mu optimizer steps
  on the same batch. Only the adapters are differentiated; a non-finite step is skipped and counted (as in SFT)."""
  grad_fn = jax.value_and_grad(make_loss(graphdef, cfg, classifier_layer, restrict_to_classes), has_aux=True)

  def update(state, base, rest, batch, rewards, weight, class_ids):
    batch = dict(batch, advantages=group_advantages(rewards, cfg.group_size, cfg.scale_rewards))

    def one_step(state, _):
      (_, aux), grads = grad_fn(state["lora"], base, rest, batch, weight, class_ids)
      grad_norm = optax.tree.norm(grads)
      finite = jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
      updates, opt_state = tx.update(grads, state["opt_state"], state["lora"])
      lora = optax.apply_updates(state["lora"], updates)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
      metrics = dict(aux, grad_norm=grad_norm, learning_rate=schedule(state["opt_step"]), skipped=1 - finite.astype(jnp.int32))
      return dict(
        state,
        lora=keep(lora, state["lora"]),
        opt_state=keep(opt_state, state["opt_state"]),
        opt_step=state["opt_step"] + 1,
        nonfinite=jnp.where(finite, 0, state["nonfinite"] + 1),
        skipped=state["skipped"] + (1 - finite.astype(jnp.int32)),
      ), metrics

    state, per_update = jax.lax.scan(one_step, state, None, length=cfg.updates_per_batch)
    metrics = jax.tree.map(lambda x: x.mean(axis=0), per_update)
    metrics["skipped"] = per_update["skipped"].sum()
    r = rewards.reshape(-1, cfg.group_size)
    metrics.update(
      reward_mean=rewards.mean(),
      reward_std=rewards.std(),
      reward_group_std=r.std(axis=1).mean(),
      flat_groups=(r.std(axis=1) == 0).mean(),
      response_length=batch["completion_mask"].sum(axis=1).mean(),
    )
    return dict(state, step=state["step"] + 1), metrics

  return update


# ---- one round on the host ----------------------------------------------------------------------------


class Rounds:
  """The GRPO round as the training loop sees it: `compile(state)` once, then `state, metrics = self(state, step)`.

  `prompt_batch(step)` gives the round's global batch (prompts [B, P] and prompt_mask as global arrays, and the
  answers and labels of every row on the host); `reward_fn(texts, ended, answers, ids) -> (rewards, correct,
  well_formed)` scores completions (default `answer_rewards`; tests pass a toy reward).
  """

  def __init__(self, cfg: GRPOConfig, rollout, update, shardings: dict, tokenizer, prompt_batch, reward_fn=None):
    self.cfg, self.tokenizer, self.prompt_batch = cfg, tokenizer, prompt_batch
    self.reward_fn = reward_fn or (lambda texts, ended, answers, ids: answer_rewards(texts, ended, answers, cfg.format_weight))
    s = shardings
    self._rollout_jit = jax.jit(
      rollout,
      in_shardings=(s["lora"], s["base"], None, s["batch"], s["batch"], s["replicated"]),
      out_shardings=(s["batch"], s["replicated"]),
    )
    self._update_jit = jax.jit(
      update,
      in_shardings=(s["state"], s["base"], None, s["batch"], s["batch"], s["replicated"], s["replicated"]),
      out_shardings=(s["state"], s["replicated"]),
      donate_argnums=(0,),
    )
    self.batch_sharding = s["batch"]
    self.base = self.rest = self.weight = self.class_ids = None

  def compile(self, state, base, rest, weight, class_ids, step: int):
    """Compiles both halves ahead of time (a shape or memory error fails before the loop); returns the seconds."""
    t0 = time.perf_counter()
    self.base, self.rest, self.weight, self.class_ids = base, rest, weight, class_ids
    prompts = self.prompt_batch(step)
    self._rollout = self._rollout_jit.lower(
      state["lora"], base, rest, prompts["prompts"], prompts["prompt_mask"], state["rng"]
    ).compile()
    batch_shape, _ = jax.eval_shape(
      self._rollout_jit, state["lora"], base, rest, prompts["prompts"], prompts["prompt_mask"], state["rng"]
    )
    batch_shape = dict(batch_shape, label=jax.ShapeDtypeStruct(batch_shape["prompts"].shape[:1], jnp.int32))
    n = batch_shape["completion"].shape[0]
    shaped = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding) for k, v in batch_shape.items()}
    rewards = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=self.batch_sharding)
    self._update = self._update_jit.lower(state, base, rest, shaped, rewards, weight, class_ids).compile()
    return time.perf_counter() - t0

  def __call__(self, state, step: int):
    t0 = time.perf_counter()
    prompts = self.prompt_batch(step)
    batch, next_rng = self._rollout(state["lora"], self.base, self.rest, prompts["prompts"], prompts["prompt_mask"], state["rng"])
    completion = np.asarray(_to_host(batch["completion"]))
    cmask = np.asarray(_to_host(batch["completion_mask"]))
    g = self.cfg.group_size
    eos = self.tokenizer.eos_id
    texts, ended, ids = [], [], []
    for row, m in zip(completion, cmask):
      ids.append(row[: int(m.sum())].tolist())
      ended.append(eos is not None and eos in ids[-1])
      texts.append(self.tokenizer.decode([i for i in ids[-1] if i != eos]))
    answers = [a for a in prompts["answers"] for _ in range(g)]
    rewards, correct, formed = self.reward_fn(texts, ended, answers, ids)
    labels = np.repeat(np.asarray(prompts["label_host"]), g)
    batch["label"] = _global(labels.astype(np.int32), self.batch_sharding)
    rewards_dev = _global(np.asarray(rewards, np.float32), self.batch_sharding)
    state = dict(state, rng=next_rng)
    t1 = time.perf_counter()  # the rollout is done: its completions are on the host
    state, metrics = self._update(state, self.base, self.rest, batch, rewards_dev, self.weight, self.class_ids)
    jax.block_until_ready(state["step"])  # the next round needs the state anyway: timing it costs nothing
    t2 = time.perf_counter()
    metrics = dict(
      metrics,
      answer_accuracy=float(np.mean(correct)),
      well_formed=float(np.mean(formed)),
      samples=len(texts),
      round_seconds=t2 - t0,
      rollout_seconds=t1 - t0,
      update_seconds=t2 - t1,
    )
    return state, metrics


def _to_host(x):
  if jax.process_count() == 1:
    return jax.device_get(x)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(x, tiled=True)


def _global(values: np.ndarray, sharding):
  """A global array from the same host values on every process (rewards are computed from all completions)."""
  return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])
