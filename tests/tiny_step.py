"""A jitted training step on four fixed symbolic examples, for tests that compare steps on the tiny model."""

import jax
import jax.numpy as jnp
import optax

from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data.targets import resolve_targets
from lazarus_jax.training.loop import make_train_step

PAIRS = [(12, "multiply", 5), (23, "add", 45), (50, "subtract", 23), (48, "divide", 2)]


def step_and_inputs(pretrained, graphdef, lora, lr: float = 1e-2):
  """(jitted step, initial state, batch, class ids): AdamW at `lr`, classifier layer 2, one micro-batch."""
  targets = resolve_targets(pretrained.tokenizer)
  examples = [data_lib.make_example(a, op, b, "symbolic") for a, op, b in PAIRS]
  encoded = data_lib.encode_examples(pretrained.tokenizer, examples, append_eos=True)
  batch = data_lib.collate(encoded, [e.operation for e in examples], 16, 8, pretrained.tokenizer.pad_id, label_names=targets.labels)
  tx = optax.adamw(lr)
  state = {
    "lora": lora,
    "opt_state": tx.init(lora),
    "step": jnp.zeros((), jnp.int32),
    "nonfinite": jnp.zeros((), jnp.int32),
    "skipped": jnp.zeros((), jnp.int32),
  }
  step = jax.jit(make_train_step(graphdef, tx, optax.constant_schedule(lr), 2, False, 1))
  return step, state, batch, jnp.asarray(targets.token_ids, jnp.int32)
