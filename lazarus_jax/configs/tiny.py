"""A random-weight 4-layer Llama with a small tokenizer: CPU tests and smoke runs in seconds.

python -m lazarus_jax.train --config configs/tiny.py --workdir runs/tiny
"""

from lazarus_jax.config import default_config


def get_config():
  c = default_config()
  c.model.source = "tiny-random"
  c.lora.rank = 4
  c.lora.alpha = 8.0
  c.classifier.layer = 2
  c.data.n_eval_per_op = 16
  c.train.steps = 20
  c.train.warmup_steps = 2
  c.train.lr = 1e-2
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.table_steps = (5, 10, 20)
  c.eval.max_examples_per_op = 16
  c.eval.max_new_tokens = 4
  return c
