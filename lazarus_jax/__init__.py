"""lazarus_jax: dual-reward LoRA training and logit-lens interpretability for Llama-family models in JAX."""

__version__ = "0.1.0"
