import os
import sys

# Simulated CPU devices for the sharding tests; must be set before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
sys.path.insert(0, os.path.dirname(__file__))
