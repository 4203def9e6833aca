"""KV-cache greedy generation vs. full recomputation (float32 and 16-bit), left-padding invariance, EOS, answer
parsing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lazarus_jax.models.generate import answer_accuracy, exact_match, greedy_generate, parse_integer
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.model import PROJS, LoRAParam, lens_logits

MAX_NEW = 8
TEXTS = ["7 * 8 = ", "What is 23 plus 45?", "1", "What is 23 plus 45? What is 7 times 8? 12 * 3 = "]


class StandInLoRA(nnx.Module):
  """What `LlamaModel.trunk` reads from `model.lora` (lora.py's interface), with non-zero A and B."""

  def __init__(self, layer_start, layer_end, scale, weights):
    self.layer_start, self.layer_end, self.scale = layer_start, layer_end, scale
    self.targets = tuple(weights)
    for t, (a, b) in weights.items():
      setattr(self, f"{t}_a", LoRAParam(a))
      setattr(self, f"{t}_b", LoRAParam(b))

  def stacked_weights(self):
    return {t: (getattr(self, f"{t}_a")[...], getattr(self, f"{t}_b")[...]) for t in self.targets}


@pytest.fixture(scope="module")
def pretrained():
  return load_pretrained("tiny-random")


@pytest.fixture(scope="module")
def models(pretrained):
  return {False: _model(pretrained, False), True: _model(pretrained, True)}


def _model(pretrained, lora: bool):
  model = pretrained.build()
  # The tiny model's 0.02-scale weights make it repeat one token forever; larger weights give varied
  # continuations, so a wrong cache or position shows up in the tokens.
  for name in PROJS:
    var = getattr(model.layers, name)
    var[...] = var[...] * 6.0
  if lora:
    cfg = model.cfg
    n, r = 2, 4
    keys = iter(jax.random.split(jax.random.key(1), 8))
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    dims = {
      "q": (cfg.hidden_size, q),
      "v": (cfg.hidden_size, kv),
      "o": (q, cfg.hidden_size),
      "down": (cfg.intermediate_size, cfg.hidden_size),
    }
    weights = {
      t: (0.3 * jax.random.normal(next(keys), (n, din, r)), 0.3 * jax.random.normal(next(keys), (n, r, dout)))
      for t, (din, dout) in dims.items()
    }
    model.lora = nnx.data(StandInLoRA(layer_start=1, layer_end=3, scale=2.0, weights=weights))
  return model


def _prompts(pretrained):
  prompts = [pretrained.tokenizer.encode(t) for t in TEXTS]
  assert len({len(p) for p in prompts}) == len(prompts) and max(len(p) for p in prompts) > 16
  return prompts


def _reference(model, prompts, max_new):
  """No cache: the full forward of the whole sequence every step, argmax at its last real position.

  Sequences sit at the left of a fixed-length row (one compile); causal attention keeps the trailing filler
  from touching any earlier position.
  """
  width = max(len(p) for p in prompts) + max_new
  forward = nnx.jit(lambda m, x: m(x))
  outs = []
  for prompt in prompts:
    ids, gen = list(prompt), []
    for _ in range(max_new):
      row = np.zeros((1, width), np.int32)
      row[0, : len(ids)] = ids
      logits = np.asarray(forward(model, jnp.asarray(row)))[0, len(ids) - 1]
      top2 = np.sort(logits)[-2:]
      assert top2[1] - top2[0] > 1e-5, "near-tie: the comparison would be fragile"
      gen.append(int(np.argmax(logits)))
      ids.append(gen[-1])
    outs.append(gen)
  return outs


@pytest.mark.parametrize("lora", [False, True])
def test_cache_matches_full_forward(pretrained, models, lora):
  model = models[lora]
  prompts = _prompts(pretrained)
  got = greedy_generate(model, prompts, MAX_NEW, eos_id=None, pad_id=0)
  assert got == _reference(model, prompts, MAX_NEW)
  assert all(len(g) == MAX_NEW for g in got)
  assert len({tuple(g) for g in got}) == len(got)  # varied outputs: the check has teeth
  if lora:  # the adapters really change the output
    assert got != greedy_generate(models[False], prompts, MAX_NEW, eos_id=None, pad_id=0)


def test_left_padding_does_not_change_rows(pretrained, models):
  # (With LoRA, padding is covered by test_cache_matches_full_forward: its reference is unpadded.)
  model = models[False]
  prompts = _prompts(pretrained)
  batched = greedy_generate(model, prompts, MAX_NEW, eos_id=None, pad_id=7)
  alone = [greedy_generate(model, [p], MAX_NEW, eos_id=None, pad_id=0)[0] for p in prompts]
  assert batched == alone
  # Several fixed-size chunks (the last one filled up) give the same rows too.
  assert greedy_generate(model, prompts[:3], MAX_NEW, eos_id=None, pad_id=0, max_batch=2) == batched[:3]


def test_stops_at_eos(pretrained, models):
  model = models[False]
  prompts = _prompts(pretrained)
  free = greedy_generate(model, prompts, MAX_NEW, eos_id=None, pad_id=0)
  eos = free[1][2]  # the token row 1 generates at step 2
  got = greedy_generate(model, prompts, MAX_NEW, eos_id=eos, pad_id=0)
  expected = [g[: g.index(eos)] if eos in g else g for g in free]
  assert got == expected
  assert len(got[1]) <= 2 and any(len(g) == MAX_NEW for g in got)  # other rows run on
  # Every row stopping at once (EOS = its first token, for a single prompt) ends the loop with nothing out.
  assert greedy_generate(model, prompts[:1], MAX_NEW, eos_id=free[0][0], pad_id=0) == [[]]


def test_edge_cases(models):
  model = models[False]
  assert greedy_generate(model, [[5, 6]], 0, eos_id=None, pad_id=0) == [[]]
  assert greedy_generate(model, [], 4, eos_id=None, pad_id=0) == []
  assert len(greedy_generate(model, [[5, 6]], 1, eos_id=None, pad_id=0)[0]) == 1


@pytest.mark.parametrize(
  "text,value",
  [
    ("56", 56),
    (" 56", 56),
    ("56<eos>", 56),
    ("56</s>", 56),
    ("56.", 56),
    ("\n 56 apples", 56),
    ("-3", -3),
    (" -3 ", -3),
    ("The answer is 12", None),
    ("= 12", None),
    ("1,000", 1000),
    ("1,000,000 ", 1000000),
    ("7.0", 7),
    ("3.5", None),
    ("abc", None),
    ("", None),
    ("12,5", 12),
    ("10-3", 10),
  ],
)
def test_parse_integer(text, value):
  assert parse_integer(text) == value


def test_exact_match():
  assert exact_match(" 56</s>", "56")
  assert exact_match("56", 56)
  assert exact_match("-3", "-3")
  assert not exact_match("-3", "3")
  assert not exact_match("560", "56")
  assert exact_match("56\n7 * 9 = 63", "56")
  # What counts is the integer the continuation starts with (issue 10.10): not a number found later.
  assert not exact_match("The answer is 56", "56")
  assert not exact_match("3 * 56", "56")
  assert not exact_match("abc", "56")
  assert not exact_match("", "0")
  assert exact_match(" yes", "yes")  # non-integer answers: text prefix


@pytest.mark.parametrize("param_dtype,compute_dtype", [("bfloat16", "bfloat16"), ("float32", "bfloat16")])
def test_packed_16bit_weights_generate_the_same_tokens(monkeypatch, param_dtype, compute_dtype):
  # `model_params` hands 16-bit stacks to the jitted core as raw bits; unpacked stacks must give the same tokens.
  from lazarus_jax.models import generate

  pre = load_pretrained("tiny-random", param_dtype=param_dtype, compute_dtype=compute_dtype)
  model = _model(pre, lora=True)
  params, _, _ = generate.model_params(model)
  assert all(params["layers"][name].dtype == jnp.uint16 for name in PROJS)
  prompts = _prompts(pre)
  packed = greedy_generate(model, prompts, MAX_NEW, eos_id=None, pad_id=0)
  from lazarus_jax.models import model as model_lib

  monkeypatch.setattr(model_lib, "as_bits", lambda w: w)  # unpacked stacks, as before packing existed
  assert generate.model_params(model)[0]["layers"]["q"].dtype == jnp.bfloat16
  assert greedy_generate(model, prompts, MAX_NEW, eos_id=None, pad_id=0) == packed
  assert len({tuple(g) for g in packed}) == len(packed)


# ---- 16-bit: the cached decoder against the model's own full forward pass --------------------------------------


def _generate_with_logits(monkeypatch, model, prompts, pad_id=0):
  """greedy_generate (one batch, no EOS) and the logits [MAX_NEW, B, V] the cached decoder picked each token from.

  A debug callback on generation's `lens_logits` sees them; the jit cache is cleared before (so `_generate` is
  retraced with the spy) and after (so no spied compile is left for other tests).
  """
  from lazarus_jax.models import generate

  seen = []

  def spy(*args):
    logits = lens_logits(*args)
    jax.debug.callback(lambda x: seen.append(np.asarray(x)), logits, ordered=True)
    return logits

  monkeypatch.setattr(generate, "lens_logits", spy)
  generate._generate.clear_cache()
  try:
    got = greedy_generate(model, prompts, MAX_NEW, eos_id=None, pad_id=pad_id)
  finally:
    generate._generate.clear_cache()
  assert len(seen) == MAX_NEW  # prefill + one per decode step
  return got, np.stack(seen)


def _check_against_full_pass(model, prompts, got, cached_logits, tol, max_ties, logit_tol):
  """Cached greedy tokens `got` against the full forward pass `model(tokens, mask, positions)`, token by token.

  Step j of a prompt: the full pass on the prompt + got[:j] alone (a batch of one, right-padded to one width so
  the pass compiles once); its argmax at the last real position must be got[j], and its logits must be within
  logit_tol of the cached decoder's (`cached_logits`).
  Why tolerances: in 16-bit the model's own forward pass is not bit-stable under shape changes (key-axis sums over
  another length or column offset round differently in float32, and a 1-ulp change can flip the bf16 rounding of a
  matmul operand), and the cached path attends over a wider, left-padded cache. So where the full pass's top-2
  margin is <= tol (a near-tie) the cached token need only be within tol of the top; such steps are counted and
  must stay few (<= max_ties). Returns the number of near-ties.
  """
  forward = nnx.jit(lambda m, x, mask, pos: m(x, mask, pos))
  width = max(len(p) + len(g) for p, g in zip(prompts, got))  # one shape, one compile: right padding is causally
  ties = 0  # invisible to the last real position
  for r, (prompt, gen) in enumerate(zip(prompts, got)):
    for j, token in enumerate(gen):
      seq = list(prompt) + gen[:j]
      n = len(seq)
      ids = jnp.asarray([seq + [0] * (width - n)], jnp.int32)
      mask = jnp.asarray([[1] * n + [0] * (width - n)], jnp.int32)
      logits = np.asarray(forward(model, ids, mask, jnp.arange(width, dtype=jnp.int32)[None]))[0, n - 1]
      np.testing.assert_allclose(cached_logits[j, r], logits, rtol=0, atol=logit_tol, err_msg=f"prompt {r} step {j}")
      top2 = np.sort(logits)[-2:]
      if top2[1] - top2[0] > tol:
        assert token == int(np.argmax(logits)), f"prompt {r} step {j}: cached {token}, full pass {np.argmax(logits)}"
      else:
        ties += 1
        assert logits[token] >= top2[1] - tol, f"prompt {r} step {j}: cached {token} is not one of the near-tied tops"
  assert ties <= max_ties, f"{ties} near-ties (margin <= {tol}): too few steps checked exactly"
  return ties


# (param, compute, activation) dtypes: all bf16, and configs/smollm2_135m.py's (bf16 matmuls, float32 residual).
DTYPES_16 = [("bfloat16", "bfloat16", "bfloat16"), ("bfloat16", "bfloat16", "float32")]


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("param_dtype,compute_dtype,activation_dtype", DTYPES_16)
def test_16bit_cache_matches_full_forward(monkeypatch, param_dtype, compute_dtype, activation_dtype, lora):
  pre = load_pretrained("tiny-random", param_dtype=param_dtype, compute_dtype=compute_dtype, activation_dtype=activation_dtype)
  model = _model(pre, lora)
  prompts = _prompts(pre)
  got, cached_logits = _generate_with_logits(monkeypatch, model, prompts)  # one left-padded batch
  assert all(len(g) == MAX_NEW for g in got) and len({tuple(g) for g in got}) == len(got)
  # The cached logits match the full pass's to ~1e-7 here (float32 rounding; one flipped bf16 operand rounding gives
  # ~1e-3); a residual stream in the compute dtype (the old generate.py) is off by 4e-3 to 3e-2. tol: the logits of
  # this model span only ~0.6, so top-2 margins of 1e-3 occur: 0 to 2 of the 32 steps here are near-ties.
  _check_against_full_pass(model, prompts, got, cached_logits, tol=3e-3, max_ties=3, logit_tol=2e-3)
  if lora:  # the adapters really change the output
    assert got != greedy_generate(_model(pre, False), prompts, MAX_NEW, eos_id=None, pad_id=0)


@pytest.mark.embedded
@pytest.mark.parametrize("activation_dtype", ["bfloat16", "float32"])
def test_smollm2_16bit_cache_matches_full_forward(monkeypatch, activation_dtype):
  pre = load_pretrained("smollm2-135m", param_dtype="bfloat16", compute_dtype="bfloat16", activation_dtype=activation_dtype)
  model = pre.build()
  prompts = [pre.tokenizer.encode(t) for t in ("7 * 8 = ", "What is 23 plus 45?")]
  got, cached_logits = _generate_with_logits(monkeypatch, model, prompts, pad_id=pre.tokenizer.pad_id)
  # SmolLM2's own full pass moves its bf16 logits by up to 0.34 (float32 residual: 0.12) when only the shape
  # changes (left padding, or causally invisible trailing columns); the cached ones differ by up to 0.35. So tol
  # 0.5 (a smaller margin is a coin flip: "7 * 8 = " starts with '1' vs '2' at a margin of 0.01-0.03), which makes
  # 2 (bf16) and 3 (float32 residual) of the 16 steps near-ties here; logit_tol 1.0 only catches gross errors (a
  # wrong position or cache column), not rounding.
  _check_against_full_pass(model, prompts, got, cached_logits, tol=0.5, max_ties=5, logit_tol=1.0)


def test_answer_accuracy_rows_carry_generated_ids(pretrained, models):
  model, tok = models[False], pretrained.tokenizer
  prompts = _prompts(pretrained)[:2]
  res = answer_accuracy(model, tok, prompts, ["56", "68"], max_new_tokens=4)
  gen = greedy_generate(model, prompts, 4, tok.eos_id, tok.pad_id)
  assert [r["ids"] for r in res["rows"]] == gen
  assert [r["generated"] for r in res["rows"]] == [tok.decode(g) for g in gen]
