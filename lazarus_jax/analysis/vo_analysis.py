"""What the V/O adapters learned: per-layer, per-head update norms, how much of each head's OV change writes the
class words, and where the readout position attends.

Head bookkeeping (the model's attention): query head h reads key/value head h // (H / KV); v_proj's output columns
[kv * hd, (kv + 1) * hd) belong to KV head kv, o_proj's input rows [h * hd, (h + 1) * hd) to query head h. So head h's
OV circuit is W_V[:, kv(h)] @ W_O[h] ([D, D], rank <= hd), the map from a key's normed residual to what the head adds
to the residual stream (before the attention weights).

Computed in numpy float64 from the model's weights (bf16 weights are read exactly); the attention maps recompute
q and k from the residual stream the model's own forward produces (`model.residual_stream`), in float32.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
from flax import nnx

from lazarus_jax.models.model import residual_stream, rope_inv_freq, split_packed

# Token roles per format (`role_spans`). The word format has no operator token (the operation is only in the
# story), so it has no `operator` role; fewshot's `operator` is the query's symbol and `examples` its solved examples.
FORMAT_ROLES = {
  "symbolic": ("operand_a", "operator", "operand_b", "readout_token", "other"),
  "semantic": ("operand_a", "operator", "operand_b", "readout_token", "other"),
  "fewshot": ("operand_a", "operator", "operand_b", "examples", "readout_token", "other"),
  "word": ("operand_a", "operand_b", "readout_token", "other"),
}
ROLES = ("operand_a", "operator", "operand_b", "examples", "readout_token", "other")  # every format's, in this order


def _weights(model, name: str) -> np.ndarray:
  w = getattr(model.layers, name)[...]
  return np.asarray(jax.device_get(w.astype("float32")), np.float64)  # [layers, in, out]


def lora_deltas(model) -> dict:
  """{target: ΔW [n_layers, in, out]} = scale * A @ B over the adapted range, zeros elsewhere (float64)."""
  lora, cfg = model.lora, model.cfg
  if lora is None:
    return {}
  out = {}
  for t, (a, b) in lora.stacked_weights().items():
    a, b = np.asarray(jax.device_get(a), np.float64), np.asarray(jax.device_get(b), np.float64)
    full = np.zeros((cfg.num_layers, a.shape[1], b.shape[2]))
    full[lora.layer_start : lora.layer_end] = lora.scale * np.einsum("lir,lro->lio", a, b)
    out[t] = full
  return out


def update_norms(model) -> dict:
  """Frobenius norms of the LoRA updates, per layer and head: v [n_layers, KV] (a KV head's output columns),
  o [n_layers, H] (a query head's input rows), each with the base weight's norm beside it (relative size)."""
  cfg, deltas = model.cfg, lora_deltas(model)
  hd, out = cfg.head_dim, {}
  for t, heads in (("v", cfg.num_kv_heads), ("o", cfg.num_heads)):
    if t not in deltas:
      continue
    base = _weights(model, t)

    def per_head(w):
      if t == "v":
        return np.sqrt(np.sum(w.reshape(w.shape[0], w.shape[1], heads, hd) ** 2, axis=(1, 3)))
      return np.sqrt(np.sum(w.reshape(w.shape[0], heads, hd, w.shape[2]) ** 2, axis=(2, 3)))

    out[t] = {"delta": per_head(deltas[t]), "base": per_head(base)}
  return out


def ov_matrices(wv: np.ndarray, wo: np.ndarray, num_heads: int, num_kv_heads: int, head_dim: int) -> np.ndarray:
  """Per head OV [H, D, D] of one layer from W_V [D, KV*hd] and W_O [H*hd, D]."""
  group = num_heads // num_kv_heads
  return np.stack(
    [wv[:, (h // group) * head_dim : (h // group + 1) * head_dim] @ wo[h * head_dim : (h + 1) * head_dim] for h in range(num_heads)]
  )


def delta_ov_class_fraction(model, class_basis: np.ndarray) -> dict:
  """Per layer and head: ||ΔOV||_F and the fraction of ||ΔOV||_F^2 whose output lies in span(class_basis)
  (U [D, k] orthonormal), ||ΔOV U||^2 / ||ΔOV||^2. A head whose update writes in random directions scores k / D
  (`chance`); one that writes only the class words scores 1. Also the base OV's own fraction, for comparison."""
  cfg, deltas = model.cfg, lora_deltas(model)
  wv, wo = _weights(model, "v"), _weights(model, "o")
  dv = deltas.get("v", np.zeros_like(wv))
  do = deltas.get("o", np.zeros_like(wo))
  n, h = cfg.num_layers, cfg.num_heads
  delta_norm, frac, base_frac = np.zeros((n, h)), np.full((n, h), np.nan), np.zeros((n, h))
  for layer in range(n):
    args = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    base = ov_matrices(wv[layer], wo[layer], *args)
    delta = ov_matrices(wv[layer] + dv[layer], wo[layer] + do[layer], *args) - base
    d2 = np.sum(delta**2, axis=(1, 2))
    delta_norm[layer] = np.sqrt(d2)
    nz = d2 > 0
    frac[layer, nz] = np.sum((delta @ class_basis) ** 2, axis=(1, 2))[nz] / d2[nz]
    base_frac[layer] = np.sum((base @ class_basis) ** 2, axis=(1, 2)) / np.sum(base**2, axis=(1, 2))
  return {
    "delta_norm": delta_norm,
    "class_fraction": frac,
    "base_class_fraction": base_frac,
    "chance": class_basis.shape[1] / cfg.hidden_size,
  }


# ---- where the readout attends ----------------------------------------------------------------------------------

_OPERANDS = re.compile(r"(-?\d+)(\D+?)(-?\d+)")


def _operand_spans(text: str, offset: int = 0) -> dict:
  """The first `a <op> b` in `text`: operand_a, operator (the text between the operands, stripped), operand_b."""
  m = _OPERANDS.search(text)
  if not m:
    return {}
  op_start = m.start(2) + len(m.group(2)) - len(m.group(2).lstrip())
  op_end = m.end(2) - (len(m.group(2)) - len(m.group(2).rstrip()))
  return {
    "operand_a": (offset + m.start(1), offset + m.end(1)),
    "operator": (offset + op_start, offset + op_end),
    "operand_b": (offset + m.start(3), offset + m.end(3)),
  }


def role_spans(example) -> tuple[dict, tuple[str, ...]]:
  """({role: (start, end) character span}, the format's roles) of an `Example` (or a bare prompt string, read as
  symbolic / semantic). symbolic, semantic: the first `a <op> b`. fewshot: the query line's operands and symbol, and
  `examples` = the solved-example lines before it (their newlines included). word: the two operands where the
  template puts `{a}` and `{b}` (b may come first); no operator."""
  if isinstance(example, str):
    return _operand_spans(example), FORMAT_ROLES["symbolic"]
  fmt, prompt = example.fmt, example.prompt
  if fmt == "fewshot":
    query = prompt.rfind("\n") + 1
    spans = _operand_spans(prompt[query:], query)
    if query:
      spans["examples"] = (0, query)
    return spans, FORMAT_ROLES[fmt]
  if fmt == "word":
    from lazarus_jax.data.prompt_formats import word_template

    _, _, template = word_template(example)
    return _template_operand_spans(template, example.a, example.b), FORMAT_ROLES[fmt]
  if fmt in FORMAT_ROLES:
    return _operand_spans(prompt), FORMAT_ROLES[fmt]
  raise ValueError(f"no token roles for format {fmt!r}: use one of {', '.join(FORMAT_ROLES)}")


def _template_operand_spans(template: str, a: int, b: int) -> dict:
  """Character spans of `{a}` and `{b}` in `template.format(a=a, b=b)`."""
  import string

  spans, pos, values = {}, 0, {"a": str(a), "b": str(b)}
  for literal, field, _, _ in string.Formatter().parse(template):
    pos += len(literal)
    if field is not None:
      spans[f"operand_{field}"] = (pos, pos + len(values[field]))
      pos += len(values[field])
  return spans


def token_roles(tok, example, ids) -> list[str]:
  """Each prompt token's role (`role_spans`; the last token is `readout_token` when it has no other role; the rest
  `other`). Character spans of tokens come from decoding growing prefixes; a token that adds no character (the
  second byte of a two-byte character) takes the role of the token it completes."""
  spans, _ = role_spans(example)
  roles, prev = [], 0
  for i in range(len(ids)):
    end = len(tok.decode(ids[: i + 1]))
    role = "other"
    if end == prev and roles:
      role = roles[-1]
    else:
      for name, (s, e) in spans.items():
        if prev < e and end > s:  # the token's characters overlap the span
          role = name
          break
    if i == len(ids) - 1 and role == "other":
      role = "readout_token"
    roles.append(role)
    prev = end
  return roles


def _rms(x, w, eps):
  return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _rope(x, cos, sin):
  half = x.shape[-1] // 2
  return x * cos[:, None, :] + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin[:, None, :]


@functools.partial(jax.jit, static_argnums=(0,))
def _stack_fn(graphdef, state, tokens, mask):
  return residual_stream(nnx.merge(graphdef, state), tokens, mask)


def residual_rows(model, prompt_ids, batch_size: int = 32):
  """Per prompt, its residual stream [n_layers + 1, T, D] (float32) from the model's own jitted forward (right
  padding: the causal mask keeps the real tokens' rows exactly as unpadded)."""
  graphdef, state = split_packed(model)
  seq_len = -(-max(len(p) for p in prompt_ids) // 16) * 16
  for start in range(0, len(prompt_ids), batch_size):
    chunk = prompt_ids[start : start + batch_size]
    tokens = np.zeros((batch_size, seq_len), np.int32)
    mask = np.zeros((batch_size, seq_len), np.int32)
    mask[:, 0] = 1
    for i, ids in enumerate(chunk):
      tokens[i, : len(ids)], mask[i, : len(ids)] = ids, 1
    stack = np.asarray(jax.device_get(_stack_fn(graphdef, state, tokens, mask)), np.float32)
    for i, ids in enumerate(chunk):
      yield stack[:, i, : len(ids)]


def readout_attention(model, prompt_ids) -> list[np.ndarray]:
  """Per prompt, the attention probabilities of the readout (last) token: [n_layers, H, T] (float32), recomputed
  from the model's residual stream with its q/k weights (and q/k adapters, if any)."""
  cfg = model.cfg
  wq, wk = _weights(model, "q").astype(np.float32), _weights(model, "k").astype(np.float32)
  deltas = lora_deltas(model)
  if "q" in deltas:
    wq = wq + deltas["q"].astype(np.float32)
  if "k" in deltas:
    wk = wk + deltas["k"].astype(np.float32)
  norm_w = np.asarray(jax.device_get(model.layers.attn_norm[...].astype("float32")))
  inv_freq = rope_inv_freq(cfg)
  group, hd = cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
  out = []
  for ids, stack in zip(prompt_ids, residual_rows(model, prompt_ids)):
    t = len(ids)
    ang = np.arange(t, dtype=np.float32)[:, None] * inv_freq[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    probs = np.zeros((cfg.num_layers, cfg.num_heads, t), np.float32)
    for layer in range(cfg.num_layers):
      x = _rms(stack[layer], norm_w[layer], cfg.rms_norm_eps)
      q = _rope((x @ wq[layer]).reshape(t, cfg.num_heads, hd), cos, sin)[-1]  # [H, hd] at the readout
      k = _rope((x @ wk[layer]).reshape(t, cfg.num_kv_heads, hd), cos, sin)  # [T, KV, hd]
      scores = np.einsum("hd,thd->ht", q, np.repeat(k, group, axis=1)) / np.sqrt(hd)
      scores -= scores.max(-1, keepdims=True)
      e = np.exp(scores)
      probs[layer] = e / e.sum(-1, keepdims=True)
    out.append(probs)
  return out


def role_masses(model, tok, examples, prompt_ids) -> list[dict]:
  """Per prompt, the readout's attention mass on each of its format's roles, {role: [n_layers, H]} (summing to 1
  over the roles); `examples`: `Example`s or bare symbolic / semantic prompt strings."""
  out = []
  for example, ids, probs in zip(examples, prompt_ids, readout_attention(model, prompt_ids)):
    roles = np.asarray(token_roles(tok, example, ids))
    out.append({r: probs[:, :, roles == r].sum(-1) for r in role_spans(example)[1]})
  return out


def mean_role_mass(masses: list[dict]) -> dict:
  """{role: [n_layers, H]} mean over prompts of `role_masses`, for the roles of every prompt's format (a word prompt
  has no operator, so a run of word prompts has no `operator` entry). Roles only some prompts have are averaged over
  those prompts."""
  roles = [r for r in ROLES if any(r in m for m in masses)]
  return {r: np.mean([m[r] for m in masses if r in m], axis=0) for r in roles}


def attention_by_role(model, tok, examples, prompt_ids) -> dict:
  """Mean attention mass from the readout to each role's tokens, [n_layers, H] per role (`mean_role_mass`)."""
  return mean_role_mass(role_masses(model, tok, examples, prompt_ids))
