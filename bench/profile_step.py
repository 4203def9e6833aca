"""Where the training step's time goes on CPU (issue 14 item 4): XLA:CPU's own per-thunk trace events, grouped.

  python bench/profile_step.py [--dtype float32] [--steps 5] [--layer-loop scan|unroll] [--json out.json]

The exact step `lazarus_jax.train` compiles (bench/ours.py's build, the embedded default, batch 8), traced with
`jax.profiler` for a few steps after warm-up. Each thunk XLA:CPU runs is one trace event named after its HLO
instruction; the instructions are classed from the compiled HLO (a dot, or a fusion whose computation holds one,
is "matmul"; copies and transposes "layout"; the rest by opcode). Times are summed per class and divided by the
steps traced; thunks of one step may overlap on the two cores, so the classes' sum can pass the wall time.

Beside it: this machine's matmul peak (bench/peak.py) and the same peak at the step's own matmul shapes (the
largest of them, run alone), so "% of peak" can be read against what those shapes allow.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

# `%name = f32[...]{...} opcode(...)`, and `calls=%comp` / `to_apply=%comp` / `body=%comp` for what it runs
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s([a-z][\w\-]*)\(")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")


def hlo_classes(hlo_text: str) -> dict[str, str]:
  """{instruction name: class} for every instruction of the compiled module."""
  comp_ops: dict[str, set] = collections.defaultdict(set)
  instr: dict[str, tuple[str, list[str]]] = {}
  comp = None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and "=" not in line.split("{")[0]:
      comp = m.group(1)
      continue
    m = _INSTR.match(line)
    if m:
      comp_ops[comp].add(m.group(3))
      instr[m.group(1)] = (m.group(3), _CALLS.findall(line))
  out = {}
  for name, (opcode, subs) in instr.items():
    inner = set().union(*(comp_ops.get(s, set()) for s in subs)) if subs else set()
    if opcode in ("dot", "convolution") or (opcode in ("fusion", "custom-call") and inner & {"dot", "convolution"}):
      out[name] = "matmul"
    elif opcode in ("copy", "transpose") or (opcode == "fusion" and inner <= {"parameter", "copy", "transpose", "bitcast"}):
      out[name] = "layout"
    elif opcode in ("while", "conditional", "call"):
      out[name] = "control"
    elif opcode == "fusion" and inner & {"reduce", "reduce-window"}:
      out[name] = "reduce fusion"
    elif opcode == "fusion" and inner & {"dynamic-slice", "dynamic-update-slice", "slice", "concatenate", "pad", "gather", "scatter"}:
      out[name] = "slice/update fusion"
    elif opcode == "fusion":
      out[name] = "elementwise fusion"
    else:
      out[name] = opcode
  return out


def trace_events(trace_dir: str) -> list[dict]:
  paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not paths:
    raise SystemExit(f"no perfetto trace under {trace_dir}")
  data = json.load(gzip.open(sorted(paths)[-1]))
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X" and "dur" in e]


def matmul_shapes(hlo_text: str) -> list[tuple[int, int, int]]:
  """Distinct (m, k, n) of the module's 2-D dots, largest first (the operands' shapes come from their definitions
  in the same computation: fused dots print bare operand names)."""
  shapes, defined = set(), {}
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*f32\[([\d,]*)\]", line)
    if not m:
      continue
    dims = [int(x) for x in m.group(2).split(",") if x]
    defined[m.group(1)] = dims
    d = re.search(r"\sdot\(%?([\w.\-]+),\s*%?([\w.\-]+)\).*lhs_contracting_dims=\{(\d+)\}", line)
    lhs = defined.get(d.group(1)) if d else None
    if d and lhs and len(dims) == 2 and len(lhs) == 2:
      shapes.add((dims[0], lhs[int(d.group(3))], dims[1]))
  return sorted(shapes, key=lambda s: -s[0] * s[1] * s[2])


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dtype", default="float32")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--layer-loop", default="", help="model.layer_loop: scan | unroll (default: the config's)")
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--json", default="")
  a = p.parse_args()

  import jax
  import ours
  from peak import matmul_peak, matmul_rate

  print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {common.machine()}  load {common.load_avg()}")
  with tempfile.TemporaryDirectory() as tmp:
    batch_np = common.write_batch(os.path.join(tmp, "batch.npz"))
    compiled, args, compile_s, cfg = ours.build(
      a.dtype, batch_np, param_dtype=a.dtype, activation_dtype="float32", layer_loop=a.layer_loop
    )
    state, rest = [args[0]], args[1:]

    def one():
      state[0], _ = compiled(state[0], *rest)
      jax.block_until_ready(state[0])

    untraced = sum(common.time_calls(one, a.steps)) / a.steps  # the mean step, after 2 warm-up steps
    trace_dir = os.path.join(tmp, "trace")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      traced = sum(common.time_calls(one, a.steps, warmup=0)) / a.steps
    events = trace_events(trace_dir)
  hlo = compiled.as_text()
  classes = hlo_classes(hlo)
  by_class: dict = collections.Counter()
  by_name: dict = collections.Counter()
  unmatched = collections.Counter()
  for e in events:
    name = e["name"]
    if name in classes:
      by_class[classes[name]] += e["dur"] / 1e6 / a.steps
      by_name[name] += e["dur"] / 1e6 / a.steps
    elif not name.startswith(("$", "end: ")):
      unmatched[name] += e["dur"] / 1e6 / a.steps
  flops = common.model_flops_per_step(cfg, batch_np, lora_rank=32)
  peak = matmul_peak("float32")
  shapes = matmul_shapes(hlo)[:5]
  shaped = [(s, matmul_rate(*s, reps=20)) for s in shapes]
  total = sum(by_class.values())
  print(f"step {untraced * 1e3:.1f} ms untraced, {traced * 1e3:.1f} ms traced; compile {compile_s:.1f} s")
  print(f"model FLOPs/step {flops / 1e9:.1f} G -> {flops / untraced / 1e9:.1f} GFLOP/s = {flops / untraced / peak:.0%} of the")
  print(f"f32 matmul peak {peak / 1e9:.1f} GFLOP/s (2048^3); the step's largest dots alone:")
  for (m, k, n), f in shaped:
    print(f"  [{m}x{k}] @ [{k}x{n}]: {f / 1e9:.1f} GFLOP/s ({f / peak:.0%} of peak)")
  print(f"thunk time per step by class (sum {total * 1e3:.1f} ms):")
  for cls, t in by_class.most_common():
    print(f"  {cls:22s} {t * 1e3:8.1f} ms  {t / total:6.1%}")
  print(f"top {a.top} instructions:")
  for name, t in by_name.most_common(a.top):
    print(f"  {name:40s} {classes[name]:20s} {t * 1e3:8.1f} ms")
  out = {
    "machine": common.machine(),
    "load": common.load_avg(),
    "dtype": a.dtype,
    "resolved": {"param": cfg.param_dtype, "compute": cfg.compute_dtype, "attention": cfg.attention},
    "step_s": untraced,
    "traced_step_s": traced,
    "compile_s": compile_s,
    "model_flops_per_step": flops,
    "f32_peak_flops": peak,
    "shape_peaks": [{"mkn": list(s), "flops": f} for s, f in shaped],
    "by_class_s": dict(by_class),
    "top": [{"name": n, "class": classes[n], "s": t} for n, t in by_name.most_common(a.top)],
    "other_events_s": dict(unmatched.most_common(10)),
  }
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
