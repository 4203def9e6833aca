"""`model.attention` and `model.scan_layers`: accelerator variants compute what the default computes.

cuDNN itself needs an NVIDIA GPU (bench/gpu_tinyllama.py checks it there against einsum); here the same code
path runs through `jax.nn.dot_product_attention`'s XLA implementation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lazarus_jax.errors import UserError
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import LoRAParam, residual_stream

from tiny_step import step_and_inputs

TOKENS = jnp.asarray([[5, 17, 93, 41, 7, 88, 3, 12], [0, 0, 0, 31, 9, 120, 77, 6], [0] * 7 + [6]], jnp.int32)
MASK = (TOKENS > 0).astype(jnp.int32)


@pytest.mark.parametrize("variant", [dict(attention="xla"), dict(scan_layers=False), dict(attention="xla", scan_layers=False)])
def test_variant_residual_stream_matches_default_on_real_tokens(variant):
  ref = residual_stream(load_pretrained("tiny-random").build(), TOKENS, MASK)
  out = residual_stream(load_pretrained("tiny-random", **variant).build(), TOKENS, MASK)
  real = np.asarray(MASK, bool)
  assert bool(jnp.isfinite(out).all())  # padded rows too: a fully masked row must not become NaN
  np.testing.assert_allclose(np.asarray(out)[:, real], np.asarray(ref)[:, real], atol=1e-5)


def _steps(**variant):
  pre = load_pretrained("tiny-random", **variant)
  model = pre.build()
  add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("v", "o"), layer_start=1), seed=0)
  graphdef, base, lora, rest = nnx.split(model, nnx.Param, LoRAParam, ...)
  base, lora, rest = nnx.to_pure_dict(base), nnx.to_pure_dict(lora), nnx.to_pure_dict(rest)
  step, state, batch, class_ids = step_and_inputs(pre, graphdef, lora)
  losses = []
  for _ in range(3):
    state, m = step(state, base, rest, batch, jnp.float32(0.5), class_ids)
    losses.append(float(m["loss"]))
  return losses, state["lora"]


def test_unrolled_fused_attention_train_step_matches_scanned_einsum():
  """Adapters on a sub-range (three segments), three AdamW steps: same losses and adapters."""
  ref_losses, ref_lora = _steps()
  losses, lora = _steps(attention="xla", scan_layers=False)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[-1] < losses[0]
  for a, b in zip(jax.tree.leaves(lora), jax.tree.leaves(ref_lora)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_unknown_attention_is_one_clear_error():
  with pytest.raises(UserError, match="model.attention"):
    residual_stream(load_pretrained("tiny-random", attention="flash").build(), TOKENS, MASK)


class _Device:
  def __init__(self, platform, version=""):
    self.platform, self.client = platform, type("Client", (), {"platform_version": version})()


def test_auto_kernels_follow_the_device():
  from lazarus_jax.models import kernels

  gpu = _Device("gpu", "cuda 12.8")
  k = kernels.resolve("auto", "auto", "bfloat16", gpu)
  assert (k.attention, k.scan_layers) == ("cudnn", False) and "NVIDIA" in k.describe()
  assert kernels.resolve("auto", "auto", "float32", gpu).attention == "einsum"  # cuDNN's kernel is 16-bit only
  assert kernels.resolve("auto", "auto", "bfloat16", _Device("gpu", "rocm 6")).attention == "einsum"
  k = kernels.resolve("auto", "auto", "bfloat16", _Device("tpu"))
  assert (k.attention, k.scan_layers) == ("einsum", True)
  for dtype in ("bfloat16", "float32"):  # CPU: blockwise attention (einsum up to blockwise.MIN_SEQ positions)
    k = kernels.resolve("auto", "auto", dtype, _Device("cpu"))
    assert (k.attention, k.scan_layers) == ("blockwise", True) and "blockwise attention on cpu" in k.describe()
  k = kernels.resolve("xla", "unroll", "float32", _Device("cpu"))  # explicit choices are kept as given
  assert (k.attention, k.scan_layers, k.reason) == ("xla", False, "")
  assert k.as_dict()["layer_loop"] == "unroll"
