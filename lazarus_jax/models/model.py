"""A Llama-family decoder in Flax NNX.

One style end to end: the decoder blocks' weights are stacked over layers (leading axis `layers`) and the
blocks run as a `jax.lax.scan` over that stack. LoRA adapters (see `lora.py`) live on the model as
`LoRAParam` variables stacked over the adapted layer range only, so the scan is split into three segments
(below / inside / above the adapted range) and no backward pass runs below the lowest adapted layer.

Layer indexing (DESIGN.md §2): the residual stream recorded in the `residual` intermediate has n_layers+1
rows; row 0 is the embedding output and row L+1 is the residual stream after block L (HF `hidden_states[L+1]`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lazarus_jax.models.sharding import ACTIVATION_AXES, constrain

# Projection names, shared with LoRA targets and the HF name map.
ATTN_PROJS = ("q", "k", "v", "o")
MLP_PROJS = ("gate", "up", "down")
PROJS = ATTN_PROJS + MLP_PROJS


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # Sorted (key, value) items of HF's `rope_scaling` dict (hashable: the config is static under jit).
  rope_scaling: tuple | None = None
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 2048
  param_dtype: str = "float32"
  compute_dtype: str = "float32"  # matmul operands; accumulation, norms, softmax: float32
  # The residual stream and the matmul outputs. float32 on CPU (XLA:CPU upcasts 16-bit elementwise work: bf16 was
  # 60% slower for SmolLM2); bfloat16 halves the activation traffic on accelerators (+22% tokens/s on an H200).
  activation_dtype: str = "float32"
  remat: str = "none"  # none | full | dots (save matmul outputs)
  # Attention kernel: einsum (ours; every backend) | blockwise (ours: causal blocks, online softmax, recomputed in
  # the backward; models/blockwise.py) | xla | cudnn (`jax.nn.dot_product_attention`; cudnn = fused flash attention
  # on NVIDIA GPUs, bf16/fp16 only). Generation with a KV cache always uses einsum.
  attention: str = "einsum"
  # True: the blocks run as a `jax.lax.scan` over the stacked weights (one compiled block, fast compiles; what
  # XLA:CPU wants). False: unrolled, static per-layer slices (longer compiles; no per-iteration weight copies).
  scan_layers: bool = True

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> "LlamaConfig":
    """From an HF `config.json` dict (LlamaConfig keys)."""
    heads = hf["num_attention_heads"]
    # transformers v5 writes `rope_parameters` (theta + scaling); v4 wrote `rope_theta` + `rope_scaling`.
    rope = dict(hf.get("rope_parameters") or {})
    rope.update(hf.get("rope_scaling") or {})
    rope_theta = hf.get("rope_theta") or rope.pop("rope_theta", 10000.0)
    rope.pop("rope_theta", None)
    scaling = tuple(sorted((k, v) for k, v in rope.items() if not isinstance(v, (list, dict)))) or None
    kw = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=float(rope_theta),
      rope_scaling=scaling,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=hf.get("max_position_embeddings", 2048),
    )
    kw.update(overrides)
    return cls(**kw)

  @property
  def rope_scaling_dict(self) -> dict | None:
    return dict(self.rope_scaling) if self.rope_scaling else None


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
  """RoPE inverse frequencies [head_dim/2], with llama3 or linear scaling as HF configures it."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  scaling = cfg.rope_scaling_dict
  if not scaling:
    return inv_freq.astype(np.float32)
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind in (None, "default"):
    return inv_freq.astype(np.float32)
  if kind == "linear":
    return (inv_freq / scaling["factor"]).astype(np.float32)
  if kind == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  from lazarus_jax.errors import UserError

  raise UserError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def apply_rope(x, cos, sin):
  """Rotate-half RoPE (HF's layout). x [B,T,H,hd]; cos/sin [B,T,hd]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def rope_cos_sin(inv_freq, positions, dtype):
  """cos/sin [B,T,head_dim] for positions [B,T]: angles in float32, the tables cast to `dtype` (the activations')."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def rms_norm(x, weight, eps, out_dtype):
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (weight.astype(jnp.float32) * x32).astype(out_dtype)


class LoRAParam(nnx.Variable):
  """Trainable adapter weights; the base model's `nnx.Param`s stay frozen."""


def _param(value, axes):
  return nnx.Param(value, logical_axes=axes)


# Logical axes of one layer's projection (in, out): the same for every model.
PROJ_AXES = {
  "q": ("embed", "heads"),
  "k": ("embed", "kv_heads"),
  "v": ("embed", "kv_heads"),
  "o": ("heads", "embed"),
  "gate": ("embed", "mlp"),
  "up": ("embed", "mlp"),
  "down": ("mlp", "embed"),
}


def gathered_axes(axes: tuple) -> tuple:
  """A projection's logical axes as its dot in the block sees it: the `embed` axis gathered like the residual
  stream's (FSDP), any tensor-parallel axis kept."""
  return tuple("act_embed" if a == "embed" else a for a in axes)


def proj_shapes(cfg: LlamaConfig) -> dict[str, tuple[tuple[int, int], tuple[str, str]]]:
  """Shapes (in, out) and logical axes of each stacked projection, per layer."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  dims = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
  return {name: (dims[name], PROJ_AXES[name]) for name in PROJS}


class DecoderStack(nnx.Module):
  """All decoder blocks' weights, stacked over layers. Projections are stored [layers, in, out]."""

  def __init__(self, cfg: LlamaConfig, weights: dict | None, rngs: nnx.Rngs):
    n, dtype = cfg.num_layers, jnp.dtype(cfg.param_dtype)
    init = nnx.initializers.normal(0.02)
    for name, ((din, dout), axes) in proj_shapes(cfg).items():
      value = weights[name] if weights else init(rngs.params(), (n, din, dout), dtype)
      setattr(self, name, _param(jnp.asarray(value, dtype), ("layers",) + axes))
    for name in ("attn_norm", "mlp_norm"):
      value = weights[name] if weights else jnp.ones((n, cfg.hidden_size), dtype)
      setattr(self, name, _param(jnp.asarray(value, dtype), ("layers", "norm")))


class LlamaModel(nnx.Module):
  """Llama decoder. `weights` (our layout, see `convert.py`) or random init when None."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, weights: dict | None = None):
    self.cfg = cfg
    dtype = jnp.dtype(cfg.param_dtype)
    w = weights or {}
    init = nnx.initializers.normal(0.02)
    embed = w.get("embed")
    if embed is None:
      embed = init(rngs.params(), (cfg.vocab_size, cfg.hidden_size), dtype)
    self.embed = _param(jnp.asarray(embed, dtype), ("vocab", "embed"))
    self.layers = DecoderStack(cfg, w.get("layers"), rngs)
    final_norm = w.get("final_norm")
    self.final_norm = _param(jnp.asarray(final_norm if final_norm is not None else jnp.ones((cfg.hidden_size,)), dtype), ("norm",))
    if not cfg.tie_word_embeddings:
      lm_head = w.get("lm_head")
      if lm_head is None:
        lm_head = init(rngs.params(), (cfg.vocab_size, cfg.hidden_size), dtype)
      self.lm_head = _param(jnp.asarray(lm_head, dtype), ("vocab", "embed"))
    self.inv_freq = nnx.Variable(jnp.asarray(rope_inv_freq(cfg)))  # a constant, not a Param
    self.lora = nnx.data(None)  # set by lora.add_lora

  # ---- readout ---------------------------------------------------------------------------------
  def unembed_matrix(self):
    return (self.embed if self.cfg.tie_word_embeddings else self.lm_head)[...]

  def lens(self, h):
    """Logit lens: unembed(final_norm(h)) in float32 logits. h [..., D]."""
    return lens_logits(self.cfg, self.final_norm[...], self.unembed_matrix(), h)

  # ---- trunk -----------------------------------------------------------------------------------
  def trunk(self, tokens, mask=None, positions=None):
    """Runs the decoder blocks. Returns the residual stream stack [n_layers+1, B, T, D].

    tokens [B,T] int; mask [B,T] (1 = real token) masks padded keys; positions default to 0..T-1.
    The stack is also sown as the `residual` intermediate.
    """
    cfg = self.cfg
    cdt = jnp.dtype(cfg.compute_dtype)
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if mask is None:
      mask = jnp.ones((b, t), jnp.int32)
    adt = jnp.dtype(cfg.activation_dtype)
    cos, sin = rope_cos_sin(self.inv_freq[...], positions, adt)
    causal = jnp.tril(jnp.ones((t, t), bool))
    allowed = causal[None, :, :] & (mask[:, None, :] > 0)  # [B, Tq, Tk]
    bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[:, None, None]  # [B,1,1,Tq,Tk]

    # The residual stream, norms, rope and softmax stay float32 whatever the compute dtype: only matmul operands
    # are cast (in `dense`). XLA:CPU has no bf16 elementwise arithmetic and would upcast each fusion anyway, and
    # bf16 scan residuals are saved by converting the whole stacked buffer per layer.
    h = constrain(self.embed[...][tokens].astype(adt), ACTIVATION_AXES)
    # Cast the projection stacks once, outside the scan (a no-op when param and compute dtypes agree): a cast
    # inside the body would be re-done per layer and its outputs saved, stacked, as residuals for the backward.
    layer_weights = {name: self.projection_stack(name, cdt) for name in PROJS}
    layer_weights.update({name: getattr(self.layers, name)[...] for name in ("attn_norm", "mlp_norm")})
    lora = self.lora
    lo, hi = (lora.layer_start, lora.layer_end) if lora is not None else (cfg.num_layers, cfg.num_layers)
    lora_weights = lora.stacked_weights() if lora is not None else None

    block = make_block(cfg, cos, sin, bias, lora.scale if lora is not None else 0.0)
    outs = [h[None]]
    for start, end, adapters in ((0, lo, None), (lo, hi, lora_weights), (hi, cfg.num_layers, None)):
      if end <= start:
        continue
      if cfg.scan_layers:
        seg = jax.tree.map(lambda x: x[start:end], layer_weights)
        h, ys = jax.lax.scan(block, h, (seg, adapters))
        outs.append(ys)
        continue
      for i in range(start, end):
        layer = jax.tree.map(lambda x: x[i], layer_weights)
        h, y = block(h, (layer, jax.tree.map(lambda x: x[i - start], adapters)))
        outs.append(y[None])
    stack = jnp.concatenate(outs, axis=0)
    self.sow(nnx.Intermediate, "residual", stack)
    return stack

  def projection_stack(self, name, cdt):
    """One stacked projection in the compute dtype, 16-bit ones as raw bits (see `as_bits`)."""
    w = getattr(self.layers, name)[...]
    if w.dtype == jnp.uint16:  # already packed by `pack_frozen_layers`: bits of param_dtype
      pdt = jnp.dtype(self.cfg.param_dtype)
      if pdt == cdt:
        return w
      w = _from_bits(w, pdt)
    return as_bits(w.astype(cdt))

  def __call__(self, tokens, mask=None, positions=None):
    """Final-layer logits [B,T,V] (float32)."""
    return self.lens(residual_stream(self, tokens, mask, positions)[-1])


def make_block(cfg: LlamaConfig, cos, sin, bias, lora_scale: float):
  """The scanned block: (h, (layer weights, adapters)) -> (h, h)."""

  def block(h, xs):
    weights, adapters = xs
    h = decoder_block(cfg, weights, adapters, lora_scale, constrain(h, ACTIVATION_AXES), cos, sin, bias)
    return h, h

  if cfg.remat == "full":
    block = jax.checkpoint(block)
  elif cfg.remat == "dots":
    block = jax.checkpoint(block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  elif cfg.remat != "none":
    from lazarus_jax.errors import UserError

    raise UserError(f"model.remat={cfg.remat!r} is not one of none, full, dots")
  return block


def _dot(x, w, w_transposed: bool):
  """x [..., d] @ w [d, f] (or w [f, d] when `w_transposed`) -> [..., f], accumulated in float32."""
  dims = (((x.ndim - 1,), (1 if w_transposed else 0,)), ((), ()))
  return jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)


def as_bits(w):
  """A 16-bit float array as raw uint16 bits. Why: XLA:CPU upcasts bf16 dynamic-slices inside a scan by
  converting the WHOLE scanned weight stack to float32 every step; integer slices are left alone. Inside jit on
  XLA:CPU this is a copy, not a view: the training step gets its stacks packed in advance (`pack_frozen_layers`)."""
  return jax.lax.bitcast_convert_type(w, jnp.uint16) if jnp.dtype(w.dtype).itemsize == 2 else w


def pack_frozen_layers(base: dict, shardings=None) -> dict:
  """Model weights (a pure state dict: the base, or the whole model) with every 16-bit projection stack stored as
  raw uint16 bits; everything else unchanged.

  Why: inside jit `as_bits` is not free on XLA:CPU -- it materialises a copy of each whole stack every call
  (~100 ms of a 400 ms bf16 SmolLM2 training step). Packed once, outside the jitted step / lens / readout, the
  model reads the stacks as bits of `param_dtype` (see `LlamaModel.projection_stack`). `shardings`: kept.
  """
  layers = base["layers"]
  names = [k for k in PROJS if k in layers and jnp.dtype(layers[k].dtype).itemsize == 2]
  if not names:  # nothing to pack: the same arrays, no copy
    return base
  stacks_sh = None if shardings is None else {k: shardings["layers"][k] for k in names}
  packed = jax.jit(lambda stacks: {k: as_bits(v) for k, v in stacks.items()}, out_shardings=stacks_sh)({k: layers[k] for k in names})
  return {**base, "layers": {**layers, **packed}}


def split_packed(model) -> tuple[Any, dict]:
  """`nnx.split(model)` with the weights packed (`pack_frozen_layers`) for a jitted readout over many batches."""
  graphdef, state = nnx.split(model)
  return graphdef, pack_frozen_layers(nnx.to_pure_dict(state))


def _from_bits(w, dtype):
  return jax.lax.bitcast_convert_type(w, dtype) if w.dtype == jnp.uint16 else w


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def dense(x, w, w_transposed: bool = False, out_dtype=jnp.float32, bits_dtype=None, w_axes=None):
  """x @ w with both operands in w's dtype (the compute dtype), accumulated and returned in float32.

  Forward AND backward run as same-dtype dots with float32 accumulation. Why: XLA:CPU runs bf16 x bf16 -> f32
  dots natively (AMX/AVX512-BF16) but upcasts a bf16 -> bf16 dot, or a mixed f32 x bf16 one (what autodiff's
  transpose of a `preferred_element_type` dot produces), to float32, converting whole weight stacks every step
  (4-5x slower). The backward casts the incoming cotangent to the compute dtype (the usual mixed-precision
  contract). `x` may be float32: only the dot sees it in the compute dtype. In float32 this is a plain matmul.
  `w_axes`: the logical axes `w` is gathered to for the dot (under `sharding.pinned_activations`), here and again
  in the backward, so the residual stays the caller's (sharded) `w`.
  """
  w = constrain(_from_bits(w, bits_dtype), w_axes)
  return _dot(x.astype(w.dtype), w, w_transposed).astype(out_dtype)


def _dense_fwd(x, w, w_transposed, out_dtype, bits_dtype, w_axes):
  # The residual is `w` itself (bits or not, ungathered): a scanned input is then forwarded, never re-stacked.
  return dense(x, w, w_transposed, out_dtype, bits_dtype, w_axes), (x, w)


def _dense_bwd(w_transposed, out_dtype, bits_dtype, w_axes, res, g):
  x, w_in = res
  w = constrain(_from_bits(w_in, bits_dtype), w_axes)
  g, xc = g.astype(w.dtype), x.astype(w.dtype)
  dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (0 if w_transposed else 1,)), ((), ())), preferred_element_type=jnp.float32).astype(
    x.dtype
  )
  # Weight gradient (dead code, removed by XLA, for frozen weights; needed for the adapters).
  x2, g2 = xc.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  pair = (g2, x2) if w_transposed else (x2, g2)
  if w_in.dtype == jnp.uint16:  # frozen bits: no gradient
    return dx, np.zeros(w_in.shape, jax.dtypes.float0)
  dw = jax.lax.dot_general(*pair, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32).astype(w.dtype)
  return dx, dw


dense.defvjp(_dense_fwd, _dense_bwd)


def project(x, weights, adapters, lora_scale, name, cdt, out_dtype=jnp.float32):
  """x @ W (+ LoRA: scale * (x @ A) @ B): operands in the compute dtype, float32 accumulation, `out_dtype` result."""
  w = weights[name]
  # One layer's slice, gathered inside the dot (FSDP): never the whole stack, and the residual stays the slice.
  axes = gathered_axes(PROJ_AXES[name])
  # From `trunk` the stacks arrive already cast (16-bit ones as raw bits, see `as_bits`).
  y = (
    dense(x, w, out_dtype=out_dtype, bits_dtype=cdt, w_axes=axes)
    if w.dtype == jnp.uint16
    else dense(x, w.astype(cdt), out_dtype=out_dtype, w_axes=axes)
  )
  if adapters is not None and name in adapters:
    a, b_ = adapters[name]
    y = y + lora_scale * dense(dense(x, a.astype(cdt)), b_.astype(cdt), out_dtype=out_dtype)
  return y


def attention(q, k, v, bias, impl: str = "einsum"):
  """Grouped-query attention. q [B,T,H,hd], k/v [B,S,KV,hd], bias [B,1,1,T,S] -> [B,T,H*hd].

  impl: einsum (below), blockwise (`blockwise.py`: causal blocks, online softmax, recomputed in the backward;
  `bias` must be causal) or `jax.nn.dot_product_attention`'s xla / cudnn (softmax scale 1/sqrt(hd) in all).
  """
  b, t, h, hd = q.shape
  if impl == "blockwise":
    from lazarus_jax.models import blockwise

    if t > blockwise.MIN_SEQ:
      return blockwise.blockwise_attention(q, k, v, bias)
    impl = "einsum"  # short sequences: one block, where the plain einsum is as cheap (blockwise.MIN_SEQ)
  if impl != "einsum":
    if impl not in ("xla", "cudnn"):
      from lazarus_jax.errors import UserError

      raise UserError(f"model.attention={impl!r} is not one of einsum, blockwise, xla, cudnn")
    # The boolean mask the bias encodes, with the diagonal always allowed: a padded query row would otherwise be
    # fully masked, which the fused kernel may turn into NaN (einsum gives it a uniform row); real rows unchanged.
    allowed = (bias[:, 0] == 0) | jnp.eye(t, k.shape[1], dtype=bool)
    dt = jnp.bfloat16 if impl == "cudnn" and q.dtype == jnp.float32 else q.dtype  # cuDNN takes 16-bit only
    out = jax.nn.dot_product_attention(q.astype(dt), k.astype(dt), v.astype(dt), mask=allowed, implementation=impl)
    return out.astype(v.dtype).reshape(b, t, h * hd)
  kv = k.shape[2]
  q = q.reshape(b, t, kv, h // kv, hd)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(jnp.float32(hd)) + bias
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)
  return out.reshape(b, t, h * hd)


def decoder_block(cfg: LlamaConfig, w, adapters, lora_scale, h, cos, sin, bias, cache=None):
  """One decoder block on h [B,T,D] (the residual stream, in the activation dtype): training, lens and generation.

  cache: None, or (k_cache, v_cache, slot) with k/v_cache [B,S,KV,hd] of one layer. This chunk's k/v are written at
  column `slot` and q attends over the whole cache (`bias` [B,1,1,T,S] hides padding and unwritten columns); the
  result is then (h, (k_cache, v_cache)). Without a cache the graph is the training one, untouched.
  """
  cdt, adt = jnp.dtype(cfg.compute_dtype), h.dtype  # h: the residual stream, in the activation dtype
  b, t, _ = h.shape
  proj = functools.partial(project, weights=w, adapters=adapters, lora_scale=lora_scale, cdt=cdt, out_dtype=adt)
  x = rms_norm(h, w["attn_norm"], cfg.rms_norm_eps, adt)
  q = proj(x, name="q").reshape(b, t, cfg.num_heads, cfg.head_dim)
  k = proj(x, name="k").reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  v = proj(x, name="v").reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  if cache is not None:
    k_cache, v_cache, slot = cache
    # The cache holds k/v in their own dtype (the activation dtype): attention sees what the full pass sees.
    k = k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, slot, 0, 0))
    v = v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, slot, 0, 0))
  h = h + proj(attention(q, k, v, bias, cfg.attention if cache is None else "einsum"), name="o")
  x = rms_norm(h, w["mlp_norm"], cfg.rms_norm_eps, adt)
  gated = jax.nn.silu(proj(x, name="gate")) * proj(x, name="up")
  h = h + proj(gated, name="down")
  return h if cache is None else (h, (k_cache, v_cache))


def lens_logits(cfg: LlamaConfig, final_norm, unembed, h):
  """The logit lens, unembed(final_norm(h)), as float32 logits [..., V]: the model's head and every lens row.

  final_norm [D]; unembed [V, D] (the lm_head, or the tied embedding) in any dtype: the dot runs in the compute dtype.
  """
  x = rms_norm(h, final_norm, cfg.rms_norm_eps, jnp.float32)
  # Under FSDP the [V, D] matrix is gathered over D like a layer's weights: unpinned, GSPMD gathered the rows
  # (the whole batch's logits) instead.
  return dense(x, unembed.astype(jnp.dtype(cfg.compute_dtype)), True, w_axes=("vocab", "act_embed"))


def residual_stream(model: LlamaModel, tokens, mask=None, positions=None):
  """The residual stream [n_layers+1, B, T, D], read from the model's `residual` intermediate."""
  _, intermediates = nnx.capture(model.trunk, nnx.Intermediate)(tokens, mask, positions)
  return intermediates["residual"].get_value()[0]
