"""lazarus_jax: dual-reward LoRA training and logit-lens interpretability for Llama-family models in JAX."""

__version__ = "0.1.0"

# The notebook API (api.py), imported on first use: `import lazarus_jax` alone stays light.
_API = (
  "load",
  "encode",
  "residual_stream",
  "readout_features",
  "logit_lens",
  "fit_probes",
  "generate_text",
  "plot_lens",
  "class_directions",
  "intervene",
  "position_lens",
  "Loaded",
  "Lens",
  "Intervention",
)


def __getattr__(name):
  if name in _API:
    from lazarus_jax import api

    return getattr(api, name)
  raise AttributeError(f"module 'lazarus_jax' has no attribute {name!r}")
