"""Jitted batched generation with a KV cache (greedy, or sampled for GRPO: `decode`), and answer-accuracy helpers.

`greedy_generate` left-pads each batch so every row's last prompt token sits in the same column (the
readout position, DESIGN.md §2), gives each row its own RoPE positions (index among its real tokens) and
masks the padded keys: each row's output equals generating that prompt alone, unpadded.

One jitted function per (batch size, prompt bucket, max_new_tokens): prefill runs the whole prompt through
the blocks and fills the cache; the decode steps run in a `lax.while_loop` that stops when every row has
emitted EOS. The cache is [layers, B, S, KV, hd] for k and v (one array per layer segment, see below),
S = prompt bucket + max_new_tokens.

One forward pass: every block is `model.decoder_block` (the training and lens block) with its KV-cache argument,
the logits are `model.lens_logits` (what `LlamaModel.lens` computes), and the residual stream, RoPE tables and
cache are in `activation_dtype` as in `LlamaModel.trunk`. The layer scan is split into the trunk's three segments
(below / inside / above the LoRA range), so adapters apply with exactly the trunk's math.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from lazarus_jax.errors import UserError
from lazarus_jax.models.model import PROJS, LlamaConfig, decoder_block, lens_logits, rope_cos_sin
from lazarus_jax.models.padding import pad_prompts

PROMPT_BUCKET = 16  # prompt lengths round up to a multiple of this (one compile per bucket)
MAX_BATCH = 32  # batches are padded to a power of two up to this size


# ---- the jitted core -----------------------------------------------------------------------------


def _segments(cfg: LlamaConfig, lora_range: tuple[int, int]) -> list[tuple[int, int, bool]]:
  """(start, end, adapted) layer segments, as in `LlamaModel.trunk`; empty segments dropped."""
  lo, hi = lora_range
  segs = ((0, lo, False), (lo, hi, True), (hi, cfg.num_layers, False))
  return [s for s in segs if s[1] > s[0]]


def _run_layers(cfg, params, lora_scale, segs, h, cos, sin, bias, caches, slot, hook=None):
  """All blocks (`model.decoder_block`, the training block) on h [B,T,D]; this chunk's k/v go to cache column `slot`.

  caches: one (k, v) pair per segment, each [layers_in_segment, B, S, KV, hd]. They are scan carries: the block
  gets its layer's [B,S,KV,hd] slice and the updated slice is written back with dynamic_update_slice (in place).
  hook: None, or `hook(row, h) -> h` applied to the residual stream after each block (row = block + 1, a traced
  int32); with a hook the last column's residual after each (hooked) block is also returned, [n_layers, B, D].
  """

  def block(carry, xs):
    h, ck, cv = carry
    w, adapters, i = xs[:3]
    h, (k_i, v_i) = decoder_block(cfg, w, adapters, lora_scale, h, cos, sin, bias, cache=(ck[i], cv[i], slot))
    ck = jax.lax.dynamic_update_slice(ck, k_i[None], (i, 0, 0, 0, 0))
    cv = jax.lax.dynamic_update_slice(cv, v_i[None], (i, 0, 0, 0, 0))
    if hook is None:
      return (h, ck, cv), None
    h = hook(xs[3], h)
    return (h, ck, cv), h[:, -1]

  new_caches, rows = [], []
  for (start, end, adapted), (ck, cv) in zip(segs, caches):
    seg_w = jax.tree.map(lambda x: x[start:end], params["layers"])
    adapters = params["lora"] if adapted else None
    xs = (seg_w, adapters, jnp.arange(end - start))
    if hook is not None:  # the row index only where a hook reads it: the plain graph stays as it was
      xs += (jnp.arange(start + 1, end + 1, dtype=jnp.int32),)
    (h, ck, cv), ys = jax.lax.scan(block, (h, ck, cv), xs)
    new_caches.append((ck, cv))
    rows.append(ys)
  if hook is None:
    return h, new_caches
  return h, new_caches, jnp.concatenate(rows, axis=0)


def pick_token(logits, key, temperature: float, top_p: float):
  """The next token from float32 logits [B,V]: argmax when `temperature` is 0, else a sample from
  softmax(logits / temperature) restricted to the nucleus (the smallest set of most likely tokens whose probability
  reaches `top_p`; the most likely token is always in it). `temperature` and `top_p` are static."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    # A token is in the nucleus when the mass of the tokens ranked above it is still below top_p.
    n_keep = jnp.sum((jnp.cumsum(probs, axis=-1) - probs) < top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ordered, n_keep - 1, axis=-1)
    logits = jnp.where(logits >= threshold, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "lora_range", "lora_scale", "max_new_tokens", "edit_fn"))
