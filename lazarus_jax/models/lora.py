"""LoRA adapters on any of the projections q,k,v,o,gate,up,down over a layer range.

PEFT's convention: y = x W + (alpha / r) * (x A) B, with A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform
with a=sqrt(5), as PEFT) and B = 0, so a fresh adapter leaves the model unchanged. Adapters are stacked over the
adapted layers only; `LlamaModel.trunk` runs those layers as their own scan segment.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lazarus_jax.errors import UserError
from lazarus_jax.models.model import PROJS, LlamaConfig, LlamaModel, LoRAParam, proj_shapes


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  rank: int = 32
  alpha: float = 64.0
  targets: tuple[str, ...] = ("v", "o")
  layer_start: int = 0
  layer_end: int | None = None  # exclusive; None = all layers

  def validate(self, num_layers: int) -> tuple[int, int]:
    """Checks the config against the model; returns the adapted layer range [start, end)."""
    if self.rank <= 0:
      raise UserError(f"lora.rank must be a positive integer, got {self.rank}")
    if self.alpha <= 0:
      raise UserError(f"lora.alpha must be positive, got {self.alpha}")
    if not self.targets:
      raise UserError(f"lora.targets is empty: name some of {','.join(PROJS)}")
    unknown = [t for t in self.targets if t not in PROJS]
    if unknown:
      raise UserError(f"unknown LoRA target(s) {unknown}: choose among {','.join(PROJS)} (e.g. --config.lora.targets=v,o)")
    if len(set(self.targets)) != len(self.targets):
      raise UserError(f"lora.targets lists a projection twice: {self.targets}")
    end = num_layers if self.layer_end is None else self.layer_end
    start = self.layer_start
    if not (0 <= start < end <= num_layers):
      raise UserError(
        f"LoRA layer range [{start}, {end}) adapts nothing in a {num_layers}-layer model: "
        f"use 0 <= lora.layer_start < lora.layer_end <= {num_layers}"
      )
    return start, end


class LoRA(nnx.Module):
  """Adapters for `targets` over layers [layer_start, layer_end), stacked on a leading `layers` axis."""

  def __init__(self, model_cfg: LlamaConfig, cfg: LoRAConfig, rngs: nnx.Rngs):
    self.layer_start, self.layer_end = cfg.validate(model_cfg.num_layers)
    self.rank, self.alpha, self.targets = cfg.rank, cfg.alpha, tuple(cfg.targets)
    n = self.layer_end - self.layer_start
    shapes = proj_shapes(model_cfg)
    for name in self.targets:
      (din, dout), (in_axis, out_axis) = shapes[name]
      bound = 1.0 / din**0.5
      a = jax.random.uniform(rngs.lora(), (n, din, cfg.rank), jnp.float32, -bound, bound)
      setattr(self, f"{name}_a", LoRAParam(a, logical_axes=("layers", in_axis, "lora_rank")))
      setattr(
        self, f"{name}_b", LoRAParam(jnp.zeros((n, cfg.rank, dout), jnp.float32), logical_axes=("layers", "lora_rank", out_axis))
      )

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def num_modules(self) -> int:
    """Adapted modules (one per target per layer): PEFT's count."""
    return len(self.targets) * (self.layer_end - self.layer_start)

  def stacked_weights(self) -> dict:
    return {t: (getattr(self, f"{t}_a")[...], getattr(self, f"{t}_b")[...]) for t in self.targets}


def add_lora(model: LlamaModel, cfg: LoRAConfig, seed: int) -> LoRA:
  """Attaches fresh adapters to `model` (seeded). Fails if the pattern adapts nothing."""
  lora = LoRA(model.cfg, cfg, nnx.Rngs(lora=seed))
  if lora.num_modules == 0:
    raise UserError("the LoRA configuration adapts no module: check lora.targets and the layer range")
  model.lora = nnx.data(lora)
  return lora
