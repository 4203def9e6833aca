"""Training throughput: our jitted step vs PyTorch + PEFT, float32 and bfloat16, one invocation.

  python bench/bench_train.py [--jax-steps 20] [--torch-steps 5] [--dtypes float32,bfloat16,auto] [--json out.json]

Each side runs in its own subprocess (so each peak RSS is its own), on the same batch (the embedded default's
first training batch, batch 8, written once to an .npz). Also measures this machine's float32 matmul peak in the
same run and reports our step's model FLOPs/s as a fraction of it. `auto` is the shipped configs' setting
(param, compute and activation dtypes resolved for this machine, lazarus_jax/models/dtypes.py): torch runs the compute
dtype it resolved to. The results JSON records the CPU's bf16-related flags and what `auto` makes of them.
See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def sub(script: str, *args: str, env: dict | None = None) -> dict:
  """Runs bench/<script> in a fresh process; returns its JSON result."""
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    out = f.name
  cmd = [sys.executable, os.path.join(common.HERE, script), *args, "--json", out]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT, env=env)
  if proc.returncode:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"{script} {' '.join(args)} failed (exit {proc.returncode})")
  with open(out) as f:
    result = json.load(f)
  os.remove(out)
  return result


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--jax-steps", type=int, default=20)
  p.add_argument("--torch-steps", type=int, default=5)
  p.add_argument("--dtypes", default="float32,bfloat16,auto")
  p.add_argument("--no-hugepages", action="store_true", help="run both sides without glibc's huge-page tunable")
  p.add_argument("--json", default="")
  a = p.parse_args()
  env = common.side_env(None if a.no_hugepages else "lazarus_jax.train")

  from lazarus_jax.models import dtypes

  flags = dtypes.cpu_flags()
  cpu_flags = sorted(f for f in flags if f.startswith(("amx", "avx512")))  # what decides bf16 on XLA:CPU
  native, why = dtypes.native_bf16("cpu", flags)
  print(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {common.machine()}  load {common.load_avg()}")
  print(f"CPU flags: {' '.join(cpu_flags) or 'no AMX/AVX-512'}; native bf16: {native} ({why})")
  print(f"both sides run with GLIBC_TUNABLES={env.get('GLIBC_TUNABLES')}")
  batch = os.path.join(tempfile.mkdtemp(), "batch.npz")
  sub_batch = common.write_batch(batch, a.batch_size)
  del sub_batch
  peak = sub("peak.py", env=env)
  print(
    f"measured matmul peak: float32 {peak['float32'] / 1e9:.1f} GFLOP/s, bfloat16 {peak['bfloat16'] / 1e9:.1f} "
    "GFLOP/s (2048^3 jitted dot, best of 10)"
  )
  results = {
    "machine": common.machine(),
    "date": datetime.date.today().isoformat(),
    "peak": peak,
    "runs": [],
    "glibc_tunables": env.get("GLIBC_TUNABLES"),
    "cpu_flags": cpu_flags,
    "native_bf16": native,
    "native_bf16_reason": why,
    "command": " ".join(sys.argv),
  }
  for dtype in a.dtypes.split(","):
    # bf16: the frozen base weights are stored in bf16 on both sides (nothing to keep a float32 master of).
    # auto also resolves the activation dtype; explicit rows keep the float32 residual stream (the CPU default).
    activation = "auto" if dtype == "auto" else "float32"
    ours = sub(
      "ours.py",
      "--dtype",
      dtype,
      "--param-dtype",
      dtype,
      "--activation-dtype",
      activation,
      "--batch",
      batch,
      "--steps",
      str(a.jax_steps),
      env=env,
    )
    torch_dtype = ours["resolved"]["compute"]
    theirs = sub("torch_side.py", "--dtype", torch_dtype, "--batch", batch, "--steps", str(a.torch_steps), env=env)
    theirs["row"] = ours["row"] = dtype
    results["runs"] += [ours, theirs]
    mfu = ours["flops_per_s"] / peak["float32"]
    resolved = "" if dtype != "auto" else " -> " + "/".join(ours["resolved"][k] for k in ("param", "compute", "activation"))
    print(f"\n[{dtype}{resolved}] batch {a.batch_size}" + (f" (torch: {torch_dtype})" if dtype == "auto" else ""))
    print(f"  {'':8s} {'step s (med)':>13s} {'examples/s':>11s} {'compile s':>10s} {'peak RSS MiB':>13s} {'load':>16s}")
    for r in (ours, theirs):
      print(
        f"  {r['side']:8s} {r['step_s_median']:13.3f} {r['examples_per_s']:11.2f} {r['compile_s']:10.1f} "
        f"{r['peak_rss_mib']:13.0f} {r['load']:>16s}"
      )
    print(
      f"  ratio ours/torch: examples/s x{ours['examples_per_s'] / theirs['examples_per_s']:.2f}; compile "
      f"x{ours['compile_s'] / theirs['compile_s']:.2f} (torch: first step); peak RSS "
      f"x{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}"
    )
    print(
      f"  our model FLOPs/step {ours['model_flops_per_step'] / 1e9:.1f} G -> {ours['flops_per_s'] / 1e9:.1f} "
      f"GFLOP/s = {100 * mfu:.0f}% of the measured float32 matmul peak"
      + (f" ({100 * ours['flops_per_s'] / peak['bfloat16']:.0f}% of the bf16 peak)" if torch_dtype == "bfloat16" else "")
    )
    print(f"  first losses: ours {[round(x, 4) for x in ours['first_losses']]}, torch {[round(x, 4) for x in theirs['first_losses']]}")
  print(f"\nload at end {common.load_avg()}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
