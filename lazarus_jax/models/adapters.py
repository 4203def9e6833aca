"""PEFT-format adapters: export ours, and load a PEFT (or our exported) adapter onto our model.

Layout: `adapter_config.json` + `adapter_model.safetensors` with
`base_model.model.model.layers.{i}.{self_attn|mlp}.{x}_proj.lora_A.weight` [r, in] and `lora_B.weight` [out, r],
which is what `peft.PeftModel.from_pretrained` loads onto the HF model.
"""

from __future__ import annotations

import os

import numpy as np

from lazarus_jax import files
from lazarus_jax.errors import UserError
from lazarus_jax.files import read_json, replace_dir, write_json
from lazarus_jax.models import peft_options
from lazarus_jax.models.convert import HF_LAYER_MODULES
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import PROJS, LlamaModel

PREFIX = "base_model.model.model.layers"
FINGERPRINT_FILE = "lazarus_jax_model.json"


def _key(layer: int, target: str, which: str) -> str:
  return f"{PREFIX}.{layer}.{HF_LAYER_MODULES[target]}.lora_{which}.weight"


def export_peft(
  lora_params: dict,
  lora_cfg: LoRAConfig,
  layer_range: tuple[int, int],
  out_dir: str,
  base_model: str,
  model_fingerprint: dict,
  record: dict | None = None,
) -> None:
  """Writes `lora_params` ({target}_a [n, in, r], {target}_b [n, r, out]) as a PEFT adapter directory.

  `record` (ours, e.g. the held-out split's identity and the step) is saved beside the model fingerprint, so
  whoever evaluates the adapter can check it against what they evaluate on (`adapter_record`)."""
  from safetensors.numpy import save

  start, end = layer_range
  tensors = {}
  for t in lora_cfg.targets:
    a, b = np.asarray(lora_params[f"{t}_a"], np.float32), np.asarray(lora_params[f"{t}_b"], np.float32)
    for j, layer in enumerate(range(start, end)):
      tensors[_key(layer, t, "A")] = np.ascontiguousarray(a[j].T)
      tensors[_key(layer, t, "B")] = np.ascontiguousarray(b[j].T)
  config = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": base_model,
    "r": lora_cfg.rank,
    "lora_alpha": lora_cfg.alpha,
    "lora_dropout": 0.0,
    "bias": "none",
    "fan_in_fan_out": False,
    "use_rslora": False,
    "init_lora_weights": True,
    "inference_mode": True,
    "target_modules": sorted(HF_LAYER_MODULES[t].split(".")[-1] for t in lora_cfg.targets),
    "layers_to_transform": list(range(start, end)),
    "layers_pattern": "layers",
  }

  def build(tmp_dir):
    # safetensors' save_file creates its file 0600 whatever the umask: write its bytes ourselves.
    with open(os.path.join(tmp_dir, "adapter_model.safetensors"), "wb") as f:
      f.write(save(tensors))
    write_json(os.path.join(tmp_dir, "adapter_config.json"), config, indent=2)
    # Ours, beside peft's files (peft warns about unknown keys in its config): lets a loader check that the
    # adapter belongs to the model it is loaded onto, and which training step it is.
    write_json(os.path.join(tmp_dir, FINGERPRINT_FILE), {"model": model_fingerprint, **(record or {})}, indent=2)

  replace_dir(build, out_dir)  # built beside, then renamed: no reader sees a half-written adapter


def adapter_record(path: str) -> dict:
  """What `export_peft` recorded beside the adapter ({} for an adapter from elsewhere, e.g. peft's own)."""
  fingerprint_file = files.join(path, FINGERPRINT_FILE)
  if not files.exists(fingerprint_file):
    return {}
  record = read_json(fingerprint_file, "adapter record", "re-export the adapter (train writes it)")
  if not isinstance(record, dict):
    raise UserError(f"adapter record {fingerprint_file} is not a JSON object: re-export the adapter (train writes it)")
  return record


def model_fingerprint(cfg) -> dict:
  return {
    "num_layers": cfg.num_layers,
    "hidden_size": cfg.hidden_size,
    "num_heads": cfg.num_heads,
    "num_kv_heads": cfg.num_kv_heads,
    "intermediate_size": cfg.intermediate_size,
    "vocab_size": cfg.vocab_size,
  }


