"""The seed's run: TinyLlama-1.1B-Chat, LoRA r32/alpha 64 on v,o, classifier at layer 12, w 0.7, 1000 steps.

  python -m lazarus_jax.train --config configs/tinyllama.py --workdir runs/tinyllama \
      --config.model.path=/path/to/TinyLlama-1.1B-Chat-v1.0   # or the hub id where a network exists
"""

from lazarus_jax.config import default_config


def get_config():
  c = default_config()
  c.model.source = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"  # 22 layers -> classifier layer int(22 * 0.55) = 12
  # auto (lazarus_jax/models/dtypes.py): bf16 weights and matmuls where native (TPU, GPU, a CPU with AMX/AVX512-BF16:
  # the checkpoint's own dtype; frozen, so no float32 master copy is needed), float32 elsewhere; a bf16 residual
  # stream and matmul outputs on TPU/GPU (+22% tokens/s on an H200, bench/RESULTS.md), float32 on CPU.
  c.model.param_dtype = "auto"
  c.model.compute_dtype = "auto"
  c.model.activation_dtype = "auto"
  return c
