"""The all-layer logit lens: a jitted readout of the whole residual stack (the command: cli/lens.py).

    python -m lazarus_jax.lens --model smollm2-135m --prompts "7 * 8 = |23 + 45 = " \
        --targets multiply,add,subtract,divide [--top-k 5] [--json out.json] [--png out.png] \
        [--positions-png grid.png]

Layer convention (DESIGN.md §2). The stack has n_layers+1 rows. Each record carries both
  - `row`: index into that stack, 0..n_layers (row 0 = embedding output, row L+1 = after block L);
  - `block` / `layer`: the decoder block whose output the row is, i.e. DESIGN's "layer L" = row L+1;
    `null` for the embedding row (never -1), so "layer 16" means the same thing here, in training and in probes.
The last row is the model's own final layer: its probabilities equal softmax(model(tokens)).

Readout position: the last prompt token (`readout_index` = len(token_ids) - 1), the position whose next-token
prediction is the answer's first token. Probabilities are full-vocabulary softmaxes; `rank` is 1-based
(1 = the argmax; tokens with an equal logit share the better rank).
"""

from __future__ import annotations

import functools
import json
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lazarus_jax.data.arithmetic import encode_prompt
from lazarus_jax.data.targets import DEFAULT_TARGETS, ResolvedTargets, resolve_targets
from lazarus_jax.errors import UserError
from lazarus_jax.files import atomic_path
from lazarus_jax.models.model import residual_stream, split_packed
from lazarus_jax.models.padding import pad_prompts

LAYER_CONVENTION = (
  "row = index into the n_layers+1 residual rows (0 = embedding output, r = after block r-1); "
  "block = layer = decoder block whose output the row is (null for the embedding row)"
)


# ---------------------------------------------------------------------------------------------------------
# The jitted readout


def readout_lens(model, tokens, mask, readout):
  """Every row's residual stream at each prompt's readout position [R, B, D] and its lens logits [R, B, V].

  One gather of the readout position for all rows at once, then one batched unembedding (float32 logits).
  """
  stack = residual_stream(model, tokens, mask)  # [R, B, T, D]
  h = jnp.take_along_axis(stack, readout[None, :, None, None], axis=2)[:, :, 0]
  return h, model.lens(h)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("top_k",))
def _lens_fn(graphdef, state, tokens, mask, readout, target_ids, *, top_k: int):
  model = nnx.merge(graphdef, state)
  _, logits = readout_lens(model, tokens, mask, readout)
  # Probabilities only where they are reported (targets, top-k): exp(logit - logsumexp), never the full
  # [R, B, V] softmax array: one fewer vocabulary-sized array to write and re-read (~6% of a CPU call).
  lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  target_logits = jnp.take(logits, target_ids, axis=-1)  # [R, B, K]
  # Rank from logits (monotone in probs, but exact where exp() would round two probs together).
  target_ranks = 1 + jnp.sum(logits[:, :, None, :] > target_logits[..., None], axis=-1, dtype=jnp.int32)
  top_logits, top_ids = jax.lax.top_k(logits, top_k)
  out = dict(
    target_probs=jnp.exp(target_logits - lse), target_ranks=target_ranks, top_ids=top_ids, top_probs=jnp.exp(top_logits - lse)
  )
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)  # -> [B, R, ...]


def all_layer_lens(model, tokens, mask, readout, target_ids, top_k: int = 5) -> dict[str, jax.Array]:
  """Logit lens at `readout` for every row of the residual stack, in one jitted call.

  tokens/mask [B, T] (right-padded, mask 1 on real tokens); readout [B] (last real prompt token);
  target_ids [K]. Returns target_probs [B, R, K], target_ranks [B, R, K] (1-based), top_ids and
  top_probs [B, R, top_k], with R = n_layers + 1 rows (DESIGN.md §2).
  """
  graphdef, state = split_packed(model)
  return _lens_fn(
    graphdef,
    state,
    jnp.asarray(tokens, jnp.int32),
    jnp.asarray(mask, jnp.int32),
    jnp.asarray(readout, jnp.int32),
    jnp.asarray(target_ids, jnp.int32),
    top_k=int(top_k),
  )


