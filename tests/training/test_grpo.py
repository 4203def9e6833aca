"""GRPO (`train.objective=grpo`): the objective against a float64 numpy reference, the REINFORCE limit, learning a toy
reward end to end on the tiny model, and exact resumption (the sampling RNG included)."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lazarus_jax import settings
from lazarus_jax.models.generate import pick_token
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import LlamaConfig, LlamaModel, LoRAParam
from lazarus_jax.models.padding import pad_prompts
from lazarus_jax.training import grpo
from lazarus_jax.training import loop as train

from tiny_runs import restore_final, sigterm_after_step, tiny_config

# ---- float64 numpy reference ---------------------------------------------------------------------------


def np_advantages(rewards, g, scale, eps=1e-4):
  out = np.empty_like(rewards)
  for start in range(0, len(rewards), g):
    r = rewards[start : start + g]
    a = r - r.mean()
    out[start : start + g] = a / (np.sqrt(((r - r.mean()) ** 2).mean()) + eps) if scale else a
  return out


def np_loss(logp, old, ref, adv, mask, clip_low, clip_high, beta, aggregation):
  n, t = logp.shape
  per = np.zeros((n, t))
  for i in range(n):
    for j in range(t):
      ratio = np.exp(logp[i, j] - old[i, j])
      per[i, j] = -min(ratio * adv[i], min(max(ratio, 1 - clip_low), 1 + clip_high) * adv[i])
      if beta:
        per[i, j] += beta * (np.exp(ref[i, j] - logp[i, j]) - (ref[i, j] - logp[i, j]) - 1)
  if aggregation == "token":
    return (per * mask).sum() / mask.sum()
  if aggregation == "sequence":
    return np.mean([(per[i] * mask[i]).sum() / mask[i].sum() for i in range(n)])
  return (per * mask).sum() / (n * t)


@pytest.mark.parametrize("aggregation", grpo.AGGREGATIONS)
@pytest.mark.parametrize("scale", [True, False])
def test_advantages_and_loss_match_float64_reference(aggregation, scale):
  rng = np.random.default_rng(0)
  g, n_prompts, t = 4, 3, 5
  n = g * n_prompts
  rewards = rng.integers(0, 2, n).astype(np.float64) + 0.5 * rng.integers(0, 2, n)
  rewards[:g] = 1.0  # a group where every completion scored alike: advantage 0
  logp = rng.normal(-2, 1, (n, t))
  old = logp + rng.normal(0, 0.3, (n, t))  # ratios far enough from 1 that both clip edges are hit
  ref = logp + rng.normal(0, 0.5, (n, t))
  lengths = rng.integers(1, t + 1, n)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
  cfg = grpo.GRPOConfig(group_size=g, clip_low=0.2, clip_high=0.28, kl_beta=0.04, aggregation=aggregation, scale_rewards=scale)

  adv = grpo.group_advantages(jnp.asarray(rewards, jnp.float32), g, scale)
  want_adv = np_advantages(rewards, g, scale)
  np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(adv)[:g] == 0)

  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  loss, aux = grpo.policy_loss(f32(logp), f32(old), f32(ref), f32(want_adv), f32(mask), cfg)
  want = np_loss(logp, old, ref, want_adv, mask, 0.2, 0.28, 0.04, aggregation)
  np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-6)
  ratio = np.exp(logp - old)
  clipped = np.clip(ratio, 0.8, 1.28) * want_adv[:, None] < ratio * want_adv[:, None]
  np.testing.assert_allclose(float(aux["clip_fraction"]), (clipped * mask).sum() / mask.sum(), rtol=1e-6)
  assert 0 < float(aux["clip_fraction"]) < 1
  delta = ref - logp
  np.testing.assert_allclose(float(aux["kl"]), ((np.exp(delta) - delta - 1) * mask).sum() / mask.sum(), rtol=1e-5)


def test_completion_mask_ends_at_the_first_eos():
  completion = jnp.asarray([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
  assert np.asarray(grpo.completion_mask(completion, 2)).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_answer_rewards_score_as_evaluation_does():
  texts = ["56", "56 and more", " 56", "5", "56"]
  ended = [True, True, True, True, False]
  rewards, correct, formed = grpo.answer_rewards(texts, ended, ["56"] * 5, format_weight=0.5)
  assert correct.tolist() == [1, 1, 1, 0, 1]
  assert formed.tolist() == [1, 0, 1, 1, 0]
  assert rewards.tolist() == [1.5, 1, 1.5, 0.5, 1]


def test_top_p_keeps_the_nucleus_only():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000, jnp.float32))
  draws = np.asarray(pick_token(logits, jax.random.key(0), 1.0, 0.7))
  assert set(draws.tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3: the first two tokens
  np.testing.assert_allclose(np.mean(draws == 0), 0.5 / 0.8, atol=0.03)
  assert np.all(np.asarray(pick_token(logits[:3], jax.random.key(1), 0.0, 0.7)) == 0)  # temperature 0: greedy


# ---- mu = 1, no KL: REINFORCE with the group-mean baseline ---------------------------------------------


def test_mu1_without_kl_the_gradient_is_reinforce_with_the_group_mean_baseline():
  cfg_model = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
  model = LlamaModel(cfg_model, rngs=nnx.Rngs(params=0))
  lora = add_lora(model, LoRAConfig(rank=4, alpha=8.0), seed=1)
  for t in lora.targets:  # B != 0, so that the gradient reaches A too
    getattr(lora, f"{t}_b")[...] = 0.1 * jax.random.normal(jax.random.key(2), getattr(lora, f"{t}_b")[...].shape)
  graphdef, base, lora_state, rest = nnx.split(model, nnx.Param, LoRAParam, ...)
  base, lora_state, rest = (nnx.to_pure_dict(x) for x in (base, lora_state, rest))

  g, n_prompts, p, t = 4, 2, 5, 6
  rng = np.random.default_rng(0)
  cfg = grpo.GRPOConfig(
    group_size=g, max_new_tokens=t, temperature=0.7, kl_beta=0.0, updates_per_batch=1, scale_rewards=False, aggregation="token"
  )
  prompts, prompt_mask, _ = pad_prompts([[3, 4, 5], [6, 7, 8, 9, 10]], p, 0, left=True)
  batch = {
    "prompts": jnp.repeat(jnp.asarray(prompts), g, 0),
    "prompt_mask": jnp.repeat(jnp.asarray(prompt_mask), g, 0),
    "completion": jnp.asarray(rng.integers(3, 64, (g * n_prompts, t)), jnp.int32),
  }
  batch["completion"] = batch["completion"].at[0, 3].set(2).at[5, 1].set(2)  # two completions end early (EOS 2)
  batch["completion_mask"] = grpo.completion_mask(batch["completion"], 2)
  batch["label"] = jnp.zeros((g * n_prompts,), jnp.int32)
  rewards = jnp.asarray([1, 0, 0, 1, 0, 0, 1, 0], jnp.float32)
  batch["advantages"] = grpo.group_advantages(rewards, g, scale=False)
  loss_fn = grpo.make_loss(graphdef, cfg, classifier_layer=1, restrict_to_classes=False)
  grads = jax.jit(jax.grad(lambda lo: loss_fn(lo, base, rest, batch, jnp.float32(0.0), jnp.arange(4))[0]))(lora_state)

  def reinforce(lo):  # -sum_i (r_i - mean of its group) * log pi(y_i | x_i) / tokens, from the model's own logits
    m = nnx.merge(graphdef, base, lo, rest)
    tokens, mask, positions = grpo.sequences(batch["prompts"], batch["prompt_mask"], batch["completion"], batch["completion_mask"])
    logits = m(tokens, mask, positions)[:, p - 1 : p - 1 + t] / cfg.temperature
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), batch["completion"][..., None], -1)[..., 0]
    r = rewards.reshape(-1, g)
    baseline_adv = (r - r.mean(1, keepdims=True)).reshape(-1)
    cm = batch["completion_mask"]
    return -(baseline_adv[:, None] * logp * cm).sum() / cm.sum()

  want = jax.jit(jax.grad(reinforce))(lora_state)
  flat_got, flat_want = jax.tree.leaves(grads), jax.tree.leaves(want)
  assert max(float(jnp.abs(w).max()) for w in flat_want) > 1e-4  # a real gradient, not zeros on both sides
  for got, w in zip(flat_got, flat_want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=1e-4, atol=1e-6)


# ---- end to end on the tiny model ----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def half_vocab() -> frozenset:
  """The tokens whose (tied) embedding points along a fixed random direction: about half the tiny vocabulary."""
  emb = np.asarray(load_pretrained("tiny-random").build().embed[...])
  u = np.random.default_rng(0).normal(size=emb.shape[1])
  return frozenset(np.nonzero(emb @ u > 0)[0].tolist())


def toy_reward(texts, ended, answers, ids):
  """A toy reward the tiny random model can learn: the share of its new tokens in `half_vocab`. (Its logits have a
  std of ~0.16 -- embeddings N(0, 0.02) -- so at temperature 1 every policy it can reach is near uniform; the tests
  sample at temperature 0.1, where the adapters can move the distribution.)"""
  s = half_vocab()
  r = np.array([np.mean([i in s for i in x]) if x else 0.0 for x in ids], np.float64)
  return r, r, np.zeros_like(r)


def grpo_config(**overrides):
  c = tiny_config(
    **{
      "train.objective": "grpo",
      "grpo.group_size": 4,
      "grpo.max_new_tokens": 4,
      "train.batch_size": 8,
      "classifier.weight": 0.0,
      "grpo.kl_beta": 0.02,
      "grpo.updates_per_batch": 2,
      "grpo.temperature": 0.1,
      **overrides,
    }
  )
  return c


def read_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


STEPS = 20
ROW_KEYS = ("loss", "policy_loss", "reward_mean", "kl", "clip_fraction", "entropy", "grad_norm", "response_length")


def toy_config(**overrides):
  return grpo_config(
    **{"train.steps": STEPS, "train.lr": 3e-2, "train.checkpoint_every": 5, "train.log_every": 1, "train.warmup_steps": 2, **overrides}
  )


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("grpo_toy")
  result = train.run(toy_config(), str(workdir), reward_fn=toy_reward)
  return workdir, result


def test_reward_rises_on_a_learnable_toy_reward(toy_run):
  workdir, result = toy_run
  assert result.final_step == STEPS
  rows = read_rows(workdir)
  first, last = np.mean([r["reward_mean"] for r in rows[:5]]), np.mean([r["reward_mean"] for r in rows[-5:]])
  assert last > first + 0.3, (first, last)  # seen: 0.38 -> 0.9
  for key in (
    "reward_mean",
    "reward_std",
    "kl",
    "clip_fraction",
    "response_length",
    "entropy",
    "samples_per_s",
    "grad_norm",
    "learning_rate",
    "lens_logprob",
  ):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert rows[-1]["entropy"] < rows[0]["entropy"]  # the policy concentrates on the rewarded tokens
  assert any(r["clip_fraction"] > 0 for r in rows)  # mu = 2: the second update's ratio moves off 1
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tb"))
  table = (workdir / "training_table.md").read_text()
  assert table.startswith("| Step | Total Loss | Reward | Answer Acc | KL | Classifier Loss | Cls Accuracy |")
  with open(workdir / "train_summary.json") as f:
    assert json.load(f)["objective"] == "grpo"


def test_resume_mid_run_is_exact_including_the_sampling_rng(toy_run, tmp_path, monkeypatch):
  full_dir, _ = toy_run
  n = STEPS // 2
  with sigterm_after_step(monkeypatch, n):
    first = train.run(toy_config(), str(tmp_path), reward_fn=toy_reward)
  assert first.preempted and first.final_step == n
  resumed = train.run(toy_config(resume=True), str(tmp_path), reward_fn=toy_reward)
  assert resumed.final_step == STEPS

  step_a, state_a, _ = restore_final(full_dir)
  step_b, state_b, _ = restore_final(tmp_path)
  assert step_a == step_b == STEPS
  assert {"rng", "opt_step"} <= set(state_a)
  assert int(state_a["opt_step"]) == STEPS * 2  # mu = 2 optimizer updates per round
  for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(state_a)[0], jax.tree_util.tree_flatten_with_path(state_b)[0]):
    assert np.array_equal(np.asarray(a), np.asarray(b)), f"{jax.tree_util.keystr(path)} differs after resume"
  rows_a, rows_b = read_rows(full_dir), read_rows(tmp_path)
  assert [r["step"] for r in rows_b] == list(range(1, STEPS + 1))
  for ra, rb in zip(rows_a, rows_b):
    assert {k: ra[k] for k in ROW_KEYS} == {k: rb[k] for k in ROW_KEYS}
  # The sampling RNG advances each round: consecutive rounds do not draw the same completions.
  assert len({r["entropy"] for r in rows_a}) == STEPS


def test_warm_start_reads_the_adapter_and_checks_it(toy_run, tmp_path):
  workdir, _ = toy_run
  adapter = str(workdir / "adapter")
  _, final, _ = restore_final(workdir)
  pretrained = load_pretrained("tiny-random")
  lora_cfg = settings.parse(toy_config(**{"train.init_adapter": adapter})).lora
  with open(workdir / "train_summary.json") as f:
    split = json.load(f)["split"]
  weights = train.read_warm_start(adapter, pretrained.config, lora_cfg, split)
  assert set(weights) == set(final["lora"]["lora"])
  for k, v in weights.items():
    np.testing.assert_array_equal(v, final["lora"]["lora"][k])
  from lazarus_jax.errors import UserError

  with pytest.raises(UserError, match="rank, alpha, targets"):
    train.read_warm_start(adapter, pretrained.config, dataclasses.replace(lora_cfg, rank=2), split)
  with pytest.raises(UserError, match="another held-out split"):
    train.read_warm_start(adapter, pretrained.config, lora_cfg, dict(split, heldout_sha256="0" * 64))
  with pytest.raises(UserError, match="init_adapter"):  # before any work: the config check
    train.run(toy_config(**{"train.init_adapter": str(tmp_path / "missing")}), str(tmp_path / "run"))


def test_grpo_config_values_are_checked():
  from lazarus_jax.errors import UserError

  for field, value in (("group_size", 1), ("temperature", 0.0), ("top_p", 0.0), ("aggregation", "mean")):
    with pytest.raises(UserError, match=f"grpo.{field}"):
      dataclasses.replace(grpo.GRPOConfig(), **{field: value}).validate()
