"""Conversion as data: HF tensor names -> our stacked layout, plus per-tensor transforms.

HF stores a projection as `[out, in]`; we store `[in, out]` stacked over layers `[layers, in, out]`.
GGUF checkpoints are first read into HF names and layouts (`gguf_loader.py`), then go through the same map.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from lazarus_jax.errors import UserError

# Our per-layer name -> HF module path inside `model.layers.{i}`; also the LoRA target -> HF module map.
HF_LAYER_MODULES = {
  "q": "self_attn.q_proj",
  "k": "self_attn.k_proj",
  "v": "self_attn.v_proj",
  "o": "self_attn.o_proj",
  "gate": "mlp.gate_proj",
  "up": "mlp.up_proj",
  "down": "mlp.down_proj",
  "attn_norm": "input_layernorm",
  "mlp_norm": "post_attention_layernorm",
}
NORMS = ("attn_norm", "mlp_norm")


def hf_layer_key(layer: int, name: str) -> str:
  return f"model.layers.{layer}.{HF_LAYER_MODULES[name]}.weight"


def hf_to_weights(get: Callable[[str], np.ndarray], keys: set[str], num_layers: int, tie_word_embeddings: bool, dtype) -> dict:
  """Our weights tree from HF-named tensors. `get(name)` returns one tensor (loaded lazily)."""

  def fetch(name):
    if name not in keys:
      raise UserError(f"checkpoint has no tensor {name!r}: is it a complete Llama checkpoint?")
    return np.asarray(get(name)).astype(dtype)

  layers = {}
  for name in HF_LAYER_MODULES:
    per_layer = []
    for i in range(num_layers):
      w = fetch(hf_layer_key(i, name))
      per_layer.append(w if name in NORMS else w.T)
    layers[name] = np.stack(per_layer)
  weights = {
    "embed": fetch("model.embed_tokens.weight"),
    "final_norm": fetch("model.norm.weight"),
    "layers": layers,
  }
  if not tie_word_embeddings:
    weights["lm_head"] = fetch("lm_head.weight")
  return weights


def safetensors_files(path: str) -> list[str]:
  """The safetensors files of an HF checkpoint dir (single file or sharded with an index)."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index, encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
    return sorted({os.path.join(path, v) for v in weight_map.values()})
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(single):
    return [single]
  raise UserError(
    f"no model.safetensors or model.safetensors.index.json in {path}: "
    "convert the checkpoint to safetensors (save_pretrained(..., safe_serialization=True))"
  )


def read_safetensors(path: str) -> tuple[Callable[[str], np.ndarray], set[str], Callable[[], None]]:
  """Lazy reader over an HF checkpoint dir: (get, keys, close)."""
  from safetensors import safe_open

  handles, owner = [], {}
  for file in safetensors_files(path):
    if not os.path.exists(file):
      raise UserError(f"missing checkpoint shard {file}: re-download the checkpoint")
    try:
      h = safe_open(file, framework="numpy")
    except Exception as e:  # truncated or corrupt header
      raise UserError(f"cannot read {file} ({e}): the file is truncated or corrupt; re-download it") from None
    handles.append(h)
    for k in h.keys():
      owner[k] = h

  def get(name):
    try:
      return owner[name].get_tensor(name)
    except Exception as e:
      raise UserError(f"cannot read tensor {name!r} ({e}): the checkpoint is truncated or corrupt") from None

  def close():
    handles.clear()

  return get, set(owner), close