def _generate(params, tokens, mask, eos_id, pad_id, edit=None, *, cfg, lora_range, lora_scale, max_new_tokens, edit_fn=None):
  """Greedy: tokens/mask [B,P] left-padded -> generated ids [B, max_new_tokens] (pad_id after EOS).

  With `edit_fn` (a module-level function, static) the prefill's residual stream is edited: after the embedding
  (row 0) and after each block (row = block + 1), h <- edit_fn(edit, row, h), `edit` a pytree of arrays (traced:
  one compile for every edit of the same shapes; see `interventions.py`). Only the prefill is edited, so the
  prompt's positions carry the edit into every decode step through the KV cache. Then the result is (ids, the
  last (readout) column's residual rows [n_layers + 1, B, D] after editing, the prefill's final logits there [B, V]).
  """
  return decode(
    params,
    tokens,
    mask,
    eos_id,
    pad_id,
    jax.random.key(0),
    cfg=cfg,
    lora_range=lora_range,
    lora_scale=lora_scale,
    max_new_tokens=max_new_tokens,
    edit=edit,
    edit_fn=edit_fn,
  )


def decode(
  params,
  tokens,
  mask,
  eos_id,
  pad_id,
  key,
  *,
  cfg,
  lora_range,
  lora_scale,
  max_new_tokens,
  temperature: float = 0.0,
  top_p: float = 1.0,
  edit=None,
  edit_fn=None,
):
  """tokens/mask [B,P] left-padded -> generated ids [B, max_new_tokens] (pad_id after EOS), greedy or sampled
  (`pick_token`; decode step i draws with `fold_in(key, i)`). Traced inside the caller's jit. `edit`, `edit_fn`:
  see `_generate`."""
  adt = jnp.dtype(cfg.activation_dtype)  # the residual stream and the k/v cache, as in training
  b, p = tokens.shape
  s = p + max_new_tokens
  segs = _segments(cfg, lora_range)
  neg = jnp.finfo(jnp.float32).min
  cols = jnp.arange(s)
  prompt_keys = jnp.pad(mask > 0, ((0, 0), (0, max_new_tokens)))  # [B,S] real prompt columns

  def next_token(h, i):  # from the last column's logits: the model's own head (`LlamaModel.lens`)
    logits = lens_logits(cfg, params["final_norm"], params["unembed"], h[:, -1])
    return pick_token(logits, jax.random.fold_in(key, i), temperature, top_p)

  # Prefill: causal over the prompt columns, padded keys masked; positions count real tokens only.
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  n_real = jnp.sum(mask, axis=1)
  cos, sin = rope_cos_sin(params["inv_freq"], positions, adt)
  allowed = (cols[None, :] <= jnp.arange(p)[:, None])[None] & prompt_keys[:, None, :]  # [B,P,S]
  bias = jnp.where(allowed, 0.0, neg)[:, None, None]
  shape = (b, s, cfg.num_kv_heads, cfg.head_dim)
  caches = [(jnp.zeros((e - a,) + shape, adt), jnp.zeros((e - a,) + shape, adt)) for a, e, _ in segs]
  h = params["embed"][tokens].astype(adt)
  if edit_fn is None:
    h, caches = _run_layers(cfg, params, lora_scale, segs, h, cos, sin, bias, caches, 0)
    readout = None
  else:
    hook = functools.partial(edit_fn, edit)
    h = hook(jnp.int32(0), h)
    row0 = h[:, -1]
    h, caches, rows = _run_layers(cfg, params, lora_scale, segs, h, cos, sin, bias, caches, 0, hook=hook)
    readout = (jnp.concatenate([row0[None], rows], axis=0), lens_logits(cfg, params["final_norm"], params["unembed"], h[:, -1]))
  tok = next_token(h, 0)
  done = tok == eos_id
  out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)

  def cond(state):
    i, _, done, _, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, tok, done, caches, out = state
    slot = p + i - 1  # the cache column of the token fed in this step
    cos, sin = rope_cos_sin(params["inv_freq"], (n_real + i - 1)[:, None], adt)
    allowed = prompt_keys | ((cols >= p) & (cols <= slot))[None]
    bias = jnp.where(allowed, 0.0, neg)[:, None, None, None]  # [B,1,1,1,S]
    h = params["embed"][tok[:, None]].astype(adt)
    h, caches = _run_layers(cfg, params, lora_scale, segs, h, cos, sin, bias, caches, slot)
    nxt = next_token(h, i)
    out = out.at[:, i].set(jnp.where(done, pad_id, nxt))
    return i + 1, nxt, done | (nxt == eos_id), caches, out

  state = (jnp.int32(1), tok, done, caches, out)
  ids = jax.lax.while_loop(cond, body, state)[-1]
  return ids if readout is None else (ids, *readout)


