"""Memory-efficient causal attention (`model.attention=blockwise`): query / key blocks with an online softmax.

Why: the einsum attention materialises the [B, H, T, T] float32 scores and probabilities per layer, and autodiff
keeps the probabilities of every layer for the backward: at SmolLM2-135M batch 8 x seq 512 on XLA:CPU that was
11 of the step's 15.6 s and 4.8 of its 9.8 GiB of temporaries (docs/notes/issue-14-session8.md). Here each query
block attends to the key blocks at or below the diagonal only (blocks above it are skipped, not masked: the trunk's
bias is causal), with a running max / sum per row (flash-attention style), and a `custom_vjp` saves only q, k, v,
the output and two per-row statistics (max, 1 / sum): the backward recomputes each block's probabilities.

The blocks are static Python slices (the last one may be shorter: any T works), so the loops unroll at trace time
into ~n_q * n_k / 2 small dots; fine inside the scanned layer body. Self-attention only (T == S, as in the
training / lens trunk); generation with a KV cache keeps the einsum attention.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Query and key block length (positions). 64: of 32 / 64 / 128 / 256 (and 64 x 128, 128 x 64) the fastest
# forward + backward at seq 512 on a 2-core AMX Xeon, and as fast as einsum at 128 (docs/notes/issue-14-session8.md).
BLOCK_Q = 64
BLOCK_K = 64
# `model.attention=blockwise` runs the plain einsum attention up to this many positions (models/model.py): at 128
# the two were level on that CPU, from 256 up blockwise was ~2x faster.
MIN_SEQ = 128


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
  return [(s, min(s + size, n)) for s in range(0, n, size)]


def _key_blocks(n: int, q_end: int, size: int) -> list[tuple[int, int]]:
  """The key blocks (of all n keys) a query block ending at `q_end` sees: those starting before it (causal: every
  later key is masked for every query of the block, so those blocks are skipped)."""
  return [(k0, k1) for k0, k1 in _blocks(n, size) if k0 < q_end]


def _split(q, k, v):
  """q [B,T,H,hd] -> [B,KV,G,T,hd]; k, v [B,S,KV,hd] -> [B,KV,S,hd]."""
  b, t, h, hd = q.shape
  kv = k.shape[2]
  q = q.reshape(b, t, kv, h // kv, hd).transpose(0, 2, 3, 1, 4)
  return q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _scores(qb, kb, bias_b, scale):
  """qb [B,KV,G,tq,hd], kb [B,KV,tk,hd], bias_b [B,1,1,tq,tk] -> float32 scores [B,KV,G,tq,tk]."""
  s = jnp.einsum("bkgtd,bksd->bkgts", qb, kb, preferred_element_type=jnp.float32)
  return s * scale + bias_b


def _forward(q, k, v, bias, block_q: int, block_k: int):
  """Returns (out [B,KV,G,T,hd] in v's dtype, (row max, 1 / row sum) [B,KV,G,T] float32).

  The row statistics are kept apart, not as log-sum-exp: for a fully masked row (every bias the float32 min) the
  log-sum-exp rounds to the max, and exp(s - lse) would give each key 1 instead of 1/n."""
  t, hd = q.shape[3], q.shape[4]
  scale = 1.0 / float(hd) ** 0.5
  outs, ms, inv_ls = [], [], []
  for q0, q1 in _blocks(t, block_q):
    qb = q[:, :, :, q0:q1]
    m = l_ = acc = None
    for k0, k1 in _key_blocks(k.shape[2], q1, block_k):
      s = _scores(qb, k[:, :, k0:k1], bias[:, :, :, q0:q1, k0:k1], scale)
      m_blk = s.max(axis=-1)
      m_new = m_blk if m is None else jnp.maximum(m, m_blk)
      p = jnp.exp(s - m_new[..., None])
      pv = jnp.einsum("bkgts,bksd->bkgtd", p.astype(v.dtype), v[:, :, k0:k1], preferred_element_type=jnp.float32)
      if m is None:
        l_, acc = p.sum(axis=-1), pv
      else:
        alpha = jnp.exp(m - m_new)
        l_ = alpha * l_ + p.sum(axis=-1)
        acc = alpha[..., None] * acc + pv
      m = m_new
    inv_l = 1.0 / l_
    outs.append((acc * inv_l[..., None]).astype(v.dtype))
    ms.append(m)
    inv_ls.append(inv_l)
  return jnp.concatenate(outs, axis=3), (jnp.concatenate(ms, axis=3), jnp.concatenate(inv_ls, axis=3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend(q, k, v, bias, block_q, block_k):
  return _forward(q, k, v, bias, block_q, block_k)[0]


def _attend_fwd(q, k, v, bias, block_q, block_k):
  out, stats = _forward(q, k, v, bias, block_q, block_k)
  return out, (q, k, v, bias, out, stats)


def _attend_bwd(block_q, block_k, res, g):
  q, k, v, bias, out, (m, inv_l) = res
  t, hd = q.shape[3], q.shape[4]
  scale = 1.0 / float(hd) ** 0.5
  f32 = jnp.float32
  # D_i = sum_d dO_i * O_i: the softmax backward's row term (dS = P * (dP - D)).
  delta = jnp.einsum("bkgtd,bkgtd->bkgt", g.astype(f32), out.astype(f32))
  dq_blocks = []
  dk = [None] * len(_blocks(k.shape[2], block_k))
  dv = [None] * len(dk)
  for q0, q1 in _blocks(t, block_q):
    qb, gb = q[:, :, :, q0:q1], g[:, :, :, q0:q1]
    m_b, inv_l_b, delta_b = (x[:, :, :, q0:q1, None] for x in (m, inv_l, delta))
    dq_b = None
    for j, (k0, k1) in enumerate(_key_blocks(k.shape[2], q1, block_k)):
      kb, vb = k[:, :, k0:k1], v[:, :, k0:k1]
      p = jnp.exp(_scores(qb, kb, bias[:, :, :, q0:q1, k0:k1], scale) - m_b) * inv_l_b  # [B,KV,G,tq,tk]
      dv_j = jnp.einsum("bkgts,bkgtd->bksd", p.astype(g.dtype), gb, preferred_element_type=f32)
      dp = jnp.einsum("bkgtd,bksd->bkgts", gb, vb, preferred_element_type=f32)
      ds = (p * (dp - delta_b) * scale).astype(q.dtype)
      dq_j = jnp.einsum("bkgts,bksd->bkgtd", ds, kb, preferred_element_type=f32)
      dk_j = jnp.einsum("bkgts,bkgtd->bksd", ds, qb, preferred_element_type=f32)
      dq_b = dq_j if dq_b is None else dq_b + dq_j
      dk[j] = dk_j if dk[j] is None else dk[j] + dk_j
      dv[j] = dv_j if dv[j] is None else dv[j] + dv_j
    dq_blocks.append(dq_b)
  dq = jnp.concatenate(dq_blocks, axis=3).astype(q.dtype)
  return dq, jnp.concatenate(dk, axis=2).astype(k.dtype), jnp.concatenate(dv, axis=2).astype(v.dtype), jnp.zeros_like(bias)


_attend.defvjp(_attend_fwd, _attend_bwd)


def blockwise_attention(q, k, v, bias, block_q: int | None = None, block_k: int | None = None, recompute: str = "custom_vjp"):
  """Causal grouped-query attention, as `model.attention` einsum computes it, in blocks.

  q [B,T,H,hd], k/v [B,T,KV,hd], bias [B,1,1,T,T] (0 = allowed, float32 min = masked; causal) -> [B,T,H*hd].
  recompute: custom_vjp (the backward recomputes per block from the saved row statistics) or checkpoint (autodiff of
  the blockwise forward under `jax.checkpoint`).
  """
  block_q, block_k = block_q or BLOCK_Q, block_k or BLOCK_K  # the module constants, read at trace time
  b, t, h, hd = q.shape
  if k.shape[1] != t:
    raise ValueError(f"blockwise attention is self-attention only: {t} queries, {k.shape[1]} keys")
  qs, ks, vs = _split(q, k, v)
  if recompute == "custom_vjp":
    out = _attend(qs, ks, vs, bias, block_q, block_k)
  elif recompute == "checkpoint":
    out = jax.checkpoint(lambda *a: _forward(*a, block_q, block_k)[0])(qs, ks, vs, bias)
  else:
    raise ValueError(f"recompute={recompute!r} is not one of custom_vjp, checkpoint")
  # [B,KV,G,T,hd] -> [B,T,KV,G,hd] -> [B,T,H*hd] (the einsum path's head order: h = kv * G + g)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h * hd)
