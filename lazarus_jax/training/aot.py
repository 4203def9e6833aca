"""The training step compiled ahead of time on abstract weights: per-device memory without the weights or the hardware.

  python -m lazarus_jax.preflight --config configs/tinyllama.py --topology v5litepod-16 [--config.<key>=<value> ...]

(the pre-flight check of launch/tpu_preflight.sh: exit status 0 and one line when the config's step fits the
slice's HBM, 2 and one line naming what to change when it does not; needs `pip install "jax[tpu]"`).

`lower_train_step` builds exactly what `train.run` compiles (the step, its shardings from the mesh and the rules
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

from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.errors import UserError
from lazarus_jax.models import dtypes, sharding
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import PROJS, LlamaConfig, LlamaModel, LoRAParam
from lazarus_jax.training.loop import initial_state_fn, jit_train_step, make_optimizer, make_train_step, train_state_shardings

# HBM per chip, GiB (Cloud TPU system architecture pages). The compiler's own limit is a little lower (v5e: 15.75).
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}


# Chips of a slice -> its topology: TPU VM accelerator types count chips (v5e, v6e) or TensorCores (v4, v5p: 2 a chip).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_GENERATIONS = {
  "v4": ("v4", 2, _SHAPES_3D),
  "v5p": ("v5p", 2, _SHAPES_3D),
  "v5litepod": ("v5e", 1, _SHAPES_2D),
  "v5e": ("v5e", 1, _SHAPES_2D),
  "v6e": ("v6e", 1, _SHAPES_2D),
}


def topology_name(accelerator: str) -> str:
  """A libtpu topology name ("v5e:4x4") from itself or from a TPU VM accelerator type ("v5litepod-16")."""
  if ":" in accelerator:
    return accelerator
  gen, _, count = accelerator.partition("-")
  if gen not in _GENERATIONS or not count.isdigit():
    raise UserError(
      f"unknown TPU accelerator type {accelerator!r}: use e.g. v4-16, v5litepod-16, v5p-32, v6e-16 or a topology such as v5e:4x4"
    )
  name, per_chip, shapes = _GENERATIONS[gen]
  chips = int(count) // per_chip
  if chips not in shapes:
    raise UserError(
      f"no standard topology for {accelerator} ({chips} chips): pass a topology such as {name}:{next(iter(shapes.values()))}"
    )
  return f"{name}:{shapes[chips]}"


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


def lower_train_step(
  model_cfg: LlamaConfig, spec: StepSpec, mesh, rules=sharding.DEFAULT_RULES, train_cfg: ml_collections.ConfigDict | None = None
):
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
  base["layers"] = {
    k: jax.ShapeDtypeStruct(v.shape, jnp.uint16) if k in PROJS and v.dtype.itemsize == 2 else v for k, v in base["layers"].items()
  }
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
  out = {
    "arguments": m.argument_size_in_bytes,
    "outputs": m.output_size_in_bytes,
    "aliased": m.alias_size_in_bytes,
    "temporaries": m.temp_size_in_bytes,
    "code": m.generated_code_size_in_bytes,
  }
  out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out


def compile_memory(
  model_cfg: LlamaConfig, spec: StepSpec, mesh, rules=sharding.DEFAULT_RULES, train_cfg=None, hbm: int | None = None
) -> dict:
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


def preflight(c: ml_collections.ConfigDict, accelerator: str, devices=None, hbm: int | None = None) -> tuple[dict, str]:
  """Compiles the step `train.run` would compile for config `c` on the TPU slice `accelerator` (abstract weights,
  compile-only devices). Returns (memory record, one line); the line says what to change when it does not fit.
  `devices` / `hbm` stand in for the slice's devices and HBM per chip (tests on simulated CPU devices)."""
  from lazarus_jax import experiment, settings
  from lazarus_jax.models.loading import load_shape

  c = settings.parse(c)
  topology = topology_name(accelerator)
  if devices is None:
    try:
      devices = tpu_devices(topology)
    except Exception as e:  # no libtpu, or a name libtpu does not know
      raise UserError(
        f"cannot describe TPU topology {topology} ({type(e).__name__}: "
        f'{str(e).splitlines()[0][:200]}): the check needs libtpu: pip install "jax[tpu]" '
        "(in a venv of its own)"
      ) from None
  choice = dtypes.resolve(c.model.param_dtype, c.model.compute_dtype, c.model.activation_dtype, platform="tpu")
  model_cfg, tokenizer = load_shape(
    c.model.location,
    param_dtype=choice.param_dtype,
    compute_dtype=choice.compute_dtype,
    activation_dtype=choice.activation_dtype,
    remat=c.model.remat,
  )
  seq_len = c.data.seq_len or experiment.build_data(c, tokenizer).seq_len
  mesh = sharding.make_mesh(c.mesh.shape, devices)
  spec = StepSpec(
    batch_size=c.train.batch_size,
    seq_len=seq_len,
    max_answer_tokens=c.data.max_answer_tokens,
    lora=c.lora,
    classifier_layer=experiment.classifier_layer(c.classifier, model_cfg.num_layers),
    grad_accum_steps=c.train.grad_accum_steps,
    n_classes=len(c.classifier.targets),
  )
  hbm = hbm or hbm_bytes(topology)
  mem = compile_memory(model_cfg, spec, mesh, c.mesh.rules, c.train, hbm=hbm)
  mem.update(
    topology=topology,
    chips=len(devices),
    mesh=dict(mesh.shape),
    batch_size=spec.batch_size,
    seq_len=seq_len,
    hbm=hbm,
    dtypes=choice.as_dict(),
  )
  what = (
    f"{topology} ({len(devices)} chips, {hbm / 2**30:.0f} GiB HBM each), mesh {dict(mesh.shape)}, batch "
    f"{spec.batch_size} x {seq_len} tokens, {choice.param_dtype} weights"
  )
  if "error" in mem:
    return mem, f"does not fit: {what}: the compiler says {mem['error']}"
  gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
  line = (
    f"{what}: per chip arguments {gib(mem['arguments'])}, outputs {gib(mem['outputs'])}, temporaries "
    f"{gib(mem['temporaries'])}, peak {gib(mem['peak'])} GiB"
  )
  return mem, ("fits: " if mem["fits"] else "does not fit: ") + line


def check(c: ml_collections.ConfigDict, accelerator: str, devices=None, hbm: int | None = None) -> str:
  """`preflight` as a verdict: its line when the step fits, else a UserError (one line: what to change)."""
  mem, line = preflight(c, accelerator, devices, hbm)
  if not mem["fits"]:
    raise UserError(
      f"pre-flight: {line}: lower train.batch_size (or raise train.grad_accum_steps), shard the "
      "weights (--config.mesh.shape='(1,-1,1)'), set model.remat=full, or take a larger slice"
    )
  return f"pre-flight: {line}"