# ---- host side -----------------------------------------------------------------------------------


def model_params(model) -> tuple[dict, tuple[int, int], float]:
  """The arrays the jitted core needs, the LoRA layer range and the LoRA scale."""
  cfg = model.cfg
  params = {
    "embed": model.embed[...],
    "unembed": model.unembed_matrix(),
    "final_norm": model.final_norm[...],
    "inv_freq": model.inv_freq[...],
    # Projection stacks in the compute dtype, 16-bit ones as raw bits, cast once here: a bf16 stack sliced
    # inside the decode scan makes XLA:CPU convert the whole stack to float32 on every decode step.
    # `project` reads uint16 stacks as bits of the compute dtype.
    "layers": {name: model.projection_stack(name, jnp.dtype(cfg.compute_dtype)) for name in PROJS},
    "lora": None,
  }
  params["layers"].update({name: getattr(model.layers, name)[...] for name in ("attn_norm", "mlp_norm")})
  lora = model.lora
  if lora is None:
    return params, (cfg.num_layers, cfg.num_layers), 0.0
  params["lora"] = lora.stacked_weights()
  return params, (int(lora.layer_start), int(lora.layer_end)), float(lora.scale)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _batch_size(n: int, max_batch: int) -> int:
  # A power of two (capped) so that few batch shapes ever compile.
  return min(max_batch, 1 << max(0, (n - 1).bit_length()))


def greedy_generate(
  model,
  prompt_ids: list[list[int]],
  max_new_tokens: int,
  eos_id: int | None,
  pad_id: int,
  *,
  max_batch: int = MAX_BATCH,
  bucket: int = PROMPT_BUCKET,
  edit=None,
  edit_fn=None,
):
  """Greedy continuations of each prompt (token ids), batched, with a KV cache.

  Returns, per prompt, the generated ids up to and excluding the first `eos_id` (all `max_new_tokens` ids
  when no EOS comes, or when eos_id is None). `pad_id` only fills the padded prompt columns; it is never
  attended to, so any id works.

  With `edit_fn` (see `_generate`; `interventions.py` builds both): `edit` is a pair (shared, per_example) of
  pytrees of arrays; per_example leaves have a leading axis of len(prompt_ids) and are batched with the prompts.
  The result is then (ids, readout [n_layers + 1, N, D], final_logits [N, V]) as numpy arrays: the edited
  prefill's residual rows and final-layer logits at the readout (each prompt's last token).
  """
  if edit_fn is None and (max_new_tokens < 1 or not prompt_ids):
    return [[] for _ in prompt_ids]
  if not prompt_ids or max_new_tokens < 1:
    raise UserError("an edited generation needs at least one prompt and max_new_tokens >= 1")
  for i, ids in enumerate(prompt_ids):
    if len(ids) == 0:
      raise UserError(f"prompt {i} is empty: greedy_generate needs at least one prompt token")
  params, lora_range, lora_scale = model_params(model)
  cfg = model.cfg
  bsz = _batch_size(len(prompt_ids), max_batch)
  eos = jnp.int32(-1 if eos_id is None else eos_id)
  results: list[list[int]] = []
  readouts, logits = [], []
  for start in range(0, len(prompt_ids), bsz):
    chunk = [list(x) for x in prompt_ids[start : start + bsz]]
    n = len(chunk)
    chunk += [chunk[0]] * (bsz - n)  # filler rows (dropped below) keep the batch shape fixed
    p = _round_up(max(len(x) for x in chunk), bucket)
    tokens, mask, _ = pad_prompts(chunk, p, pad_id, left=True)  # every row ends in the last column
    static = dict(cfg=cfg, lora_range=lora_range, lora_scale=lora_scale, max_new_tokens=max_new_tokens)
    if edit_fn is None:
      out = _generate(params, jnp.asarray(tokens), jnp.asarray(mask), eos, jnp.int32(pad_id), **static)
    else:
      shared, per_example = edit
      rows = np.r_[np.arange(start, start + n), np.full(bsz - n, start)]  # filler rows repeat the first
      batch_edit = (shared, jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[rows]), per_example))
      out, readout, final = jax.device_get(
        _generate(params, jnp.asarray(tokens), jnp.asarray(mask), eos, jnp.int32(pad_id), batch_edit, edit_fn=edit_fn, **static)
      )
      readouts.append(readout[:, :n])
      logits.append(final[:n])
    for row in np.asarray(out)[:n].tolist():
      if eos_id is not None and eos_id in row:
        row = row[: row.index(eos_id)]
      results.append(row)
  if edit_fn is None:
    return results
  return results, np.concatenate(readouts, axis=1), np.concatenate(logits, axis=0)


