"""What train and evaluate share: the model, class targets and the data, built one way (config checks: settings.py)."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data.targets import TARGET_SETS, ResolvedTargets, answer_label, answer_targets, resolve_targets
from lazarus_jax.errors import UserError
from lazarus_jax.models import dtypes
from lazarus_jax.models import kernels as kernel_choice
from lazarus_jax.models.loading import Pretrained, load_pretrained
from lazarus_jax.settings import ClassifierSettings, ModelSettings, Settings


def classifier_layer(classifier: ClassifierSettings, num_layers: int) -> int:
  """Block index L (DESIGN.md §2): config value, or int(n_layers * fraction)."""
  layer = classifier.layer if classifier.layer >= 0 else int(num_layers * classifier.layer_fraction)
  if not 0 <= layer < num_layers:
    raise UserError(f"classifier.layer {layer} is outside 0..{num_layers - 1} for this {num_layers}-layer model")
  return layer


def resolve_dtypes(m: ModelSettings) -> dtypes.DtypeChoice:
  """The model dtypes with `auto` resolved for this machine (lazarus_jax/models/dtypes.py)."""
  return dtypes.resolve(m.param_dtype, m.compute_dtype, m.activation_dtype)


def load_model(m: ModelSettings) -> Pretrained:
  """The pretrained model in the config's dtypes, `auto` resolved here, once (said in one line, and recorded as
  `Pretrained.dtypes` for the run's provenance), and the kernels (`kernels.py`) likewise."""
  choice = resolve_dtypes(m)
  import jax

  kernels = kernel_choice.resolve(m.attention, m.layer_loop, choice.compute_dtype)
  if jax.process_index() == 0:
    print(choice.describe(), file=sys.stderr)
    print(kernels.describe(), file=sys.stderr)
  pretrained = load_pretrained(
    m.location,
    param_dtype=choice.param_dtype,
    compute_dtype=choice.compute_dtype,
    remat=m.remat,
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


def build_data(s: Settings, tokenizer) -> Datasets:
  d = s.data
  splits = data_lib.make_splits(
    formats=list(d.formats), n_eval_per_op=d.n_eval_per_op, seed=s.seed, eval_formats=list(d.eval_formats), fewshot_k=d.fewshot_k
  )
  if d.jsonl:
    train = data_lib.load_jsonl(d.jsonl)
    # The held-out split in every format, not only the ones trained on: evaluation may read any of them.
    every_format = data_lib.make_splits(
      formats=data_lib.FORMATS,
      n_eval_per_op=d.n_eval_per_op,
      seed=s.seed,
      eval_formats=data_lib.EVAL_FORMATS,
      fewshot_k=d.fewshot_k,
    )
    data_lib.check_jsonl_against_heldout(train, every_format.eval, d.jsonl)
    train_source = f"jsonl:{data_lib.file_sha256(d.jsonl)}"
  else:
    train, train_source = splits.train, "generator"
  encoded = data_lib.encode_examples(tokenizer, train, append_eos=d.append_eos)
  seq_len = d.seq_len or data_lib.choose_seq_len(encoded)
  split = data_lib.heldout_identity(splits.eval, s.seed, d.n_eval_per_op, train_source)
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


def class_targets(classifier: ClassifierSettings, tokenizer, prompts, examples=None) -> ResolvedTargets:
  """The class tokens of `classifier.target_set` (targets.py); `examples` (train + eval) for the answer set."""
  if classifier.target_set == "answer":
    if examples is None:
      raise ValueError("the answer target set needs the examples")
    resolved = answer_targets(tokenizer, examples)
  else:
    mapping = TARGET_SETS[classifier.target_set] or dict(classifier.targets)
    resolved = resolve_targets(tokenizer, mapping, prompts=prompts, allow_target_in_prompt=classifier.allow_target_in_prompt)
  print(resolved.describe(), file=sys.stderr)
  return resolved


def balance_ids(operations) -> np.ndarray:
  """The class ids `data.batch_indices` balances training batches by: the operation, whatever the target set (with
  answer targets the lens classes are digits), numbered alphabetically. That is the order the operation labels had
  before target sets existed (`classifier.targets` is a ConfigDict, whose keys iterate sorted), so a given seed
  draws the very batches it drew then."""
  order = sorted(data_lib.OPERATIONS)
  return np.asarray([data_lib.label_index(op, order) for op in operations])


def example_labels(classifier: ClassifierSettings, tokenizer, examples) -> list[str]:
  """Each example's class label under `classifier.target_set`: its operation, or (answer) its first answer token."""
  if classifier.target_set == "answer":
    return [answer_label(tokenizer, e) for e in examples]
  return [e.operation for e in examples]
