"""The dual-reward loss on hand-built batches (DESIGN.md §2; ORIGINAL_DEFECTS #1, #2).

The expected values are computed independently in float64 numpy from the example ids and prompt lengths
(not from the batch's own answer_pos/readout fields), so a wrong shift or readout in `collate` or in the
loss shows up as a mismatch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.models.model import residual_stream
from lazarus_jax.models.tiny import tiny_tokenizer
from lazarus_jax.training.losses import answer_terms, classifier_terms, dual_reward_loss, gather_rows

LABELS = data_lib.OPERATIONS
CLASS_IDS = np.array([11, 23, 37, 52], np.int32)  # arbitrary distinct ids: the loss must not care which
LAYER = 2


@pytest.fixture(scope="module")
def tiny():
  from lazarus_jax.models.loading import load_pretrained

  return load_pretrained("tiny-random").build()


@pytest.fixture(scope="module")
def examples():
  tok = tiny_tokenizer()
  # Different prompt and answer lengths, symbolic and semantic, so padding and answer slots vary per row.
  exs = [
    data_lib.make_example(7, "multiply", 8, "symbolic"),
    data_lib.make_example(23, "add", 45, "semantic"),
    data_lib.make_example(100, "subtract", 3, "symbolic"),
    data_lib.make_example(48, "divide", 6, "semantic"),
  ]
  enc = data_lib.encode_examples(tok, exs, append_eos=True)
  batch = data_lib.collate(enc, [e.operation for e in exs], seq_len=24, max_answer_tokens=6, pad_id=tok.pad_id)
  return enc, [LABELS.index(e.operation) for e in exs], batch


def jit_with_model(model, fn, **kw):
  """jax.jit of fn(model, *args), the model passed as state (closing over an NNX model cannot sow under jit)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args), **kw), state


def log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def expected_losses(model, enc, labels, batch, restrict=False):
  """Independent reference: full-sequence logits and lens, indexed from ids / prompt_len only."""

  def full(m, tokens, mask):
    return m(tokens, mask), m.lens(residual_stream(m, tokens, mask)[LAYER + 1])  # lens after block L

  fn, state = jit_with_model(model, full)
  final, lens_l = fn(state, batch["tokens"], batch["mask"])
  final, lens_l = log_softmax(final), np.asarray(lens_l, np.float64)  # [B,T,V]
  nll, cls = [], []
  for i, (e, lab) in enumerate(zip(enc, labels)):
    p = e.prompt_len
    # Logits at position t predict token t+1: answer token ids[p+j] is scored by the logits at p-1+j.
    nll += [-final[i, p - 1 + j, e.ids[p + j]] for j in range(len(e.ids) - p)]
    row = lens_l[i, p - 1]  # readout = last prompt token
    if restrict:
      cls.append(-log_softmax(row[CLASS_IDS])[lab])
    else:
      cls.append(-log_softmax(row)[CLASS_IDS[lab]])
  return float(np.mean(cls)), float(np.mean(nll))


_LOSS_FNS = {}


def loss_fn(model, restrict=False):
  """One jitted loss per (model, restrict): the weight and batch are arguments, so tests share compilations."""
  key = (id(model), restrict)
  if key not in _LOSS_FNS:
    _LOSS_FNS[key] = jit_with_model(model, lambda m, b, w: dual_reward_loss(m, b, jnp.asarray(CLASS_IDS), LAYER, w, restrict))
  return _LOSS_FNS[key]


def run_loss(model, batch, weight, restrict=False):
  fn, state = loss_fn(model, restrict)
  return fn(state, batch, jnp.float32(weight))


def test_collate_shift_and_readout(examples):
  enc, _, batch = examples
  for i, e in enumerate(enc):
    p, n = e.prompt_len, len(e.ids) - e.prompt_len
    assert batch["readout"][i] == p - 1
    assert list(batch["answer_pos"][i, :n]) == list(range(p - 1, p - 1 + n))
    assert list(batch["answer_target"][i, :n]) == e.ids[p:]
    assert batch["answer_target"][i, n - 1] == tiny_tokenizer().eos_id  # EOS is scored too
    assert batch["answer_weight"][i].sum() == n
    assert batch["mask"][i].sum() == len(e.ids)


