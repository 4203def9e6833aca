"""Device mesh `(data, fsdp, tensor)` from config and logical-axis rules -> shardings.

Model code names logical axes only (`logical_axes` metadata on every variable); the rules table lives in
config (`mesh.rules`), mapping each logical name to mesh axes.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from lazarus_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
DEFAULT_RULES = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("layers", None),
  ("norm", None),
  ("lora_rank", None),
)


def mesh_shape(dims, n_devices: int) -> tuple[int, int, int]:
  """Fills one -1 entry so the product equals the device count; validates the rest."""
  dims = [int(d) for d in dims]
  if len(dims) != 3 or any(d == 0 or d < -1 for d in dims) or dims.count(-1) > 1:
    raise UserError(f"mesh.shape must be three positive sizes (data, fsdp, tensor) with at most one -1, got {dims}")
  known = math.prod(d for d in dims if d != -1)
  if -1 in dims:
    if n_devices % known:
      raise UserError(f"mesh.shape {dims} cannot fill {n_devices} devices ({n_devices} is not a multiple of {known})")
    dims[dims.index(-1)] = n_devices // known
  if math.prod(dims) != n_devices:
    raise UserError(f"mesh.shape {dims} uses {math.prod(dims)} devices but {n_devices} are available")
  return tuple(dims)


def make_mesh(dims, devices=None) -> jax.sharding.Mesh:
  devices = devices if devices is not None else jax.devices()
  shape = mesh_shape(dims, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def validate_model_for_mesh(mesh, model_cfg, batch_size: int) -> None:
  tensor = mesh.shape["tensor"]
  for what, n in (
    ("attention heads", model_cfg.num_heads),
    ("KV heads", model_cfg.num_kv_heads),
    ("MLP width", model_cfg.intermediate_size),
  ):
    if n % tensor:
      raise UserError(
        f"tensor parallelism {tensor} does not divide the model's {n} {what}: "
        "set mesh.shape so tensor divides it (e.g. --config.mesh.shape='(-1,1,1)')"
      )
  data = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % data:
    raise UserError(
      f"batch size {batch_size} is not divisible by the data-parallel size {data} "
      "(mesh data x fsdp): change train.batch_size or mesh.shape"
    )


def logical_to_spec(axes, rules, shape=None, mesh=None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; an axis that does not divide its dimension is replicated."""
  table = dict(rules)
  out, used = [], set()
  for i, name in enumerate(axes or ()):
    mesh_axes = table.get(name)
    if mesh_axes is None:
      out.append(None)
      continue
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    mesh_axes = tuple(a for a in mesh_axes if a not in used)
    if mesh is not None and shape is not None:
      size = math.prod(mesh.shape[a] for a in mesh_axes)
      if size == 0 or shape[i] % size:
        out.append(None)
        continue
    used.update(mesh_axes)
    out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
  return PartitionSpec(*out)


def state_shardings(state, mesh, rules):
  """NamedShardings for an nnx.State (or tree of Variables) from each variable's `logical_axes`."""

  def one(v):
    axes = v.get_metadata().get("logical_axes") if isinstance(v, nnx.Variable) else None
    value = v.get_value() if isinstance(v, nnx.Variable) else v
    spec = logical_to_spec(axes, rules, np.shape(value), mesh)
    return NamedSharding(mesh, spec)

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh, rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(("batch",), rules))


# Logical names of activation axes. Not in the rules table, so replicated, unless a rule names them: the residual
# stream's embedding axis must not inherit the weights' `embed` -> fsdp rule (see `pinned_activations`).
ACTIVATION_AXES = ("batch", "length", "act_embed")
_PINNED = contextvars.ContextVar("lazarus_jax_pinned_activations", default=None)


@contextlib.contextmanager
def pinned_activations(mesh, rules):
  """While a step is traced under this context, the model pins its activations to the batch axes and gathers each
  layer's weights inside the layer scan (`constrain`): plain FSDP.

  Why: left to itself, GSPMD propagates the weights' `embed` -> fsdp sharding into the dots and all-gathers the
  activations over the batch instead, so every device holds the whole batch's activations (a 7B-shaped step at
  fsdp 16 needed 31 GiB of temporaries per chip for one 512-token sequence per chip; bench/tpu_aot.py).
  A one-device mesh pins nothing: the traced step is the same as without the context.
  """
  token = _PINNED.set((mesh, tuple(tuple(r) for r in rules)) if mesh is not None and mesh.size > 1 else None)
  try:
    yield
  finally:
    _PINNED.reset(token)


def constrain(x, axes):
  """`x` pinned to the sharding its logical `axes` map to (a no-op outside `pinned_activations`)."""
  pinned = _PINNED.get()
  if pinned is None or axes is None:
    return x
  mesh, rules = pinned
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, rules, np.shape(x), mesh)))
