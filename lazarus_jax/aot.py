"""The training step compiled ahead of time on abstract weights: per-device memory without the weights or the hardware.

`compile_train_step` builds exactly what `train.run` compiles (the step, its shardings from the mesh and the rules
table, the packed bf16 base, donation, `sharding.pinned_activations`) from ShapeDtypeStructs, so nothing is
allocated. The devices may be simulated CPU devices (tests) or a TPU slice described by libtpu without a TPU
(`tpu_devices("v5e:4x4")`, needs `pip install "jax[tpu]"`); `bench/tpu_aot.py` runs it over slices and batch sizes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lazarus_jax import data as data_lib
from lazarus_jax import sharding
from lazarus_jax.lora import LoRAConfig, add_lora
from lazarus_jax.model import PROJS, LlamaConfig, LlamaModel, LoRAParam
from lazarus_jax.train import initial_state_fn, jit_train_step, make_optimizer, make_train_step, train_state_shardings

# HBM per chip, GiB (Cloud TPU system architecture pages). The compiler's own limit is a little lower (v5e: 15.75).
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}


def tpu_devices(topology: str) -> list:
  """Compile-only devices of a TPU slice, e.g. "v5e:4x4" (16 chips, 4 hosts); v4 and v5p as one device per chip
  (megacore), as a TPU VM runs them."""
  from jax.experimental import topologies
  kw = {"chip_config_name": "megacore"} if topology.split(":")[0] in ("v4", "v5p") else {}
  return list(topologies.get_topology_desc(platform="tpu", topology_name=topology, **kw).devices)


def hbm_bytes(topology: str) -> int:
  return int(HBM_GIB[topology.split(":")[0]] * 2**30)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What the step is compiled for, beyond the model and the mesh."""
  batch_size: int
  seq_len: int
  max_answer_tokens: int = 8
  lora: LoRAConfig = LoRAConfig(rank=32, alpha=64.0, targets=("v", "o"))
  classifier_layer: int | None = None  # None: int(n_layers * 0.55)
  grad_accum_steps: int = 1
  n_classes: int = 4


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def lower_train_step(model_cfg: LlamaConfig, spec: StepSpec, mesh, rules=sharding.DEFAULT_RULES,
                     train_cfg: ml_collections.ConfigDict | None = None):
  """The lowered training step (jax.stages.Lowered) on abstract inputs; `.compile()` it for the memory analysis."""
  rules = tuple(tuple(r) for r in rules)
  sharding.validate_model_for_mesh(mesh, model_cfg, spec.batch_size)
  if train_cfg is None:
    from lazarus_jax.config import default_config
    train_cfg = default_config().train

  def build():
    model = LlamaModel(model_cfg, rngs=nnx.Rngs(0))
    add_lora(model, spec.lora, seed=0)
    return model

  with jax.set_mesh(mesh):
    abstract_model = nnx.eval_shape(build)  # shapes and logical axes only: nothing is allocated
  graphdef, base, lora_state, rest = nnx.split(abstract_model, nnx.Param, LoRAParam, ...)
  base_sh = nnx.to_pure_dict(sharding.state_shardings(base, mesh, rules))
  lora_sh = nnx.to_pure_dict(sharding.state_shardings(lora_state, mesh, rules))
  base = nnx.to_pure_dict(base)
  # As `pack_frozen_layers` leaves them for the step: 16-bit projection stacks as uint16 bits.
  base["layers"] = {k: jax.ShapeDtypeStruct(v.shape, jnp.uint16) if k in PROJS and v.dtype.itemsize == 2 else v
                    for k, v in base["layers"].items()}
  base = _abstract(base, base_sh)
  rest = nnx.to_pure_dict(rest)

  tx, schedule = make_optimizer(train_cfg)
  abstract_state = jax.eval_shape(initial_state_fn(model_cfg, spec.lora, tx, seed=0))
  state_sh = train_state_shardings(abstract_state, lora_sh, mesh)
  state = _abstract(abstract_state, state_sh)
  bsh = sharding.batch_sharding(mesh, rules)
  empty = data_lib.collate([], [], spec.seq_len, spec.max_answer_tokens)  # the batch's keys, dtypes, trailing dims
  batch = {k: jax.ShapeDtypeStruct((spec.batch_size,) + v.shape[1:], v.dtype, sharding=bsh) for k, v in empty.items()}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  weight = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  class_ids = jax.ShapeDtypeStruct((spec.n_classes,), jnp.int32, sharding=replicated)

  layer = spec.classifier_layer if spec.classifier_layer is not None else int(model_cfg.num_layers * 0.55)
  step = make_train_step(graphdef, tx, schedule, layer, False, spec.grad_accum_steps)
  jitted = jit_train_step(step, state_sh, base_sh, bsh, mesh)
  with sharding.pinned_activations(mesh, rules):
    return jitted.lower(state, base, rest, batch, weight, class_ids)


def memory(compiled) -> dict:
  """Per-device bytes from the compiled step's memory analysis; `peak` = arguments + outputs - aliased + temporaries."""
  m = compiled.memory_analysis()
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes, "aliased": m.alias_size_in_bytes,
         "temporaries": m.temp_size_in_bytes, "code": m.generated_code_size_in_bytes}
  out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out


def compile_memory(model_cfg: LlamaConfig, spec: StepSpec, mesh, rules=sharding.DEFAULT_RULES, train_cfg=None,
                   hbm: int | None = None) -> dict:
  """Compiles the step; returns `memory(...)` plus `fits` (against `hbm` bytes when given) or, when the compiler
  itself refuses for lack of memory, {"fits": False, "error": its message}."""
  try:
    compiled = lower_train_step(model_cfg, spec, mesh, rules, train_cfg).compile()
  except Exception as e:  # XLA's RESOURCE_EXHAUSTED is a JaxRuntimeError; anything else is a real failure
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return {"fits": False, "error": str(e).strip().splitlines()[0][:300]}
  out = memory(compiled)
  out["fits"] = hbm is None or out["peak"] <= hbm
  return out
