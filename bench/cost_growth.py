"""How cost grows (issue 14 item 5): step time and peak RSS against batch, sequence length and the adapted layer range,
ours beside torch + PEFT, one invocation.

  python bench/cost_growth.py [--batches 8,32,128] [--seqs 16,128,512] [--layer-starts 0,8,16] \
      [--jax-steps 5] [--torch-steps 3] [--point-budget-s 240] [--json out.json] [--plot out.png]

One axis at a time around the base point (batch 8, seq 16 -- the embedded default's training shape -- all 30 layers
adapted): batch at seq 16; seq at batch 8 (the default's first training batch padded to `seq` with the pad token,
mask 0 there: every position costs the same in both steps); adapted layers [start, 30) at batch 8 seq 16
(`lora.layer_start` / PEFT's `layers_to_transform`: both backward passes stop at the lowest adapted layer).
Embedded SmolLM2-135M, LoRA r32/alpha 64 on v,o, dual-reward loss at layer 16, dtype `auto` on our side (what the
shipped configs run; torch runs the compute dtype it resolved to, under bf16 autocast with bf16 base weights).
Each side of each point runs in its own subprocess (bench/ours.py, bench/torch_side.py), so each peak RSS is its
own; ours: compile, 1 untimed step, `--jax-steps` timed; torch: its first step (its warm-up), `--torch-steps` timed;
median step time. A point whose estimated wall time (the last measured point's step time on that axis, scaled by
tokens, times the steps) exceeds `--point-budget-s` is dropped and recorded as such. The JSON is rewritten after
every point. See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from bench_train import sub  # noqa: E402

N_LAYERS = 30


def grid(batches, seqs, starts, base=(8, 16, 0)):
  """[(axes, batch, seq, layer_start)], the base point first and once (it belongs to every axis)."""
  points = {base: ["batch", "seq", "layers"]}
  for b in batches:
    points.setdefault((b, base[1], base[2]), []).append("batch")
  for s in seqs:
    points.setdefault((base[0], s, base[2]), []).append("seq")
  for st in starts:
    points.setdefault((base[0], base[1], st), []).append("layers")
  for k in points:
    points[k] = sorted(set(points[k]))
  # cheap first: the layer range, then by tokens
  return sorted(((v, *k) for k, v in points.items()), key=lambda p: (p[1:] != base, p[1] * p[2], -p[3]))


def plot(results: dict, path: str):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  axes_def = [
    ("batch", "batch (seq 16, 30 layers adapted)", lambda p: p["batch"]),
    ("seq", "sequence length (batch 8, 30 layers adapted)", lambda p: p["seq_len"]),
    ("layers", "adapted layers = backward depth (batch 8, seq 16)", lambda p: N_LAYERS - p["lora_layer_start"]),
  ]
  fig, ax = plt.subplots(2, 3, figsize=(15, 8))
  for j, (name, label, x_of) in enumerate(axes_def):
    pts = sorted((p for p in results["points"] if name in p["axes"] and "dropped" not in p), key=x_of)
    xs = [x_of(p) for p in pts]
    for side, style in (("jax", "o-"), ("torch", "s--")):
      tag = "ours (JAX)" if side == "jax" else "torch + PEFT"
      ax[0, j].plot(xs, [p[side]["step_s_median"] for p in pts], style, label=tag)
      ax[1, j].plot(xs, [p[side]["peak_rss_mib"] for p in pts], style, label=tag)
    for x, p in zip(xs, pts):
      ax[0, j].annotate(f"x{p['torch_over_ours_step']:.2f}", (x, p["jax"]["step_s_median"]), fontsize=8)
    if name != "layers":
      ax[0, j].set_xscale("log", base=2)
      ax[1, j].set_xscale("log", base=2)
      ax[0, j].set_yscale("log")
    ax[0, j].set_title(label, fontsize=10)
    ax[1, j].set_xlabel(label, fontsize=9)
    ax[0, j].set_ylabel("step s (median)")
    ax[1, j].set_ylabel("peak RSS MiB")
    dropped = [x_of(p) for p in results["points"] if name in p["axes"] and "dropped" in p]
    if dropped:
      ax[0, j].text(0.02, 0.92, f"dropped (time): {dropped}", transform=ax[0, j].transAxes, fontsize=8)
    for a in ax[:, j]:
      a.grid(True, alpha=0.3)
      a.legend(fontsize=8)
  fig.suptitle(
    f"SmolLM2-135M LoRA r32 v,o train step, dtype auto -> {results.get('resolved', '?')}; "
    f"{results['machine']} ({' '.join(results['cpu_flags_short'])}); {results['date']}; labels: torch/ours step time",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batches", default="8,32,128")
  p.add_argument("--seqs", default="16,128,512")
  p.add_argument("--layer-starts", default="0,8,16")
  p.add_argument("--jax-steps", type=int, default=5)
  p.add_argument("--torch-steps", type=int, default=3)
  p.add_argument("--point-budget-s", type=float, default=240.0, help="drop a point estimated to take longer")
  p.add_argument("--attention", default="", help="our side's model.attention (default: the config's, auto)")
  p.add_argument("--json", default="")
  p.add_argument("--plot", default="")
  a = p.parse_args()
  ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
  env = common.side_env("lazarus_jax.train")

  from lazarus_jax.models import dtypes

  flags = dtypes.cpu_flags()
  native, why = dtypes.native_bf16("cpu", flags)
  results = {
    "machine": common.machine(),
    "date": datetime.date.today().isoformat(),
    "started": datetime.datetime.now().isoformat(timespec="seconds"),
    "command": " ".join(sys.argv),
    "cpu_flags": sorted(f for f in flags if f.startswith(("amx", "avx512"))),
    "cpu_flags_short": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")),
    "native_bf16": native,
    "native_bf16_reason": why,
    "glibc_tunables": env.get("GLIBC_TUNABLES"),
    "model": "embedded SmolLM2-135M, LoRA r32/alpha 64 v,o, dual-reward loss at layer 16, dtype auto",
    "jax_steps": a.jax_steps,
    "torch_steps": a.torch_steps,
    "points": [],
  }
  print(f"{results['started']}  {results['machine']}  load {common.load_avg()}")
  print(f"CPU flags: {' '.join(results['cpu_flags']) or 'no AMX/AVX-512'}; native bf16: {native} ({why})")
  tmp = tempfile.mkdtemp()
  last = {}  # axis -> (tokens, jax step s, torch step s) of its last measured point
  for axes, b, s, start in grid(ints(a.batches), ints(a.seqs), ints(a.layer_starts)):
    point = {"axes": axes, "batch": b, "seq_len": s, "lora_layer_start": start, "load_before": common.load_avg()}
    tag = f"batch {b:4d} seq {s:4d} layers [{start},{N_LAYERS})"
    known = [last[x] for x in axes if x in last]
    if known:
      tok0, j0, t0 = max(known)
      f = b * s / tok0
      est = f * (j0 * (a.jax_steps + 1) + t0 * (a.torch_steps + 1)) + 60  # + set-up and compile, both sides
      point["estimated_s"] = est
      if est > a.point_budget_s:
        point["dropped"] = f"estimated {est:.0f} s > --point-budget-s {a.point_budget_s:.0f}"
        print(f"{tag}: dropped ({point['dropped']})", flush=True)
        results["points"].append(point)
        continue
    t_point = time.perf_counter()
    batch = os.path.join(tmp, f"batch_{b}_{s}.npz")
    common.write_batch(batch, b, seq_len=s)
    ours = sub(
      "ours.py",
      *("--dtype", "auto", "--param-dtype", "auto", "--activation-dtype", "auto"),
      *("--batch", batch, "--steps", str(a.jax_steps), "--warmup", "1", "--lora-layer-start", str(start)),
      *(("--attention", a.attention) if a.attention else ()),
      env=env,
    )
    point["load_between"] = common.load_avg()
    torch_dtype = ours["resolved"]["compute"]
    results["resolved"] = "/".join(ours["resolved"][k] for k in ("param", "compute", "activation"))
    theirs = sub(
      "torch_side.py",
      *("--dtype", torch_dtype, "--batch", batch, "--steps", str(a.torch_steps), "--warmup", "0"),
      *("--lora-layer-start", str(start)),
      env=env,
    )
    point.update(
      jax=ours,
      torch=theirs,
      load_after=common.load_avg(),
      wall_s=time.perf_counter() - t_point,
      torch_over_ours_step=theirs["step_s_median"] / ours["step_s_median"],
      torch_over_ours_rss=theirs["peak_rss_mib"] / ours["peak_rss_mib"],
    )
    for x in axes:
      last[x] = (b * s, ours["step_s_median"], theirs["step_s_median"])
    results["points"].append(point)
    print(
      f"{tag}: ours {ours['step_s_median']:.3f} s {ours['peak_rss_mib']:.0f} MiB (compile {ours['compile_s']:.1f} s) | "
      f"torch {theirs['step_s_median']:.3f} s {theirs['peak_rss_mib']:.0f} MiB | torch/ours step "
      f"x{point['torch_over_ours_step']:.2f} RSS x{point['torch_over_ours_rss']:.2f} | losses "
      f"{ours['first_losses'][0]:.4f} / {theirs['first_losses'][0]:.4f} | load {point['load_before']} -> "
      f"{point['load_after']} | {point['wall_s']:.0f} s",
      flush=True,
    )
    if a.json:
      with open(a.json, "w") as f:
        json.dump(results, f, indent=2)
  results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
  print(f"load at end {common.load_avg()}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(results, f, indent=2)
  if a.plot:
    plot(results, a.plot)


if __name__ == "__main__":
  main()
