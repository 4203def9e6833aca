"""LoRA: PEFT's scale, a no-op at init, frozen base, and no backward pass below the lowest adapted layer."""

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.errors import UserError
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import LoRAParam
from lazarus_jax.training.loop import make_train_step

SOME_TRIPLES = ((7, "multiply", 8), (23, "add", 45), (50, "subtract", 23), (48, "divide", 6))
TOKENS = np.random.default_rng(0).integers(3, 384, size=(2, 9)).astype(np.int32)


@pytest.fixture(scope="module")
def pretrained():
  return load_pretrained("tiny-random")


def logits_of(model):
  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, TOKENS))


def test_fresh_adapter_leaves_logits_exactly_unchanged(pretrained):
  base = logits_of(pretrained.build())
  model = pretrained.build()
  add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "down"), layer_start=1), seed=3)
  assert all(np.all(np.asarray(model.lora.stacked_weights()[t][1]) == 0) for t in model.lora.targets)
  np.testing.assert_array_equal(logits_of(model), base)


def test_scale_is_alpha_over_rank(pretrained):
  """Adapted logits equal those of the base model with W + (alpha/r) A B merged in."""
  rank, alpha, start, end = 4, 12.0, 1, 3
  model = pretrained.build()
  lora = add_lora(model, LoRAConfig(rank=rank, alpha=alpha, targets=("k", "o", "up"), layer_start=start, layer_end=end), seed=0)
  assert lora.scale == alpha / rank
  rng = np.random.default_rng(1)
  merged = {name: np.array(w) for name, w in pretrained.weights["layers"].items()}
  for t in lora.targets:
    b = getattr(lora, f"{t}_b")
    b[...] = jnp.asarray(rng.normal(scale=0.05, size=b[...].shape), jnp.float32)
    a = np.asarray(getattr(lora, f"{t}_a")[...])
    merged[t][start:end] += (alpha / rank) * np.einsum("ldr,lrf->ldf", a, np.asarray(b[...]))
  reference = dataclasses.replace(pretrained, weights=dict(pretrained.weights, layers=merged)).build()
  adapted, ref = logits_of(model), logits_of(reference)
  np.testing.assert_allclose(adapted, ref, atol=2e-5, rtol=0)
  assert np.abs(adapted - logits_of(pretrained.build())).max() > 1e-2  # the adapters do something


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(targets=("v", "qkv")), "unknown LoRA target"),
    (dict(targets=()), "empty"),
    (dict(layer_start=2, layer_end=2), "adapts nothing"),
    (dict(layer_start=4), "adapts nothing"),
    (dict(layer_end=5), "adapts nothing"),
    (dict(rank=0), "rank"),
    (dict(rank=-2), "rank"),
    (dict(alpha=0.0), "alpha"),
  ],
)
def test_bad_lora_config_is_a_user_error(pretrained, kwargs, match):
  model = pretrained.build()
  with pytest.raises(UserError, match=match) as e:
    add_lora(model, LoRAConfig(**{"rank": 4, "alpha": 8.0, **kwargs}), seed=0)
  assert "\n" not in str(e.value)


def step_inputs(pretrained, lora_cfg, tx):
  """What train.run hands the step: (graphdef, base, adapter state, rest) and a tiny real batch."""
  model = pretrained.build()
  add_lora(model, lora_cfg, seed=0)
  graphdef, base, lora_state, rest = nnx.split(model, nnx.Param, LoRAParam, ...)
  params = nnx.to_pure_dict(lora_state)  # {"lora": {"v_a": ...}}: the model's own path, as train.run builds it
  state = {
    "lora": params,
    "opt_state": tx.init(params),
    "step": jnp.zeros((), jnp.int32),
    "nonfinite": jnp.zeros((), jnp.int32),
    "skipped": jnp.zeros((), jnp.int32),
  }
  tok = pretrained.tokenizer
  exs = [data_lib.make_example(a, op, b, "symbolic") for a, op, b in SOME_TRIPLES]
  enc = data_lib.encode_examples(tok, exs, append_eos=True)
  batch = data_lib.collate(enc, [e.operation for e in exs], 16, 8, tok.pad_id)
  class_ids = jnp.asarray([300, 301, 302, 303], jnp.int32)
  return graphdef, state, nnx.to_pure_dict(base), nnx.to_pure_dict(rest), batch, class_ids


