"""`model.activation_dtype`: a bfloat16 residual stream stays close to the float32 one, and trains."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import LoRAParam, pack_frozen_layers, residual_stream

from tiny_step import step_and_inputs

TOKENS = jnp.asarray([[5, 17, 93, 41, 7, 88, 3, 12], [64, 2, 2, 31, 9, 120, 77, 6]], jnp.int32)


def _model(activation_dtype):
  return load_pretrained("tiny-random", param_dtype="bfloat16", compute_dtype="bfloat16", activation_dtype=activation_dtype).build()


def test_bf16_residual_stream_is_close_to_float32():
  m32, m16 = _model("float32"), _model("bfloat16")
  s32, s16 = residual_stream(m32, TOKENS), residual_stream(m16, TOKENS)
  assert s32.dtype == jnp.float32 and s16.dtype == jnp.bfloat16
  scale = float(jnp.max(jnp.abs(s32)))
  err = float(jnp.max(jnp.abs(s16.astype(jnp.float32) - s32)))
  assert 0 < err < 0.05 * scale, (err, scale)  # different (bf16 rounding), but only by rounding
  l32, l16 = m32(TOKENS), m16(TOKENS)
  assert l16.dtype == jnp.float32  # logits stay float32
  np.testing.assert_array_equal(jnp.argmax(l16, -1)[:, -1], jnp.argmax(l32, -1)[:, -1])


def test_bf16_activations_train_step_is_finite_and_moves():
  pre = load_pretrained("tiny-random", param_dtype="bfloat16", compute_dtype="bfloat16", activation_dtype="bfloat16")
  model = pre.build()
  add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("v", "o")), seed=0)
  graphdef, base, lora, rest = nnx.split(model, nnx.Param, LoRAParam, ...)
  base, lora, rest = pack_frozen_layers(nnx.to_pure_dict(base)), nnx.to_pure_dict(lora), nnx.to_pure_dict(rest)
  step, state, batch, class_ids = step_and_inputs(pre, graphdef, lora)
  losses = []
  for _ in range(5):
    state, m = step(state, base, rest, batch, jnp.float32(0.5), class_ids)
    losses.append(float(m["loss"]))
  assert all(np.isfinite(losses)) and int(state["skipped"]) == 0
  assert losses[-1] < losses[0]
  assert jax.tree.leaves(state["lora"])[0].dtype == jnp.float32  # adapters stay float32
