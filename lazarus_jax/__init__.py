"""lazarus_jax: dual-reward LoRA training and logit-lens interpretability for Llama-family models in JAX."""

__version__ = "0.1.0"

# A command-line tool (`python -m lazarus_jax.<tool>`) re-executes itself once with glibc's huge-page tunable
# (see hugepages.py); a library import does nothing.
from lazarus_jax import hugepages as _hugepages  # noqa: E402

_hugepages.maybe_reexec()
