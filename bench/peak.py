"""This machine's measured matmul peak: a large jitted square matmul, best of several runs.

python bench/peak.py [--n 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time


def matmul_rate(m: int, k: int, n: int, dtype: str = "float32", reps: int = 10) -> float:
  """FLOP/s of the best of `reps` jitted [m,k]@[k,n] matmuls (float32 accumulate)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (m, k), dtype)
  b = jax.random.normal(jax.random.key(1), (k, n), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(f(a, b))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    best = min(best, time.perf_counter() - t0)
  return 2 * m * k * n / best


def matmul_peak(dtype: str = "float32", n: int = 2048, reps: int = 10) -> float:
  """This machine's peak: the rate of a large square matmul."""
  return matmul_rate(n, n, n, dtype, reps)


if __name__ == "__main__":
  p = argparse.ArgumentParser()
  p.add_argument("--n", type=int, default=2048)
  p.add_argument("--json", default="")
  a = p.parse_args()
  out = {dt: matmul_peak(dt, a.n) for dt in ("float32", "bfloat16")}
  print(json.dumps(out))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f)
