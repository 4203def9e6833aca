"""`model.attention=blockwise` (models/blockwise.py) computes what the einsum attention computes: forward and
gradients, with padding masks, at lengths that are not a multiple of the block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lazarus_jax.models import blockwise
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import LoRAParam, attention, residual_stream
from lazarus_jax.training.losses import dual_reward_loss

from tiny_step import step_and_inputs

MIN = float(jnp.finfo(jnp.float32).min)


def _inputs(t=37, b=3, h=6, kv=2, hd=8, seed=0):
  r = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(r.standard_normal(s), jnp.float32) for s in ((b, t, h, hd), (b, t, kv, hd), (b, t, kv, hd)))
  mask = np.ones((b, t), np.int32)
  mask[1, 23:] = 0  # right-padded (the prompts' layout)
  mask[2, :5] = 0  # left-padded: its first 5 query rows see no key at all
  allowed = np.tril(np.ones((t, t), bool))[None] & (mask[:, None, :] > 0)
  bias = jnp.asarray(np.where(allowed, 0.0, MIN)[:, None, None], jnp.float32)
  # Rows with at least one allowed key; a fully masked row is a uniform average in both, but over different keys
  seen = allowed.any(-1)  # [B, T]
  return q, k, v, bias, seen


@pytest.mark.parametrize("recompute", ["custom_vjp", "checkpoint"])
@pytest.mark.parametrize("blocks", [(8, 8), (16, 8), (8, 16), (5, 7), (64, 64)])
def test_blockwise_matches_einsum_forward_and_gradients(blocks, recompute):
  q, k, v, bias, seen = _inputs()
  cot = jnp.asarray(np.random.default_rng(1).standard_normal((*seen.shape, q.shape[2] * q.shape[3])), jnp.float32)
  cot = cot * jnp.asarray(seen, jnp.float32)[..., None]  # the loss reads no fully masked row
  ref_fn = lambda q, k, v: attention(q, k, v, bias, "einsum")  # noqa: E731
  blk_fn = lambda q, k, v: blockwise.blockwise_attention(q, k, v, bias, *blocks, recompute=recompute)  # noqa: E731
  out, ref = blk_fn(q, k, v), ref_fn(q, k, v)
  assert bool(jnp.isfinite(out).all())
  np.testing.assert_allclose(np.asarray(out)[seen], np.asarray(ref)[seen], atol=2e-6, rtol=1e-5)
  grads = jax.grad(lambda *a: (blk_fn(*a) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
  ref_grads = jax.grad(lambda *a: (ref_fn(*a) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
  for g, rg, name in zip(grads, ref_grads, "qkv"):
    assert float(jnp.abs(rg).max()) > 0.1, name  # a real gradient, not zeros on both sides
    np.testing.assert_allclose(np.asarray(g), np.asarray(rg), atol=1e-5, rtol=1e-5, err_msg=name)


def test_fully_masked_rows_are_uniform_over_the_keys_seen_and_finite_in_the_backward():
  """A row with no allowed key: the forward averages v over the key blocks it visits (no NaN), and its gradient
  spreads evenly over them (the saved row statistics are max and 1/sum, not a log-sum-exp that rounds away)."""
  q, k, v, bias, seen = _inputs(t=12)
  out = blockwise.blockwise_attention(q, k, v, bias, 4, 4)  # row 2's queries 0..3 see block 0 (keys 0..3) only
  g_v = jax.grad(lambda v: blockwise.blockwise_attention(q, k, v, bias, 4, 4)[2, 0].sum())(v)
  head_v = np.asarray(v)[2, :4, 0]  # kv head 0 = query heads 0..2
  np.testing.assert_allclose(np.asarray(out)[2, 0, :8], head_v.mean(0), atol=1e-6)
  np.testing.assert_allclose(np.asarray(g_v)[2, :4, 0], np.full((4, 8), 3 / 4), atol=1e-6)  # 3 heads x 1/4
  assert float(np.abs(np.asarray(g_v)[2, 4:]).max()) == 0.0


def test_blockwise_rejects_cross_attention():
  q, k, v, bias, _ = _inputs(t=8)
  with pytest.raises(ValueError, match="self-attention"):
    blockwise.blockwise_attention(q, k[:, :4], v[:, :4], bias[..., :4])


@pytest.fixture
def small_blocks(monkeypatch):
  """Blocks of 3 (the tiny batches are 16 long: 6 blocks, the last one short) and blockwise from 4 positions up."""
  monkeypatch.setattr(blockwise, "BLOCK_Q", 3)
  monkeypatch.setattr(blockwise, "BLOCK_K", 3)
  monkeypatch.setattr(blockwise, "MIN_SEQ", 4)


TOKENS = jnp.asarray([[5, 17, 93, 41, 7, 88, 3, 12, 9, 4, 0, 0, 0, 0], [0, 0, 0, 31, 9, 120, 77, 6, 5, 1, 2, 3, 4, 8]], jnp.int32)
MASK = (TOKENS > 0).astype(jnp.int32)


def test_blockwise_model_residual_stream_matches_einsum(small_blocks):
  ref = residual_stream(load_pretrained("tiny-random", attention="einsum").build(), TOKENS, MASK)
  out = residual_stream(load_pretrained("tiny-random", attention="blockwise").build(), TOKENS, MASK)
  real = np.asarray(MASK, bool)
  assert bool(jnp.isfinite(out).all())
  np.testing.assert_allclose(np.asarray(out)[:, real], np.asarray(ref)[:, real], atol=1e-5)


def _lora_grads(attention_impl):
  pre = load_pretrained("tiny-random", attention=attention_impl)
  model = pre.build()
  add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "o"), layer_start=1), seed=0)
  graphdef, base, lora, rest = nnx.split(model, nnx.Param, LoRAParam, ...)
  base, lora, rest = nnx.to_pure_dict(base), nnx.to_pure_dict(lora), nnx.to_pure_dict(rest)
  # LoRA B starts at zero: one SGD-sized nudge makes every adapter's gradient non-trivial
  lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape), lora)
  _, _, batch, class_ids = step_and_inputs(pre, graphdef, lora)
  assert int(batch["mask"].sum(1).min()) < batch["mask"].shape[1]  # right padding present

  def loss(lora):
    m = nnx.merge(graphdef, base, lora, rest)
    return dual_reward_loss(m, batch, class_ids, 2, jnp.float32(0.5))[0]

  return batch["tokens"].shape[1], jax.value_and_grad(loss)(lora)


def test_blockwise_lora_gradients_match_einsum(small_blocks):
  t, (ref_loss, ref) = _lora_grads("einsum")
  assert t % blockwise.BLOCK_Q != 0
  _, (loss, got) = _lora_grads("blockwise")
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  leaves, ref_leaves = jax.tree.leaves(got), jax.tree.leaves(ref)
  assert len(leaves) == len(ref_leaves) > 0
  for g, rg in zip(leaves, ref_leaves):
    assert float(jnp.abs(rg).max()) > 1e-4
    np.testing.assert_allclose(np.asarray(g), np.asarray(rg), atol=1e-6, rtol=1e-4)