def read_adapter(path: str, model_cfg) -> tuple[LoRAConfig, dict]:
  """The PEFT adapter in `path` as our LoRA config and stacked weights ({target}_a [n, in, r], {target}_b [n, r, out],
  float32 numpy). Refuses one made for another model."""
  from safetensors.numpy import load

  cfg_file, weights_file = (files.join(path, n) for n in ("adapter_config.json", "adapter_model.safetensors"))
  if not (files.exists(cfg_file) and files.exists(weights_file)):
    raise UserError(f"{path} is not an adapter directory (needs adapter_config.json and adapter_model.safetensors)")
  fix = "re-export it (train writes it), or pass an intact adapter"
  pc = read_json(cfg_file, "adapter config", fix)
  try:
    rank, alpha = int(pc["r"]), float(pc["lora_alpha"])
    if "target_modules" not in pc:  # peft_options.check reads it
      raise KeyError("target_modules")
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(
      f"adapter config {cfg_file} lacks a valid r, lora_alpha or target_modules ({type(e).__name__}: {e}): {fix}"
    ) from None
  by_module = {HF_LAYER_MODULES[t].split(".")[-1]: t for t in PROJS}
  modules, declared_layers = peft_options.check(pc, cfg_file, tuple(by_module))  # what we cannot apply: refused
  saved = adapter_record(path).get("model")
  if saved and saved != model_fingerprint(model_cfg):
    raise UserError(f"adapter {path} was trained for a different base model ({saved}); load it with the model it was trained on")
  targets = tuple(by_module[m] for m in modules)
  try:
    tensors = load(files.read_bytes(weights_file))
  except Exception as e:  # safetensors reports a cut or garbled file as SafetensorError or OSError
    raise UserError(f"adapter weights {weights_file} are unreadable ({type(e).__name__}: {str(e)[:120]}): {fix}") from None
  try:
    layers = sorted({int(k.split(".")[4]) for k in tensors})
  except (IndexError, ValueError):
    raise UserError(
      f"adapter weights {weights_file} hold tensors that are not per-layer LoRA weights (e.g. {sorted(tensors)[0]!r}): {fix}"
    ) from None
  if declared_layers is not None and declared_layers != layers:
    raise UserError(
      f"adapter config {cfg_file} sets layers_to_transform={declared_layers} but its weights adapt layers {layers}: {fix}"
    )
  if not layers or layers != list(range(layers[0], layers[-1] + 1)):
    raise UserError(f"adapter {path} adapts layers {layers}: only one contiguous range is supported")
  if rank <= 0 or not np.isfinite(alpha):
    raise UserError(f"adapter config {cfg_file} has r={rank}, lora_alpha={alpha}: {fix}")
  lcfg = LoRAConfig(rank=rank, alpha=alpha, targets=targets, layer_start=layers[0], layer_end=layers[-1] + 1)
  if layers[-1] >= model_cfg.num_layers:
    raise UserError(f"adapter {path} adapts layer {layers[-1]} but the model has {model_cfg.num_layers} layers")
  weights = {}
  for t in targets:
    try:
      weights[f"{t}_a"] = np.stack([tensors[_key(i, t, "A")].T for i in layers]).astype(np.float32)
      weights[f"{t}_b"] = np.stack([tensors[_key(i, t, "B")].T for i in layers]).astype(np.float32)
    except KeyError as e:
      raise UserError(f"adapter {path} lacks tensor {e}") from None
    if not all(np.all(np.isfinite(weights[f"{t}_{w}"])) for w in "ab"):
      raise UserError(f"adapter {path} has non-finite {t} weights: {fix}")
  return lcfg, weights


def load_adapter(model: LlamaModel, path: str) -> LoRAConfig:
  """Attaches the PEFT adapter in `path` to `model` (in place). Refuses one made for another model."""
  import jax.numpy as jnp

  lcfg, weights = read_adapter(path, model.cfg)
  lora = add_lora(model, lcfg, seed=0)
  for name, value in weights.items():
    var = getattr(lora, name)
    if value.shape != var[...].shape:
      raise UserError(
        f"adapter {path} has {name} shapes {value.shape}, the model needs {var[...].shape}: it belongs to another base model"
      )
    var[...] = jnp.asarray(value)
  return lcfg


def adapter_origin(path: str | None, run_dir: str | None) -> dict:
  """Which training step the adapter in `path` holds (recorded by train), checked against the run it sits in.

  With `run_dir` (evaluate's default, the adapter train wrote into the workdir) the run's newest complete
  checkpoint must be that same step: otherwise training went on after the export (a resume that was interrupted,
  or is still running) and the adapter is not what the run's checkpoints and metrics say was trained."""
  if path is None:
    return {"step": None, "latest_checkpoint": None, "check": "base model: no adapter"}
  step = adapter_record(path).get("final_step")
  latest = None
  if run_dir is not None:
    ckpt_dir = files.join(run_dir, "checkpoints")
    steps = sorted(int(n) for n in files.listdir(ckpt_dir) if n.isdigit()) if files.isdir(ckpt_dir) else []
    latest = steps[-1] if steps else None
  if step is None:
    check = "unverified: the adapter records no training step (not written by lazarus_jax.train)"
  elif latest is None:
    check = f"step {step} (no checkpoints beside it to compare)"
  elif latest != step:
    raise UserError(
      f"the adapter in {path} is from step {step} but the run's newest checkpoint is step {latest} "
      f"({run_dir}/checkpoints): training went on after the export; finish it with "
      "python -m lazarus_jax.train ... --config.resume=True, then evaluate"
    )
  else:
    check = f"verified: step {step}, the run's newest checkpoint"
  return {"step": step, "latest_checkpoint": latest, "check": check}