def run_lens(
  model,
  tokenizer,
  prompts: Sequence[str],
  targets: ResolvedTargets | dict | None = None,
  top_k: int = 5,
  batch_size: int = 16,
  timings: dict | None = None,
) -> list[dict]:
  """The all-layer lens for each prompt, as JSON-ready dicts (schema in the module docstring).

  `targets`: a `ResolvedTargets` or a label -> word mapping (resolved here with allow_target_in_prompt=True).
  Every batch has the same shape (one compile); `timings`, when given, receives compile_s and run_s.
  """
  if not prompts:
    raise UserError("no prompts given")
  if not isinstance(targets, ResolvedTargets):
    targets = resolve_targets(tokenizer, targets or DEFAULT_TARGETS, prompts, allow_target_in_prompt=True)
  vocab = model.cfg.vocab_size
  if not 1 <= top_k <= vocab:
    raise UserError(f"top-k must be in 1..{vocab}, got {top_k}")
  encoded = []
  for p in prompts:
    ids = encode_prompt(tokenizer, p)
    if not ids:
      raise UserError(f"prompt {p!r} encodes to no tokens")
    encoded.append(ids)
  seq_len = -(-max(len(e) for e in encoded) // 16) * 16  # a bucket, so similar prompt sets share a compile
  if seq_len > model.cfg.max_position_embeddings:
    raise UserError(
      f"a prompt has {max(len(e) for e in encoded)} tokens, more than the model's {model.cfg.max_position_embeddings} positions"
    )
  batch_size = max(1, min(batch_size, len(encoded)))
  target_ids = jnp.asarray(targets.token_ids, jnp.int32)
  graphdef, state = split_packed(model)  # packed once, not a whole-weight copy per batch

  t0 = time.perf_counter()
  example = pad_prompts(encoded[:batch_size], seq_len, tokenizer.pad_id, rows=batch_size)
  compiled = _lens_fn.lower(graphdef, state, *map(jnp.asarray, example), target_ids, top_k=top_k).compile()
  t1 = time.perf_counter()
  outputs = []
  for start in range(0, len(encoded), batch_size):
    chunk = encoded[start : start + batch_size]
    batch = pad_prompts(chunk, seq_len, tokenizer.pad_id, rows=batch_size)
    out = compiled(state, *map(jnp.asarray, batch), target_ids)
    outputs.append((len(chunk), jax.device_get(out)))
  t2 = time.perf_counter()
  if timings is not None:
    timings.update(compile_s=t1 - t0, run_s=t2 - t1, n_prompts=len(encoded), batch_size=batch_size, seq_len=seq_len)

  token_str = functools.lru_cache(maxsize=None)(tokenizer.token_str)
  results = []
  i = 0
  for n, out in outputs:
    for j in range(n):
      ids = encoded[i]
      layers = []
      for row in range(out["target_probs"].shape[1]):
        block = row - 1 if row > 0 else None
        layers.append(
          {
            "row": row,
            "block": block,
            "layer": block,
            "name": "embeddings" if block is None else f"after block {block}",
            "target_probs": {lab: float(out["target_probs"][j, row, k]) for k, lab in enumerate(targets.labels)},
            "target_ranks": {lab: int(out["target_ranks"][j, row, k]) for k, lab in enumerate(targets.labels)},
            "top_tokens": [
              {"token": token_str(int(t)), "id": int(t), "prob": float(p)}
              for t, p in zip(out["top_ids"][j, row], out["top_probs"][j, row])
            ],
          }
        )
      results.append(
        {
          "prompt": prompts[i],
          "token_ids": [int(t) for t in ids],
          "tokens": [token_str(int(t)) for t in ids],
          "readout_index": len(ids) - 1,
          "readout_token": token_str(int(ids[-1])),
          "layers": layers,
        }
      )
      i += 1
  return results


# ---------------------------------------------------------------------------------------------------------
# Layer x position: the lens at every row and every prompt position


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("top_k",))
def _position_fn(graphdef, state, tokens, *, top_k: int):
  model = nnx.merge(graphdef, state)
  logits = model.lens(residual_stream(model, tokens)[:, 0])  # [R, T, V]
  top_logits, top_ids = jax.lax.top_k(logits, top_k)
  return top_ids, jnp.exp(top_logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True))


def position_lens(model, tokenizer, prompt: str, top_k: int = 1) -> dict:
  """The logit lens at every row and every position of one prompt: {prompt, tokens, token_ids, rows: R lists of T
  cells [{token, id, prob}, ...] (the top_k tokens, best first)}. Row r = after block r-1 (row 0 = embeddings);
  the last position is the readout, and its last row is the model's own next-token distribution."""
  ids = encode_prompt(tokenizer, prompt)
  if not ids:
    raise UserError(f"prompt {prompt!r} encodes to no tokens")
  if len(ids) > model.cfg.max_position_embeddings:
    raise UserError(f"prompt {prompt!r} has {len(ids)} tokens, more than the model's {model.cfg.max_position_embeddings} positions")
  graphdef, state = split_packed(model)
  top_ids, top_probs = jax.device_get(_position_fn(graphdef, state, jnp.asarray([ids], jnp.int32), top_k=int(top_k)))
  token_str = tokenizer.token_str
  rows = [
    [
      [
        {"token": token_str(int(top_ids[r, t, k])), "id": int(top_ids[r, t, k]), "prob": float(top_probs[r, t, k])}
        for k in range(top_ids.shape[2])
      ]
      for t in range(len(ids))
    ]
    for r in range(top_ids.shape[0])
  ]
  return {"prompt": prompt, "token_ids": [int(i) for i in ids], "tokens": [token_str(int(i)) for i in ids], "rows": rows}


