"""`model.attention` and `model.layer_loop` = `auto`: the attention kernel and layer loop for the device at hand.

Measured on an H200 (TinyLlama shape, bf16, batch 64 x 128; bench/RESULTS.md, 2026-11-27): cuDNN's fused attention
and unrolled layers together took the step from 31% to 47% MFU and its memory from 24 to 12 GiB, and einsum
attention ran out of memory at batch 16 x seq 1024 where cuDNN fits 64. On CPU, `blockwise` attention
(models/blockwise.py: einsum up to blockwise.MIN_SEQ positions, causal blocks with an online softmax beyond): at
SmolLM2-135M batch 8 x seq 512 the step fell from 16.3 to 8.0 s and its temporaries from 9.8 to 5.8 GiB
(docs/notes/issue-14-session8.md). Elsewhere the defaults stay: einsum attention (TPU, other GPUs) and the scanned
layer loop (XLA:CPU; fast compiles; what the TPU AOT check compiles).
"""

from __future__ import annotations

import dataclasses

AUTO = "auto"
ATTENTION = ("einsum", "blockwise", "xla", "cudnn", AUTO)
LAYER_LOOP = ("scan", "unroll", AUTO)


@dataclasses.dataclass(frozen=True)
class KernelChoice:
  attention: str
  scan_layers: bool
  requested: tuple[str, str]
  reason: str

  def as_dict(self) -> dict:
    return {
      "attention": self.attention,
      "layer_loop": "scan" if self.scan_layers else "unroll",
      "requested": dict(zip(("attention", "layer_loop"), self.requested)),
      "reason": self.reason,
    }

  def describe(self) -> str:
    att, loop = self.requested
    got = "scan" if self.scan_layers else "unroll"
    return (
      f"kernels: attention {'auto -> ' if att == AUTO else ''}{self.attention}, layer loop "
      f"{'auto -> ' if loop == AUTO else ''}{got}" + (f" ({self.reason})" if self.reason else "")
    )


def is_nvidia(device) -> bool:
  return device.platform == "gpu" and "cuda" in str(getattr(device.client, "platform_version", "")).lower()


def _blockwise_min_seq() -> int:
  from lazarus_jax.models.blockwise import MIN_SEQ

  return MIN_SEQ


def resolve(attention: str, layer_loop: str, compute_dtype: str, device=None) -> KernelChoice:
  """Resolves `auto` for `device` (default: JAX's first) and the resolved compute dtype."""
  requested = (attention, layer_loop)
  if AUTO not in requested:
    return KernelChoice(attention, layer_loop == "scan", requested, "")
  if device is None:
    import jax

    device = jax.devices()[0]
  nvidia, sixteen = is_nvidia(device), compute_dtype in ("bfloat16", "float16")
  reasons = []
  if attention == AUTO:
    attention = "cudnn" if nvidia and sixteen else "blockwise" if device.platform == "cpu" else "einsum"
    reasons.append(
      "cuDNN fused attention on an NVIDIA GPU in 16-bit"
      if attention == "cudnn"
      else f"blockwise attention on cpu (einsum up to {_blockwise_min_seq()} positions)"
      if attention == "blockwise"
      else f"einsum attention on {device.platform}" + (" in float32" if nvidia else "")
    )
  if layer_loop == AUTO:
    layer_loop = "unroll" if device.platform == "gpu" else "scan"
    reasons.append("unrolled layers on a GPU" if layer_loop == "unroll" else f"scanned layers on {device.platform}")
  return KernelChoice(attention, layer_loop == "scan", requested, "; ".join(reasons))
