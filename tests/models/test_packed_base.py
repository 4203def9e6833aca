"""`pack_frozen_layers`: the training step gives bit-identical results on packed (uint16-bits) base weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import PROJS, LoRAParam, pack_frozen_layers

from tiny_step import step_and_inputs


@pytest.mark.parametrize(
  "param_dtype,compute_dtype", [("bfloat16", "bfloat16"), ("bfloat16", "float32"), ("float16", "bfloat16"), ("float32", "float32")]
)
def test_packed_base_gives_the_same_step(param_dtype, compute_dtype):
  pre = load_pretrained("tiny-random", param_dtype=param_dtype, compute_dtype=compute_dtype)
  model = pre.build()
  add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "down")), seed=0)
  for t in model.lora.targets:  # non-zero B, so every adapter matrix gets a gradient
    b = getattr(model.lora, f"{t}_b")
    b[...] = jnp.asarray(np.random.default_rng(1).normal(scale=0.05, size=b[...].shape), jnp.float32)
  graphdef, base, lora, rest = nnx.split(model, nnx.Param, LoRAParam, ...)
  base, lora, rest = (nnx.to_pure_dict(s) for s in (base, lora, rest))
  packed = pack_frozen_layers(base)
  for name in PROJS:
    want = jnp.uint16 if jnp.dtype(param_dtype).itemsize == 2 else jnp.dtype(param_dtype)
    assert packed["layers"][name].dtype == want
    assert packed["layers"][name].shape == base["layers"][name].shape
  np.testing.assert_array_equal(packed["embed"], base["embed"])
  if param_dtype == "float32":  # nothing to pack: the very same arrays, no copy
    assert all(packed["layers"][n] is base["layers"][n] for n in PROJS)

  step, state, batch, class_ids = step_and_inputs(pre, graphdef, lora)
  s_plain, m_plain = step(state, base, rest, batch, jnp.float32(0.5), class_ids)
  s_packed, m_packed = step(state, packed, rest, batch, jnp.float32(0.5), class_ids)
  assert np.isfinite(float(m_plain["loss"])) and float(m_plain["grad_norm"]) > 0
  for k in ("loss", "classifier_loss", "answer_loss", "grad_norm"):
    np.testing.assert_array_equal(m_packed[k], m_plain[k], err_msg=k)
  jax.tree.map(np.testing.assert_array_equal, s_packed["lora"], s_plain["lora"])
