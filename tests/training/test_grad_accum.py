"""Gradient accumulation: 2 micro-batches of 4 give the update of one batch of 8."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data.targets import resolve_targets
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import LoRAParam
from lazarus_jax.training.loop import make_train_step

# Two-digit answers only: every example has the same number of answer tokens.
EQUAL = [
  (12, "multiply", 5),
  (23, "add", 45),
  (50, "subtract", 23),
  (48, "divide", 2),
  (11, "multiply", 3),
  (17, "add", 38),
  (89, "subtract", 34),
  (84, "divide", 7),
]
# The first micro-batch has 1-4 digit answers (short), the second 2-4 (long): a mean of the two micro-batch
# token means differs from the batch's token mean, which is what the answer loss is defined as.
UNEQUAL = [
  (1, "multiply", 5),
  (2, "add", 3),
  (50, "subtract", 49),
  (8, "divide", 8),
  (50, "multiply", 50),
  (45, "multiply", 45),
  (89, "subtract", 34),
  (84, "divide", 7),
]


def _batch(tok, labels, pairs):
  examples = [data_lib.make_example(a, op, b, "symbolic") for a, op, b in pairs]
  encoded = data_lib.encode_examples(tok, examples, append_eos=True)
  return data_lib.collate(encoded, [e.operation for e in examples], 16, 8, tok.pad_id, label_names=labels)


@pytest.mark.parametrize("pairs", [EQUAL, UNEQUAL], ids=["equal_answers", "unequal_answers"])
def test_two_micro_batches_equal_one_batch(pairs):
  pre = load_pretrained("tiny-random")
  model = pre.build()
  add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("v", "o")), seed=0)
  for t in model.lora.targets:  # non-zero B, so A gets gradients too
    b = getattr(model.lora, f"{t}_b")
    b[...] = jnp.asarray(np.random.default_rng(1).normal(scale=0.05, size=b[...].shape), jnp.float32)
  graphdef, base, lora, rest = nnx.split(model, nnx.Param, LoRAParam, ...)
  base, lora, rest = (nnx.to_pure_dict(s) for s in (base, lora, rest))
  targets = resolve_targets(pre.tokenizer)
  batch = _batch(pre.tokenizer, targets.labels, pairs)
  n_tokens = batch["answer_weight"].sum(axis=1)
  if pairs is UNEQUAL:
    assert n_tokens[:4].sum() != n_tokens[4:].sum()
  tx = optax.sgd(1.0)  # the update is the gradient itself
  schedule = optax.constant_schedule(1.0)
  state = {
    "lora": lora,
    "opt_state": tx.init(lora),
    "step": jnp.zeros((), jnp.int32),
    "nonfinite": jnp.zeros((), jnp.int32),
    "skipped": jnp.zeros((), jnp.int32),
  }
  class_ids = jnp.asarray(targets.token_ids, jnp.int32)
  outs = {}
  for accum in (1, 2):
    step = jax.jit(make_train_step(graphdef, tx, schedule, 2, False, accum))
    outs[accum] = step(state, base, rest, batch, jnp.float32(0.7), class_ids)
  (s1, m1), (s2, m2) = outs[1], outs[2]
  for k in ("loss", "classifier_loss", "answer_loss", "grad_norm"):
    np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), s2["lora"], s1["lora"])
  assert float(m1["grad_norm"]) > 0
