"""A persistent XLA compilation cache for runs that compile the same programs again (sweep arms, resumes).

Every arm of a sweep with the same shapes compiles the same train step, lens and decoding programs (the loss
weight and seed are arrays, not constants), but each arm builds new Python closures, so JAX's in-memory cache
misses. The on-disk cache is keyed by the program itself and hits. Measured: bench/RESULTS.md (session 5).
"""

from __future__ import annotations

import os


def enable(directory: str) -> str | None:
  """Caches compiled programs in `directory` unless the user chose a cache (JAX_COMPILATION_CACHE_DIR or
  `jax_compilation_cache_dir`) or turned it off (LAZARUS_JAX_COMPILATION_CACHE=0). Returns the directory in use."""
  import jax

  if os.environ.get("LAZARUS_JAX_COMPILATION_CACHE", "1") == "0":
    return None
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # CPU compiles are short, and add up
  try:  # JAX binds the cache at the process's first compile: in a notebook that may have happened already
    from jax._src import compilation_cache

    compilation_cache.reset_cache()
  except (ImportError, AttributeError):
    pass
  return directory