def _visible(token: str) -> str:
  """A token as a figure label: escapes as JSON writes them, spaces as '␣' (a bare space would be invisible)."""
  return json.dumps(token, ensure_ascii=False)[1:-1].replace(" ", "␣")


def save_position_png(grids: list[dict], path: str, titles: Sequence[str] | None = None) -> None:
  """One layer x position panel per grid (`position_lens` output): colour = top-1 probability, text = top-1 token."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  n = len(grids)
  n_rows = len(grids[0]["rows"])
  widths = [len(g["tokens"]) for g in grids]
  fig, axes = plt.subplots(
    1,
    n,
    figsize=(1.2 + sum(0.85 * w + 1.0 for w in widths), 1.2 + 0.24 * n_rows),
    squeeze=False,
    gridspec_kw={"width_ratios": widths},
    constrained_layout=True,
  )
  image = None
  for i, (ax, g) in enumerate(zip(axes[0], grids)):
    probs = np.array([[cell[0]["prob"] for cell in row] for row in g["rows"]])
    image = ax.imshow(probs, aspect="auto", origin="lower", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    for r in range(probs.shape[0]):
      for t in range(probs.shape[1]):
        ax.text(
          t,
          r,
          _visible(g["rows"][r][t][0]["token"])[:7],
          ha="center",
          va="center",
          fontsize=5.5,
          color="white" if probs[r, t] > 0.6 else "black",
        )
    ax.set_xticks(range(len(g["tokens"])), [_visible(t) for t in g["tokens"]], rotation=45, ha="right", fontsize=7)
    ticks = list(range(0, n_rows, max(1, n_rows // 10)))
    ax.set_yticks(ticks, ["emb" if r == 0 else f"b{r - 1}" for r in ticks], fontsize=7)
    ax.set_xlabel("prompt position (input token)", fontsize=7)
    ax.set_ylabel("row (emb, after block b)", fontsize=7)
    ax.set_title(titles[i] if titles else repr(g["prompt"]), fontsize=8)
  fig.colorbar(image, ax=axes, shrink=0.8, label="top-1 lens probability")
  with atomic_path(path) as tmp:  # a failure never leaves a half-written figure
    fig.savefig(tmp, dpi=110, format="png")
  plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Output


def format_table(result: dict, labels: Sequence[str]) -> str:
  """A compact per-prompt table: row, block, top token and its prob, then each target's prob."""
  width = max(8, *(len(lab) for lab in labels))
  head = f"{'row':>3} {'block':>5}  {'top token':<14} {'p':>6}  " + " ".join(f"{lab:>{width}}" for lab in labels)
  lines = [f"prompt {result['prompt']!r} (readout {result['readout_index']}: {result['readout_token']!r})", head]
  for layer in result["layers"]:
    top = layer["top_tokens"][0]
    block = "emb" if layer["block"] is None else str(layer["block"])
    probs = " ".join(f"{layer['target_probs'][lab]:>{width}.2e}" for lab in labels)
    lines.append(f"{layer['row']:>3} {block:>5}  {json.dumps(top['token'])[:14]:<14} {top['prob']:>6.3f}  {probs}")
  return "\n".join(lines)


def save_png(results: list[dict], labels: Sequence[str], path: str) -> None:
  """One layer x target heatmap (log10 probability) per prompt."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  n = len(results)
  cols = min(n, 4)
  nrows = -(-n // cols)
  n_rows_stack = len(results[0]["layers"])
  fig, axes = plt.subplots(
    nrows,
    cols,
    figsize=(1.0 + 0.6 * len(labels) * cols + 1.2 * cols, 0.6 + 0.16 * n_rows_stack * nrows + 0.6 * nrows),
    squeeze=False,
    constrained_layout=True,
  )
  image = None
  for ax, res in zip(axes.flat, results):
    grid = np.array([[layer["target_probs"][lab] for lab in labels] for layer in res["layers"]])
    image = ax.imshow(
      np.log10(np.maximum(grid, 1e-10)), aspect="auto", origin="lower", cmap="viridis", vmin=-10, vmax=0, interpolation="nearest"
    )
    ax.set_title(repr(res["prompt"]), fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ticks = list(range(0, n_rows_stack, max(1, n_rows_stack // 8)))
    ax.set_yticks(ticks, ["emb" if r == 0 else f"b{r - 1}" for r in ticks], fontsize=7)
    ax.set_ylabel("row (emb, after block b)", fontsize=7)
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  fig.colorbar(image, ax=axes, shrink=0.8, label="log10 p(target)")
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)