def test_step_differentiates_only_the_adapters(pretrained):
  """A spy in front of the optimizer sees the gradient tree: exactly the adapter leaves, B's non-zero."""
  seen = {}

  def spy_update(grads, state, params=None):
    seen["paths"] = sorted(jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(grads)[0])
    jax.debug.callback(lambda g: seen.update(values=g), grads)
    return grads, state

  spy = optax.GradientTransformation(lambda params: optax.EmptyState(), spy_update)
  tx = optax.chain(spy, optax.adam(1e-2))
  cfg = LoRAConfig(rank=4, alpha=8.0, targets=("v", "o"), layer_start=1)
  graphdef, state, base, rest, batch, class_ids = step_inputs(pretrained, cfg, tx)
  adapter_paths = sorted(jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["lora"])[0])
  step = make_train_step(graphdef, tx, optax.constant_schedule(1e-2), classifier_layer=2, restrict_to_classes=False, accum=1)
  new_state, metrics = jax.jit(step)(state, base, rest, batch, jnp.float32(0.7), class_ids)
  jax.effects_barrier()
  assert seen["paths"] == adapter_paths == ["['lora']['o_a']", "['lora']['o_b']", "['lora']['v_a']", "['lora']['v_b']"]
  grads = seen["values"]["lora"]
  for t in ("v", "o"):
    assert np.abs(grads[f"{t}_b"]).min(axis=(1, 2)).shape == (3,)
    assert np.all(np.abs(grads[f"{t}_b"]).max(axis=(1, 2)) > 0)  # every adapted layer's B gets a gradient
    assert np.all(grads[f"{t}_a"] == 0)  # with B = 0, dL/dA = 0 (PEFT's init)
    assert not np.array_equal(new_state["lora"]["lora"][f"{t}_b"], state["lora"]["lora"][f"{t}_b"])
  assert set(new_state) == set(state)  # the base weights are inputs only: never returned, never updated
  assert int(metrics["skipped"]) == 0


def _scan_lengths(jaxpr):
  """Lengths of every scan in a (closed) jaxpr, nested jaxprs included."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      out.append(eqn.params["length"])
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out += _scan_lengths(sub)
  return out


@pytest.mark.parametrize("layer_start", [0, 1])
def test_no_backward_below_lowest_adapted_layer(pretrained, layer_start):
  """The train step's jaxpr runs the frozen prefix scan once (forward only); the adapted segment twice.

  Layers [0, start) form their own scan of length `start`; the adapted layers [start, 4) one of length
  4 - start. A backward pass through a segment is a second (transposed) scan of the same length.
  """
  tx = optax.adam(1e-2)
  cfg = LoRAConfig(rank=4, alpha=8.0, targets=("v", "o"), layer_start=layer_start)
  graphdef, state, base, rest, batch, class_ids = step_inputs(pretrained, cfg, tx)
  step = make_train_step(graphdef, tx, optax.constant_schedule(1e-2), classifier_layer=2, restrict_to_classes=False, accum=1)
  jaxpr = jax.make_jaxpr(step)(state, base, rest, batch, jnp.float32(0.7), class_ids)
  lengths = _scan_lengths(jaxpr.jaxpr)
  adapted = 4 - layer_start
  if layer_start:
    assert lengths.count(layer_start) == 1, lengths  # the frozen prefix: forward only
  assert lengths.count(adapted) == 2, lengths  # the adapted layers: forward + backward
  assert len(lengths) == (1 if layer_start else 0) + 2, lengths
