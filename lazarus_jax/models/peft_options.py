"""Which options of a PEFT `adapter_config.json` our LoRA loader applies, and the refusal of every other one.

Our LoRA is `x @ A @ B * alpha / r` on whole projections of one contiguous range of layers. An adapter whose
config asks for anything else (rank-stabilised scaling, DoRA's magnitudes, per-module ranks, trained biases,
modified base weights...) would load without error and compute something else: each is refused in one line that
names the option. The list follows peft's `LoraConfig` (0.17-0.21); an option this list does not know is refused
when set to anything but an empty value, so a newer peft's feature cannot slip through either.
"""

from __future__ import annotations

from lazarus_jax.errors import UserError

# Bookkeeping or training-only settings: they do not change what the adapter computes at inference.
IGNORED = {
  "peft_type",  # checked apart: must be LORA
  "task_type",
  "auto_mapping",
  "peft_version",
  "base_model_name_or_path",
  "revision",
  "inference_mode",
  "lora_dropout",  # off at inference
  "fan_in_fan_out",  # peft resets it to False for nn.Linear (every Llama projection): the weights are the same
  "megatron_core",
  "qalora_group_size",  # used only with use_qalora
  "runtime_config",
  "ensure_weight_tying",  # only ties modules_to_save / trainable tokens, both refused
  "eva_config",  # an initialisation (init_lora_weights='eva'): the saved weights are what counts
  "corda_config",  # its init_lora_weights='corda' is refused
  "lora_ga_config",  # likewise 'lora_ga'
  "loftq_config",  # likewise 'loftq'
}
# What the loader reads (r, lora_alpha, target_modules) or checks below.
READ = {"r", "lora_alpha", "target_modules", "layers_to_transform", "layers_pattern", "init_lora_weights", "bias"}
# Options whose only value we can apply is their default ("empty": None, False, {}, [] or "").
MUST_BE_EMPTY = {
  "use_rslora": "rank-stabilised scaling alpha/sqrt(r); ours is alpha/r",
  "use_dora": "DoRA's magnitude vectors are not applied",
  "rank_pattern": "per-module ranks; ours is one rank for every module",
  "alpha_pattern": "per-module alphas; ours is one alpha for every module",
  "modules_to_save": "fully trained module copies are not loaded",
  "exclude_modules": "excluded modules are not supported",
  "trainable_token_indices": "trained embedding rows are not loaded",
  "layer_replication": "replicated layers are not supported",
  "lora_bias": "a bias on lora_B is not applied",
  "use_qalora": "QALoRA's pooled inputs are not supported",
  "target_parameters": "LoRA on raw parameters is not supported",
  "megatron_config": "Megatron parallel layers are not supported",
  "alora_invocation_tokens": "activated LoRA (adapter on only after the invocation tokens) is not supported",
  "use_bdlora": "block-diagonal LoRA is not supported",
  "velora_config": "VeLoRA is not supported",
  "monteclora_config": "MonteCLoRA's sampling is not supported",
  "arrow_config": "Arrow routing is not supported",
  "kasa_config": "KaSA's singular values and truncated base weights are not applied",
}
# init_lora_weights values that leave the base model's weights as they are (the others rewrite them: an adapter
# saved without peft's conversion to plain LoRA needs that rewritten base).
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


def _empty(value) -> bool:
  return value is None or value is False or value == {} or value == [] or value == ""


def check(pc: dict, cfg_file: str, module_names: tuple[str, ...]) -> tuple[list[str], list[int] | None]:
  """(target module names, the layers `layers_to_transform` names or None) of the PEFT config `pc`; refuses, in
  one line naming the option, anything the loader cannot apply. `module_names`: the projections we adapt."""
  why = "our loader cannot apply it; export the adapter without it (or merge it into the base model)"

  def refuse(option: str, value, what: str):
    raise UserError(f"adapter config {cfg_file} sets {option}={value!r} ({what}): {why}")

  if pc.get("peft_type", "LORA") != "LORA":
    refuse("peft_type", pc.get("peft_type"), "only LoRA adapters load")
  for option, what in MUST_BE_EMPTY.items():
    if not _empty(pc.get(option)):
      refuse(option, pc[option], what)
  for option in sorted(set(pc) - IGNORED - READ - set(MUST_BE_EMPTY)):
    if not _empty(pc[option]):
      refuse(option, pc[option], "an option this loader does not know")
  if pc.get("bias", "none") != "none":
    refuse("bias", pc["bias"], "trained biases are not loaded")
  init = pc.get("init_lora_weights", True)
  if init not in PLAIN_INITS:
    refuse("init_lora_weights", init, "this initialisation rewrites the base weights, which the adapter then needs")

  modules = pc.get("target_modules")
  if modules == "all-linear":  # peft: every linear layer but the output head, i.e. all seven projections
    modules = list(module_names)
  elif isinstance(modules, str):
    refuse("target_modules", modules, "a regular expression; list the module names")
  elif not isinstance(modules, list) or not modules:
    raise UserError(f"adapter config {cfg_file} lacks a valid target_modules (a list of module names)")
  unknown = sorted(set(modules) - set(module_names))
  if unknown:
    refuse("target_modules", unknown, f"only {', '.join(module_names)} are adapted")

  pattern = pc.get("layers_pattern")
  if not _empty(pattern) and pattern not in ("layers", ["layers"]):
    refuse("layers_pattern", pattern, "a Llama's decoder blocks are model.layers")
  layers = pc.get("layers_to_transform")
  if isinstance(layers, int) and not isinstance(layers, bool):
    layers = [layers]
  elif layers is not None and not (isinstance(layers, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
    refuse("layers_to_transform", layers, "a layer index or a list of them")
  return modules, (sorted(layers) if layers is not None else None)
