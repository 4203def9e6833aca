"""What the sweep's persistent compilation cache saves: one micro sweep, run in a fresh process with and without it.

  python bench/sweep_compile_cache.py [--config configs/tiny.py] [--seeds 0,1] [--steps 2]

Each side runs `sweep.run` on sft + dual arms over the seeds (symbolic, one depth, evaluation on) in its own
process and empty directory, and reports the sweep's wall time and each arm's train-step compile seconds
(train_summary.json). The cache is on by default (`lazarus_jax/training/compile_cache.py`); off: LAZARUS_JAX_COMPILATION_CACHE=0.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
sys.path.insert(0, "configs")
import importlib.util
spec = importlib.util.spec_from_file_location("cfg", sys.argv[1]); m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
c = m.get_config()
c.sweep.weights, c.sweep.formats, c.sweep.layer_fractions, c.sweep.seeds = "0,0.7", "symbolic", "0.55", sys.argv[3]
c.sweep.include_base = False
c.train.steps = int(sys.argv[4]); c.train.checkpoint_every = c.train.steps; c.train.table_steps = (c.train.steps,)
c.eval.max_examples_per_op = 8
from lazarus_jax.reporting import sweep
t0 = time.perf_counter()
out = sweep.run(c, sys.argv[2])
print(json.dumps({"wall_s": time.perf_counter() - t0, "arms": out["ran"]}))
"""


def side(config: str, seeds: str, steps: int, cache: bool) -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  work = tempfile.mkdtemp(prefix="sweep_cache_")
  env = dict(os.environ, LAZARUS_JAX_COMPILATION_CACHE="1" if cache else "0")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  p = subprocess.run([sys.executable, "-c", CHILD, config, work, seeds, str(steps)], cwd=root, env=env, capture_output=True, text=True)
  if p.returncode:
    sys.exit(p.stderr[-2000:])
  out = json.loads(p.stdout.strip().splitlines()[-1])
  compiles = {}
  for path in sorted(glob.glob(os.path.join(work, "arms", "*", "train_summary.json"))):
    with open(path) as f:
      compiles[os.path.basename(os.path.dirname(path))] = round(json.load(f)["compile_seconds"], 2)
  return {"cache": cache, "wall_s": round(out["wall_s"], 1), "train_step_compile_s": compiles}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/tiny.py")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--steps", type=int, default=2)
  a = p.parse_args()
  for cache in (False, True):
    print(json.dumps(side(a.config, a.seeds, a.steps, cache)), flush=True)
  print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
  main()
