"""`auto` model dtypes, resolved once per run from the hardware, with the reason recorded.

- param_dtype / compute_dtype `auto`: bfloat16 where matmuls run natively in bf16 (TPU; GPU of compute capability
  >= 8; a CPU with AMX-BF16 or AVX512-BF16, which XLA:CPU's bf16 x bf16 -> f32 dots use), float32 elsewhere (there
  XLA emulates bf16 dots through float32 converts: slower than float32 and less exact).
- activation_dtype `auto`: bfloat16 on TPU and GPU (a bf16 residual stream halves the activation traffic: +22%
  tokens/s on an H200, bench/RESULTS.md), float32 on every CPU (XLA:CPU upcasts bf16 elementwise work: a bf16
  residual stream made the SmolLM2 step 60% slower, see model.LlamaConfig).
Explicit values pass through unchanged.
"""

from __future__ import annotations

import dataclasses

from lazarus_jax.provenance import cpu_flags  # what `resolve` reads (tests fake dtypes.cpu_flags)

AUTO = "auto"
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names


def native_bf16(platform: str, flags=frozenset(), compute_capability: str | None = None) -> tuple[bool, str]:
  """(does this hardware run bf16 matmuls natively, why) for a JAX platform name."""
  if platform == "tpu":
    return True, "TPU"
  if platform in ("gpu", "cuda", "rocm"):
    if compute_capability and platform != "rocm":
      major = int(str(compute_capability).split(".")[0])
      if major < 8:
        return False, f"GPU of compute capability {compute_capability} has no bf16 tensor cores"
    return True, "GPU"
  present = [f for f in BF16_CPU_FLAGS if f in flags]
  if present:
    return True, f"CPU has {', '.join(present)}"
  return False, f"CPU has neither {' nor '.join(BF16_CPU_FLAGS)}"


@dataclasses.dataclass(frozen=True)
class DtypeChoice:
  param_dtype: str
  compute_dtype: str
  activation_dtype: str
  requested: tuple  # (param, compute, activation) as configured
  reason: str  # why `auto` became what it did ("" when nothing was auto)

  def as_dict(self) -> dict:
    return {
      "param_dtype": self.param_dtype,
      "compute_dtype": self.compute_dtype,
      "activation_dtype": self.activation_dtype,
      "requested": dict(zip(KEYS, self.requested)),
      "reason": self.reason,
    }

  def describe(self) -> str:
    """One line for the start of a run."""
    parts = []
    for key, want, got in zip(KEYS, self.requested, (self.param_dtype, self.compute_dtype, self.activation_dtype)):
      parts.append(f"{key.split('_')[0]} {'auto -> ' if want == AUTO else ''}{got}")
    return "dtypes: " + ", ".join(parts) + (f" ({self.reason})" if self.reason else "")


KEYS = ("param_dtype", "compute_dtype", "activation_dtype")


def resolve(
  param_dtype: str,
  compute_dtype: str,
  activation_dtype: str,
  platform: str | None = None,
  flags=None,
  compute_capability: str | None = None,
) -> DtypeChoice:
  """Resolves `auto` entries for `platform` (default: JAX's first device) and `flags` (default: this CPU's)."""
  requested = (param_dtype, compute_dtype, activation_dtype)
  if AUTO not in requested:
    return DtypeChoice(param_dtype, compute_dtype, activation_dtype, requested, "")
  if platform is None:
    import jax

    device = jax.devices()[0]
    platform, compute_capability = device.platform, getattr(device, "compute_capability", None)
  if flags is None:
    flags = cpu_flags() if platform == "cpu" else frozenset()
  native, why = native_bf16(platform, flags, compute_capability)
  matmul = "bfloat16" if native else "float32"
  accelerator = platform != "cpu" and native
  activation = "bfloat16" if accelerator else "float32"
  reasons = [why]
  if activation_dtype == AUTO and native and not accelerator:
    reasons.append("activations float32 on CPU: XLA:CPU upcasts bf16 elementwise work")
  return DtypeChoice(
    matmul if param_dtype == AUTO else param_dtype,
    matmul if compute_dtype == AUTO else compute_dtype,
    activation if activation_dtype == AUTO else activation_dtype,
    requested,
    "; ".join(reasons),
  )
