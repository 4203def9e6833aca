"""Transparent huge pages for the command-line tools (Linux with glibc).

XLA:CPU allocates every call's temporary buffers afresh (one ~240 MB block per training step of the embedded
default) and glibc hands such blocks back to the kernel when they are freed, so each step faults the same memory
in again 4 KiB at a time: ~60k page faults and ~15% of a bf16 SmolLM2 step on a 2-core machine (bench/RESULTS.md).
glibc's `glibc.malloc.hugetlb=1` tunable makes malloc ask for transparent huge pages (2 MiB) instead.

A tunable is read only when the process starts, so a tool launched as `python -m lazarus_jax.<tool>` (train,
evaluate, sweep) re-executes itself once with it set (same pid, same arguments): the first statement of those
modules, under `if __name__ == "__main__"`, before their heavy imports.
Nothing happens when the package is imported as a library, when the tunable is already set, on other platforms,
or with LAZARUS_JAX_HUGEPAGES=0.
"""

from __future__ import annotations

import os
import platform
import sys

# Not the lens tool: its short-lived vocabulary-sized buffers came out ~7% slower with huge pages (more time
# zeroing 2 MiB pages than saved on faults), where the training step is ~15% faster.
CLI_MODULES = ("lazarus_jax.train", "lazarus_jax.evaluate", "lazarus_jax.sweep")
TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def launched_module(argv: list[str]) -> str | None:
  """The module of a `python [options] -m <module> ...` command line, else None."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "-m":
      return argv[i + 1] if i + 1 < len(argv) else None
    if arg.startswith("-m"):
      return arg[2:]
    if arg == "-c" or not arg.startswith("-"):  # a script or -c program: not a module launch
      return None
  return None


def reexec_env(environ: dict, argv: list[str]) -> dict | None:
  """The environment to re-execute with, or None when no re-execution is wanted."""
  if environ.get("LAZARUS_JAX_HUGEPAGES", "1") == "0" or launched_module(argv) not in CLI_MODULES:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:  # set already: by an earlier re-execution or by the user
    return None
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return None
  try:
    with open(THP_SETTING, encoding="ascii", errors="replace") as f:
      if "[never]" in f.read():
        return None
  except OSError:
    return None
  return dict(environ, GLIBC_TUNABLES=":".join(t for t in (tunables, TUNABLE) if t))


def maybe_reexec() -> None:
  argv = list(getattr(sys, "orig_argv", []))
  env = reexec_env(dict(os.environ), argv)
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
