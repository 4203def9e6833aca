"""`model.dense` (the custom-VJP matmul) has the gradients of a plain matmul, and bf16 stays on bf16 dots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lazarus_jax.models.model import dense


@pytest.mark.parametrize("w_transposed", [False, True])
def test_dense_grads_match_plain_matmul(w_transposed):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, 5, 6))
  w = jax.random.normal(kw, (7, 6) if w_transposed else (6, 7))
  probe = jax.random.normal(kg, (2, 5, 7))
  plain = lambda x, w: jnp.sum(jnp.einsum("btd,fd->btf" if w_transposed else "btd,df->btf", x, w) * probe)  # noqa: E731
  ours = lambda x, w: jnp.sum(dense(x, w, w_transposed) * probe)  # noqa: E731
  np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-5)
  for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(plain, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_backward_has_no_float32_weight_dot():
  x = jnp.ones((4, 8), jnp.bfloat16)
  w = jnp.ones((8, 16), jnp.bfloat16)
  hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(dense(x, w).astype(jnp.float32)), (0, 1))).lower(x, w).as_text()
  # Every dot takes bf16 operands (and accumulates in f32): no f32 x bf16 mixed dot that XLA would upcast.
  dots = [line for line in hlo.splitlines() if "dot_general" in line]
  assert dots and all("f32[" not in line.split("(")[1].split(")")[0] for line in dots), dots