def test_answer_terms_shifted_predictor_beats_copier(examples):
  """Hand-made logits: a perfect next-token predictor scores ~0, a copier (defect #1) scores high."""
  _, _, batch = examples
  tokens = batch["tokens"]
  b, t = tokens.shape
  v = 384
  nxt = np.concatenate([tokens[:, 1:], np.zeros((b, 1), np.int32)], axis=1)
  predict_next = 30.0 * jax.nn.one_hot(nxt, v)  # logits at t put all mass on token t+1
  copy_current = 30.0 * jax.nn.one_hot(tokens, v)  # logits at t put all mass on token t
  pos, tgt, w = (jnp.asarray(batch[k]) for k in ("answer_pos", "answer_target", "answer_weight"))
  for logits, low in ((predict_next, True), (copy_current, False)):
    nll, count, correct = answer_terms(gather_rows(logits, pos), tgt, w)
    assert count == batch["answer_weight"].sum()
    if low:
      assert nll / count < 1e-6 and correct == count
    else:
      assert nll / count > 10.0 and correct < count


def test_classifier_terms_full_vocab_and_restricted():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 64)).astype(np.float32) * 3
  labels = np.array([0, 1, 2, 3, 1])
  ids = np.array([5, 9, 40, 63], np.int32)
  full, pred, vocab_ok, conf = classifier_terms(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(ids), False)
  restricted, pred_r, _, _ = classifier_terms(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(ids), True)
  lsm = log_softmax(logits)
  np.testing.assert_allclose(full, -lsm[np.arange(5), ids[labels]], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(restricted, -log_softmax(logits[:, ids])[np.arange(5), labels], rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(restricted) <= np.asarray(full) + 1e-6)  # a smaller softmax: never a larger loss
  np.testing.assert_array_equal(pred, np.argmax(logits[:, ids], -1))
  np.testing.assert_array_equal(pred_r, pred)
  np.testing.assert_array_equal(vocab_ok, np.argmax(logits, -1) == ids[labels])
  np.testing.assert_allclose(conf, np.exp(lsm[np.arange(5), ids[np.asarray(pred)]]), rtol=1e-5)


@pytest.mark.parametrize("restrict", [False, True])
def test_dual_reward_loss_matches_numpy(tiny, examples, restrict):
  enc, labels, batch = examples
  cls_ref, ans_ref = expected_losses(tiny, enc, labels, batch, restrict)
  total, aux = run_loss(tiny, batch, 0.7, restrict)
  np.testing.assert_allclose(aux["classifier_loss"], cls_ref, rtol=1e-5)
  np.testing.assert_allclose(aux["answer_loss"], ans_ref, rtol=1e-5)
  np.testing.assert_allclose(total, 0.7 * cls_ref + 0.3 * ans_ref, rtol=1e-5)


def test_weight_extremes_reduce_to_single_losses(tiny, examples):
  _, _, batch = examples
  total0, aux0 = run_loss(tiny, batch, 0.0)
  total1, aux1 = run_loss(tiny, batch, 1.0)
  assert float(total0) == float(aux0["answer_loss"])
  assert float(total1) == float(aux1["classifier_loss"])


def test_padding_and_answer_do_not_leak(tiny, examples):
  """Padding carries no loss; the classifier reads the last prompt token, so the answer cannot inform it."""
  enc, _, batch = examples
  _, ref = run_loss(tiny, batch, 0.5)
  rng = np.random.default_rng(1)
  padded = {k: v.copy() for k, v in batch.items()}
  pad = padded["mask"] == 0
  padded["tokens"][pad] = rng.integers(3, 384, size=pad.sum())
  unused = padded["answer_weight"] == 0
  padded["answer_target"][unused] = rng.integers(3, 384, size=unused.sum())
  _, aux = run_loss(tiny, padded, 0.5)
  for k in ("loss", "classifier_loss", "answer_loss"):
    np.testing.assert_allclose(aux[k], ref[k], rtol=1e-6, atol=0)
  # Change every answer token (not the prompt): the classifier loss stays, the answer loss moves.
  changed = {k: v.copy() for k, v in batch.items()}
  for i, e in enumerate(enc):
    changed["tokens"][i, e.prompt_len : len(e.ids)] = (changed["tokens"][i, e.prompt_len : len(e.ids)] + 7) % 384
  _, aux = run_loss(tiny, changed, 0.5)
  np.testing.assert_allclose(aux["classifier_loss"], ref["classifier_loss"], rtol=1e-6, atol=0)
  assert abs(float(aux["answer_loss"]) - float(ref["answer_loss"])) > 1e-3


def test_weight_as_array_does_not_recompile(tiny, examples):
  _, _, batch = examples
  loss, state = loss_fn(tiny)
  values = [float(loss(state, batch, jnp.float32(w))[0]) for w in (0.0, 0.3, 0.7, 1.0)]
  assert loss._cache_size() == 1  # one compilation for every weight (and every batch of these shapes)
  assert len(set(values)) == 4
