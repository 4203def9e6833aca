"""What train and evaluate share: config checks, the model, class targets and the data, built one way."""

from __future__ import annotations

import dataclasses
import os
import sys

import ml_collections
import numpy as np

from lazarus_jax.config import GRPOConfig, check_ranges
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data.targets import TARGET_SETS, ResolvedTargets, answer_label, answer_targets, resolve_targets
from lazarus_jax.errors import UserError
from lazarus_jax.models import dtypes
from lazarus_jax.models import kernels as kernel_choice
from lazarus_jax.models.loading import Pretrained, load_pretrained
from lazarus_jax.models.lora import LoRAConfig
from lazarus_jax.models.model import PROJS

DTYPES = ("float32", "bfloat16", "float16", dtypes.AUTO)
OBJECTIVES = ("dual_reward", "grpo")


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Value checks that need no model (shape checks come once the model is known)."""
  w = c.classifier.weight
  if not 0.0 <= w <= 1.0:
    raise UserError(f"classifier.weight must be in [0, 1] (0 = SFT only, 1 = classifier only), got {w}")
  if not 0.0 < c.classifier.layer_fraction < 1.0:
    raise UserError(f"classifier.layer_fraction must be in (0, 1), got {c.classifier.layer_fraction}")
  for key in ("param_dtype", "compute_dtype", "activation_dtype"):
    if c.model[key] not in DTYPES:
      raise UserError(f"model.{key} must be one of {DTYPES}, got {c.model[key]!r}")
  for key, allowed in (("attention", kernel_choice.ATTENTION), ("layer_loop", kernel_choice.LAYER_LOOP)):
    if c.model.get(key, "auto") not in allowed:
      raise UserError(f"model.{key} must be one of {allowed}, got {c.model[key]!r}")
  if c.lora.rank <= 0:
    raise UserError(f"lora.rank must be a positive integer, got {c.lora.rank}")
  for key in ("steps", "batch_size", "grad_accum_steps", "log_every", "checkpoint_every"):
    if c.train[key] <= 0:
      raise UserError(f"train.{key} must be positive, got {c.train[key]}")
  if c.train.batch_size % c.train.grad_accum_steps:
    raise UserError(f"train.batch_size {c.train.batch_size} is not divisible by train.grad_accum_steps {c.train.grad_accum_steps}")
  if c.train.lr <= 0:
    raise UserError(f"train.lr must be positive, got {c.train.lr}")
  data_lib.check_formats(data_formats(c), "data.format", data_lib.FORMATS)
  data_lib.check_formats(eval_formats(c), "data.eval_format", data_lib.EVAL_FORMATS)
  if c.classifier.target_set not in TARGET_SETS:
    raise UserError(f"classifier.target_set must be one of {', '.join(TARGET_SETS)}, got {c.classifier.target_set!r}")
  if c.train.objective not in OBJECTIVES:
    raise UserError(f"train.objective must be one of {', '.join(OBJECTIVES)}, got {c.train.objective!r}")
  if c.train.objective == "grpo":
    GRPOConfig.from_config(c.grpo)  # its value checks
    if c.train.grad_accum_steps != 1:
      raise UserError("train.grad_accum_steps applies to the dual-reward step only: set it to 1 with train.objective=grpo")
  if c.train.init_adapter and not os.path.isdir(c.train.init_adapter):
    raise UserError(f"train.init_adapter {c.train.init_adapter} is not a directory: pass another run's <workdir>/adapter")
  if c.data.jsonl:  # a bad data file is named (file:line) before the model loads
    data_lib.load_jsonl(c.data.jsonl)
  # The LoRA checks that need no model (the layer range against the model comes once it is loaded).
  lora = LoRAConfig.from_config(c.lora)
  unknown = [t for t in lora.targets if t not in PROJS]
  if not lora.targets or unknown:
    raise UserError(
      f"unknown LoRA target(s) {unknown or lora.targets}: choose among {','.join(PROJS)} (e.g. --config.lora.targets=v,o)"
    )
  if lora.alpha <= 0:
    raise UserError(f"lora.alpha must be positive, got {lora.alpha}")
  if lora.layer_start < 0 or (lora.layer_end is not None and lora.layer_end <= lora.layer_start):
    raise UserError(
      f"LoRA layer range [{lora.layer_start}, {lora.layer_end}) adapts nothing: use "
      "0 <= lora.layer_start < lora.layer_end (or lora.layer_end=-1 for all layers)"
    )
  check_ranges(c)  # every other numeric key (NaN included), before anything is read or written
  # What evaluate checks is checked here too: train runs it after training, and a typo must not cost a run.
  if c.eval.probe_method not in ("adam", "lbfgs"):
    raise UserError(f"eval.probe_method must be adam or lbfgs, got {c.eval.probe_method!r}")
  if c.model.remat not in ("none", "full", "dots"):
    raise UserError(f"model.remat must be none, full or dots, got {c.model.remat!r}")


def data_formats(c) -> list[str]:
  return [f.strip() for f in c.data.format.split(",") if f.strip()]


def eval_formats(c) -> list[str]:
  """The held-out set's formats: `data.eval_format` ("all" = every format). Default (""): the trained formats, or
  every format when a cue-free one (fewshot, word) is trained, so such a run reports its row of the transfer
  matrix and the input-only baselines of every format without being asked."""
  spec = c.data.eval_format.strip()
  trained = data_formats(c)
  if spec == "all" or (not spec and set(trained) & {"fewshot", "word"}):
    return list(data_lib.EVAL_FORMATS)
  return [f.strip() for f in spec.split(",") if f.strip()] if spec else trained


def classifier_layer(c, num_layers: int) -> int:
  """Block index L (DESIGN.md §2): config value, or int(n_layers * fraction)."""
  layer = c.classifier.layer if c.classifier.layer >= 0 else int(num_layers * c.classifier.layer_fraction)
  if not 0 <= layer < num_layers:
    raise UserError(f"classifier.layer {layer} is outside 0..{num_layers - 1} for this {num_layers}-layer model")
  return layer


def resolve_dtypes(c) -> dtypes.DtypeChoice:
  """The model dtypes with `auto` resolved for this machine (lazarus_jax/models/dtypes.py)."""
  return dtypes.resolve(c.model.param_dtype, c.model.compute_dtype, c.model.activation_dtype)


def load_model(c) -> Pretrained:
  """The pretrained model in the config's dtypes, `auto` resolved here, once (said in one line, and recorded as
  `Pretrained.dtypes` for the run's provenance), and the kernels (`kernels.py`) likewise."""
  source = c.model.path or c.model.source
  choice = resolve_dtypes(c)
  import jax

  kernels = kernel_choice.resolve(c.model.get("attention", "auto"), c.model.get("layer_loop", "auto"), choice.compute_dtype)
  if jax.process_index() == 0:
    print(choice.describe(), file=sys.stderr)
    print(kernels.describe(), file=sys.stderr)
  pretrained = load_pretrained(
    source,
    param_dtype=choice.param_dtype,
    compute_dtype=choice.compute_dtype,
    remat=c.model.remat,
    activation_dtype=choice.activation_dtype,
    attention=kernels.attention,
    scan_layers=kernels.scan_layers,
  )
  pretrained.dtypes = choice.as_dict()
  pretrained.dtypes["kernels"] = kernels.as_dict()
  return pretrained