# ---- answer accuracy -----------------------------------------------------------------------------

# A number: optional minus, then either comma-grouped thousands ("1,000") or plain digits, then an optional
# fractional part (so "3.5" is not read as 3).
_NUMBER = re.compile(r"(?<![\d.])(-?)(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.(\d+))?")


def parse_integer(text: str) -> int | None:
  """The integer `text` starts with, after leading whitespace, or None: what counts as the model's answer.

  "56", " 56", "56</s>", "56.", "56\\n7 * 9" -> 56; "-3" -> -3; "1,000" -> 1000; "7.0" -> 7; "3.5", "abc",
  "The answer is 12" -> None. Anchored at the start on purpose: a first-number-anywhere rule would score
  "The answer is 56" or "3 * 56" as the answer 56 (issue 10.10), which is not what the readout predicts.
  """
  m = _NUMBER.match(text.lstrip())
  if m is None:
    return None
  sign, digits, frac = m.groups()
  if frac and frac.strip("0"):
    return None
  value = int(digits.replace(",", ""))
  return -value if sign else value


def exact_match(generated_text: str, expected_answer: str | int) -> bool:
  """True when the generated text starts (after leading whitespace) with the expected integer and no further digit.

  An expected answer that is not an integer is compared as stripped text against the start of the output.
  """
  expected = expected_answer if isinstance(expected_answer, int) else parse_integer(str(expected_answer))
  if expected is None:
    return generated_text.strip().startswith(str(expected_answer).strip())
  return parse_integer(generated_text) == expected


def answer_accuracy(
  model, tokenizer, prompt_ids: list[list[int]], answers: list[str | int], max_new_tokens: int = 8, **kwargs
) -> dict:
  """Greedy-generates every prompt and scores exact match. Returns accuracy and per-example rows (with the generated
  token ids, EOS excluded, for first-token accuracy)."""
  if len(prompt_ids) != len(answers):
    raise ValueError(f"{len(prompt_ids)} prompts but {len(answers)} answers")
  outs = greedy_generate(model, prompt_ids, max_new_tokens, tokenizer.eos_id, tokenizer.pad_id, **kwargs)
  rows = []
  for ids, answer in zip(outs, answers):
    text = tokenizer.decode(ids)
    rows.append(
      {
        "generated": text,
        "ids": list(ids),
        "parsed": parse_integer(text),
        "expected": str(answer),
        "correct": exact_match(text, answer),
      }
    )
  accuracy = sum(r["correct"] for r in rows) / len(rows) if rows else float("nan")
  return {"accuracy": accuracy, "n": len(rows), "rows": rows}
