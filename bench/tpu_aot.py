"""Per-chip memory of the real training step on TPU slices, without a TPU: compile-only devices from libtpu.

  /work/tpu_venv/bin/python bench/tpu_aot.py [--models tinyllama,llama2-7b] [--topologies v4:2x2x2,v5e:2x2,...]
      [--meshes fsdp,data] [--seq-lens 512] [--max-per-chip 64] [--unpinned] [--json out.json]

Needs `pip install "jax[tpu]"` (libtpu; in a venv of its own: it is not this project's CPU dependency). For each
model shape, slice and mesh layout it compiles `lazarus_jax.training.aot.lower_train_step` (the step `train.run` compiles:
LoRA r32 on v,o, bf16 params and compute, bf16 activations as configs/tinyllama.py has them on a TPU, packed base,
`mesh.rules`, FSDP pinning), reports per-chip arguments / outputs / temporaries at one sequence per chip, and
finds the largest global batch whose step fits the chip's HBM (per-chip batch doubled, then bisected; a batch is
a multiple of the chip count). Mesh layouts: `fsdp` = mesh.shape (1,-1,1), `data` = (-1,1,1) (the shipped
configs' default: weights replicated). `--unpinned` compiles without `sharding.pinned_activations` (the step before
the FSDP fix) for comparison. See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = {
  # TinyLlama-1.1B (the seed's model) and a Llama-2-7B shape.
  "tinyllama": dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4
  ),
  "llama2-7b": dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32
  ),
}
MESHES = {"fsdp": (1, -1, 1), "data": (-1, 1, 1)}
GIB = 2**30


def model_config(name: str, activation_dtype: str, remat: str):
  from lazarus_jax.models.model import LlamaConfig

  hf = dict(
    MODELS[name], model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=4096
  )
  return LlamaConfig.from_hf(hf, param_dtype="bfloat16", compute_dtype="bfloat16", activation_dtype=activation_dtype, remat=remat)


def measure(cfg, topology: str, mesh_shape, batch: int, seq_len: int, unpinned: bool) -> dict:
  from lazarus_jax.models import sharding
  from lazarus_jax.training import aot

  mesh = sharding.make_mesh(mesh_shape, aot.tpu_devices(topology))
  ctx = contextlib.nullcontext()
  if unpinned:  # the step as it was before `pinned_activations`
    ctx = _patched(sharding, "pinned_activations", lambda mesh, rules: contextlib.nullcontext())
  t0 = time.perf_counter()
  with ctx:
    out = aot.compile_memory(cfg, aot.StepSpec(batch, seq_len), mesh, hbm=aot.hbm_bytes(topology))
  out.update(batch=batch, per_chip=batch // len(mesh.devices.flat), compile_s=round(time.perf_counter() - t0, 1))
  return out


@contextlib.contextmanager
def _patched(module, name, value):
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


def largest_batch(fits, max_per_chip: int) -> int:
  """The largest per-chip batch k in 1..max_per_chip with fits(k) (assumed monotone); 0 if none."""
  lo, hi = 0, 1
  while hi <= max_per_chip and fits(hi):
    lo, hi = hi, hi * 2
  hi = min(hi, max_per_chip + 1)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def fmt(m: dict) -> str:
  if "error" in m:
    return f"batch {m['batch']}: does not compile: {m['error'][:160]}"
  return (
    f"batch {m['batch']} ({m['per_chip']}/chip): arguments {m['arguments'] / GIB:.2f}, outputs "
    f"{m['outputs'] / GIB:.2f}, temporaries {m['temporaries'] / GIB:.2f}, peak {m['peak'] / GIB:.2f} GiB "
    f"-> {'fits' if m['fits'] else 'does not fit'} ({m['compile_s']} s)"
  )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--models", default="tinyllama,llama2-7b")
  p.add_argument("--topologies", default="v4:2x2x2,v5e:2x2,v5e:4x4,v5p:2x2x4")
  p.add_argument("--meshes", default="fsdp", help="comma list of fsdp, data")
  p.add_argument("--seq-lens", default="512")
  p.add_argument("--activation-dtype", default="bfloat16")
  p.add_argument("--remat", default="none")
  p.add_argument("--max-per-chip", type=int, default=64, help="stop the batch search here")
  p.add_argument("--no-search", action="store_true", help="only one sequence per chip")
  p.add_argument("--unpinned", action="store_true", help="without sharding.pinned_activations (before the fix)")
  p.add_argument("--json", default="")
  a = p.parse_args()

  import jax

  from lazarus_jax.training import aot

  results = {
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "jax": jax.__version__,
    "command": " ".join(sys.argv),
    "activation_dtype": a.activation_dtype,
    "remat": a.remat,
    "pinned": not a.unpinned,
    "hbm_gib": aot.HBM_GIB,
    "runs": [],
  }
  for model in a.models.split(","):
    cfg = model_config(model, a.activation_dtype, a.remat)
    for topology in a.topologies.split(","):
      devices = aot.tpu_devices(topology)
      n, hosts = len(devices), len({d.process_index for d in devices})
      for layout in a.meshes.split(","):
        for seq_len in (int(s) for s in a.seq_lens.split(",")):
          head = (
            f"{model} on {topology} ({n} chips, {hosts} host{'s' * (hosts > 1)}, {devices[0].device_kind}, "
            f"HBM {aot.HBM_GIB[topology.split(':')[0]]:.0f} GiB/chip), mesh {layout} {MESHES[layout]}, "
            f"seq {seq_len}"
          )
          print(head, flush=True)
          tried = {}

          def fits(k):
            tried[k] = measure(cfg, topology, MESHES[layout], k * n, seq_len, a.unpinned)
            print("  " + fmt(tried[k]), flush=True)
            return tried[k]["fits"]

          if not fits(1):
            best = 0
          elif a.no_search:
            best = 1
          else:
            best = largest_batch(lambda k: tried[k]["fits"] if k in tried else fits(k), a.max_per_chip)
          row = {
            "model": model,
            "topology": topology,
            "chips": n,
            "hosts": hosts,
            "device_kind": devices[0].device_kind,
            "mesh": layout,
            "mesh_shape": MESHES[layout],
            "seq_len": seq_len,
            "one_per_chip": tried[1],
            "largest_batch": best * n,
            "largest_per_chip": best,
            "capped": bool(best) and best >= a.max_per_chip,
            "at_largest": tried.get(best),
            "tried": sorted(tried.values(), key=lambda m: m["batch"]),
          }
          results["runs"].append(row)
          print(
            f"  -> largest batch {row['largest_batch']} ({row['largest_per_chip']}/chip)" + (" (search cap)" if row["capped"] else ""),
            flush=True,
          )
          if a.json:  # written as it goes: a long search keeps what it found
            with open(a.json, "w") as f:
              json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