@dataclasses.dataclass
class Datasets:
  train: list  # Examples
  eval: list
  seed_prompts: list
  train_encoded: list
  train_labels: list
  seq_len: int
  split: dict  # data.heldout_identity: recorded with the adapter, checked by evaluation


def build_data(c, tokenizer) -> Datasets:
  formats = data_formats(c)
  splits = data_lib.make_splits(
    formats=formats, n_eval_per_op=c.data.n_eval_per_op, seed=c.seed, eval_formats=eval_formats(c), fewshot_k=c.data.fewshot_k
  )
  if c.data.jsonl:
    train = data_lib.load_jsonl(c.data.jsonl)
    # The held-out split in every format, not only the ones trained on: evaluation may read any of them.
    every_format = data_lib.make_splits(
      formats=data_lib.FORMATS,
      n_eval_per_op=c.data.n_eval_per_op,
      seed=c.seed,
      eval_formats=data_lib.EVAL_FORMATS,
      fewshot_k=c.data.fewshot_k,
    )
    data_lib.check_jsonl_against_heldout(train, every_format.eval, c.data.jsonl)
    train_source = f"jsonl:{data_lib.file_sha256(c.data.jsonl)}"
  else:
    train, train_source = splits.train, "generator"
  encoded = data_lib.encode_examples(tokenizer, train, append_eos=c.data.append_eos)
  seq_len = c.data.seq_len or data_lib.choose_seq_len(encoded)
  split = data_lib.heldout_identity(splits.eval, c.seed, c.data.n_eval_per_op, train_source)
  return Datasets(
    train=train,
    eval=splits.eval,
    seed_prompts=splits.seed_prompts,
    train_encoded=encoded,
    train_labels=[e.operation for e in train],
    seq_len=seq_len,
    split=split,
  )


def all_prompts(datasets: Datasets) -> list[str]:
  """Every distinct prompt the run trains or evaluates on: the target-in-prompt check reads them all."""
  return sorted({e.prompt for e in datasets.train} | {e.prompt for e in datasets.eval})


def class_targets(c, tokenizer, prompts, examples=None) -> ResolvedTargets:
  """The class tokens of `classifier.target_set` (targets.py); `examples` (train + eval) for the answer set."""
  if c.classifier.target_set == "answer":
    if examples is None:
      raise ValueError("the answer target set needs the examples")
    resolved = answer_targets(tokenizer, examples)
  else:
    mapping = TARGET_SETS[c.classifier.target_set] or dict(c.classifier.targets)
    resolved = resolve_targets(tokenizer, mapping, prompts=prompts, allow_target_in_prompt=c.classifier.allow_target_in_prompt)
  print(resolved.describe(), file=sys.stderr)
  return resolved


def balance_ids(operations) -> np.ndarray:
  """The class ids `data.batch_indices` balances training batches by: the operation, whatever the target set (with
  answer targets the lens classes are digits), numbered alphabetically. That is the order the operation labels had
  before target sets existed (`classifier.targets` is a ConfigDict, whose keys iterate sorted), so a given seed
  draws the very batches it drew then."""
  order = sorted(data_lib.OPERATIONS)
  return np.asarray([data_lib.label_index(op, order) for op in operations])


def example_labels(c, tokenizer, examples) -> list[str]:
  """Each example's class label under `classifier.target_set`: its operation, or (answer) its first answer token."""
  if c.classifier.target_set == "answer":
    return [answer_label(tokenizer, e) for e in examples]
  return [e.operation for e in examples]
