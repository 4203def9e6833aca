"""PEFT-format adapters: export ours, and load a PEFT (or our exported) adapter onto our model.

Layout: `adapter_config.json` + `adapter_model.safetensors` with
`base_model.model.model.layers.{i}.{self_attn|mlp}.{x}_proj.lora_A.weight` [r, in] and `lora_B.weight` [out, r],
which is what `peft.PeftModel.from_pretrained` loads onto the HF model.
"""

from __future__ import annotations

import json
import os

import numpy as np

from lazarus_jax.convert import HF_LAYER_MODULES
from lazarus_jax.errors import UserError
from lazarus_jax.lora import LoRAConfig, add_lora
from lazarus_jax.model import LlamaModel

PREFIX = "base_model.model.model.layers"
FINGERPRINT_FILE = "lazarus_jax_model.json"


def _key(layer: int, target: str, which: str) -> str:
  return f"{PREFIX}.{layer}.{HF_LAYER_MODULES[target]}.lora_{which}.weight"


def export_peft(lora_params: dict, lora_cfg: LoRAConfig, layer_range: tuple[int, int], out_dir: str,
                base_model: str, model_fingerprint: dict, record: dict | None = None) -> None:
  """Writes `lora_params` ({target}_a [n, in, r], {target}_b [n, r, out]) as a PEFT adapter directory.

  `record` (ours, e.g. the held-out split's identity and the step) is saved beside the model fingerprint, so
  whoever evaluates the adapter can check it against what they evaluate on (`adapter_record`)."""
  from safetensors.numpy import save_file

  start, end = layer_range
  tensors = {}
  for t in lora_cfg.targets:
    a, b = np.asarray(lora_params[f"{t}_a"], np.float32), np.asarray(lora_params[f"{t}_b"], np.float32)
    for j, layer in enumerate(range(start, end)):
      tensors[_key(layer, t, "A")] = np.ascontiguousarray(a[j].T)
      tensors[_key(layer, t, "B")] = np.ascontiguousarray(b[j].T)
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
      "r": lora_cfg.rank, "lora_alpha": lora_cfg.alpha, "lora_dropout": 0.0, "bias": "none",
      "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True, "inference_mode": True,
      "target_modules": sorted(HF_LAYER_MODULES[t].split(".")[-1] for t in lora_cfg.targets),
      "layers_to_transform": list(range(start, end)), "layers_pattern": "layers",
  }
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, ".adapter_model.safetensors.tmp")
  save_file(tensors, tmp)
  os.replace(tmp, os.path.join(out_dir, "adapter_model.safetensors"))
  with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  # Ours, beside peft's files (peft warns about unknown keys in its config): lets a loader check that the
  # adapter belongs to the model it is loaded onto.
  with open(os.path.join(out_dir, FINGERPRINT_FILE), "w") as f:
    json.dump({"model": model_fingerprint, **(record or {})}, f, indent=2)


def adapter_record(path: str) -> dict:
  """What `export_peft` recorded beside the adapter ({} for an adapter from elsewhere, e.g. peft's own)."""
  fingerprint_file = os.path.join(path, FINGERPRINT_FILE)
  if not os.path.exists(fingerprint_file):
    return {}
  try:
    with open(fingerprint_file) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{fingerprint_file} is unreadable ({e}): re-export the adapter (train writes it)") from None


def model_fingerprint(cfg) -> dict:
  return {"num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "num_heads": cfg.num_heads,
          "num_kv_heads": cfg.num_kv_heads, "intermediate_size": cfg.intermediate_size,
          "vocab_size": cfg.vocab_size}


def load_adapter(model: LlamaModel, path: str) -> LoRAConfig:
  """Attaches the PEFT adapter in `path` to `model` (in place). Refuses one made for another model."""
  import jax.numpy as jnp
  from safetensors.numpy import load_file

  cfg_file, weights_file = (os.path.join(path, n) for n in ("adapter_config.json", "adapter_model.safetensors"))
  if not (os.path.exists(cfg_file) and os.path.exists(weights_file)):
    raise UserError(f"{path} is not an adapter directory (needs adapter_config.json and adapter_model.safetensors)")
  with open(cfg_file) as f:
    pc = json.load(f)
  saved = None
  fingerprint_file = os.path.join(path, FINGERPRINT_FILE)
  if os.path.exists(fingerprint_file):
    with open(fingerprint_file) as f:
      saved = json.load(f).get("model")
  if saved and saved != model_fingerprint(model.cfg):
    raise UserError(f"adapter {path} was trained for a different base model ({saved}); "
                    "load it with the model it was trained on")
  by_module = {v.split(".")[-1]: k for k, v in HF_LAYER_MODULES.items()}
  targets = tuple(by_module[m] for m in pc["target_modules"] if m in by_module)
  tensors = load_file(weights_file)
  layers = sorted({int(k.split(".")[4]) for k in tensors})
  if not layers or layers != list(range(layers[0], layers[-1] + 1)):
    raise UserError(f"adapter {path} adapts layers {layers}: only one contiguous range is supported")
  lcfg = LoRAConfig(rank=int(pc["r"]), alpha=float(pc["lora_alpha"]), targets=targets,
                    layer_start=layers[0], layer_end=layers[-1] + 1)
  if layers[-1] >= model.cfg.num_layers:
    raise UserError(f"adapter {path} adapts layer {layers[-1]} but the model has {model.cfg.num_layers} layers")
  lora = add_lora(model, lcfg, seed=0)
  for t in targets:
    a = getattr(lora, f"{t}_a")
    b = getattr(lora, f"{t}_b")
    try:
      a_val = np.stack([tensors[_key(i, t, "A")].T for i in layers])
      b_val = np.stack([tensors[_key(i, t, "B")].T for i in layers])
    except KeyError as e:
      raise UserError(f"adapter {path} lacks tensor {e}") from None
    if a_val.shape != a[...].shape or b_val.shape != b[...].shape:
      raise UserError(f"adapter {path} has {t} shapes {a_val.shape}/{b_val.shape}, the model needs "
                      f"{a[...].shape}/{b[...].shape}: it belongs to another base model")
    a[...] = jnp.asarray(a_val)
    b[...] = jnp.asarray(b_val)
  return lcfg
