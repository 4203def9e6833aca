"""What produced a result: seed, config, code commit, package versions, devices (ORIGINAL_DEFECTS #15)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess

RUNTIME_ENV = ("GLIBC_TUNABLES", "XLA_FLAGS", "JAX_PLATFORMS", "LIBTPU_INIT_ARGS")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tokenizers", "gguf", "lazarus_jax")


def git_commit() -> dict:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
    dirty = bool(
      subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10
      ).stdout.strip()
    )
    return {"commit": commit or "unknown", "dirty": dirty}
  except (OSError, subprocess.SubprocessError):
    return {"commit": "unknown", "dirty": None}


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset:
  """The CPU's feature flags (x86 `flags`, Arm `Features`); empty where unreadable (not Linux)."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
          return frozenset(value.split())
  except OSError:
    pass
  return frozenset()


# The CPU features that decide dtypes and speed (models/dtypes.py): recorded with every result, as timings need them.
NOTABLE_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "bf16", "sve")


def cpu(path: str = "/proc/cpuinfo") -> dict:
  """{model, flags}: the CPU's model name and which of NOTABLE_CPU_FLAGS it has."""
  model = platform.processor() or None
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
          break
  except OSError:
    pass
  flags = cpu_flags(path)
  return {"model": model, "flags": [f for f in NOTABLE_CPU_FLAGS if f in flags]}


def versions() -> dict:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  out["python"] = platform.python_version()
  return out


def collect(config=None, dtypes: dict | None = None) -> dict:
  """`dtypes`: the model dtypes the run resolved (`Pretrained.dtypes`: `auto` in the config says too little)."""
  import jax

  devices = jax.devices()
  return {
    "seed": None if config is None else config.seed,
    "config": None if config is None else config.to_dict(),
    "dtypes": dtypes,
    "git": git_commit(),
    "versions": versions(),
    "devices": {
      "platform": devices[0].platform,
      "kind": devices[0].device_kind,
      "count": len(devices),
      "process_count": jax.process_count(),
    },
    "host": platform.node(),
    "cpu": cpu(),
    # Settings outside the config that change speed or numerics (GLIBC_TUNABLES: see hugepages.py).
    "runtime_env": {k: os.environ.get(k) for k in RUNTIME_ENV},
    "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
