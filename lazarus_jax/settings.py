"""The config parsed and checked once: `parse(c)` runs every check that needs no model and returns typed views.

train, evaluate, sweep and the pre-flight call `parse` before anything is read or written, so a typo in any key
(evaluate's and the mechanism's included: train runs the evaluation after training) fails in the first second,
not after a run. Checks that need the model (the classifier layer, the LoRA layer range, the mesh against the
devices) run once the model is known, in experiment.py / models/sharding.py.

What the code reads is the typed result (`Settings`: one frozen dataclass per section, `s.train.batch_size`,
`s.eval.mechanism.rows`, ...); functions take the section they need (`experiment.load_model(s.model)`). The
ConfigDict stays the run's record (`Settings.record`): written to config.json and provenance, compared on resume,
hashed by the sweep, which also makes its arms' configs from it.

Comma-separated keys are split here only (`comma_list`).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from lazarus_jax.config import GRPOConfig, check_ranges
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data.targets import TARGET_SETS
from lazarus_jax.errors import UserError
from lazarus_jax.models import dtypes
from lazarus_jax.models import kernels as kernel_choice
from lazarus_jax.models.lora import LoRAConfig
from lazarus_jax.models.model import PROJS

DTYPES = ("float32", "bfloat16", "float16", dtypes.AUTO)
OBJECTIVES = ("dual_reward", "grpo")
# Sweep arms warm-started from the SFT arm's adapter for sweep.grpo_steps more steps: grpo and grpo+lens
# (train.objective=grpo) and their equal-budget controls (the same steps, prompts and lr, supervised): sft+more
# (w = 0) for grpo, sft+lens (the dual-reward loss at w = grpo_lens_weight) for grpo+lens.
GRPO_ARMS = ("grpo", "grpo+lens", "sft+more", "sft+lens")
RL_ARMS = ("grpo", "grpo+lens")


# ---- the typed sub-configs ---------------------------------------------------------------------------
# One frozen dataclass per config section, its fields the section's keys (tests/test_settings.py checks that every
# key of config.default_config() has its field), except where a value is parsed: data.format -> data.formats,
# data.eval_format -> data.eval_formats, eval.mechanism.steer_alphas -> a tuple of floats, lora.*: LoRAConfig.


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  source: str
  path: str
  param_dtype: str
  compute_dtype: str
  remat: str
  activation_dtype: str
  attention: str
  layer_loop: str

  @property
  def location(self) -> str:
    """What to load: model.path if set, else model.source."""
    return self.path or self.source


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
  layer: int
  layer_fraction: float
  weight: float
  restrict_to_classes: bool
  allow_target_in_prompt: bool
  targets: dict  # operation -> class word (the "operation" target set)
  target_set: str


@dataclasses.dataclass(frozen=True)
class DataSettings:
  formats: tuple[str, ...]  # data.format, split
  eval_formats: tuple[str, ...]  # data.eval_format resolved (see eval_formats)
  fewshot_k: int
  jsonl: str
  n_eval_per_op: int
  append_eos: bool
  max_answer_tokens: int
  seq_len: int


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  objective: str
  init_adapter: str
  steps: int
  batch_size: int
  lr: float
  warmup_steps: int
  end_lr_fraction: float
  weight_decay: float
  b1: float
  b2: float
  grad_clip: float
  grad_accum_steps: int
  log_every: int
  checkpoint_every: int
  max_to_keep: int
  max_consecutive_nonfinite: int
  table_steps: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class MeshSettings:
  shape: tuple[int, ...]
  rules: tuple  # (logical axis, mesh axes) pairs, as tuples


@dataclasses.dataclass(frozen=True)
class MechanismSettings:
  enabled: bool
  max_examples_per_op: int
  rows: str  # auto | all | a comma list: resolved against the model by mechanism_rows
  n_random: int
  steer_alphas: tuple[float, ...]
  tuned_lens: bool
  tuned_lens_train: int
  tuned_lens_steps: int
  tuned_lens_lr: float
  tuned_lens_top_k: int
  position_prompt: str


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  enabled: bool
  adapter: str
  max_examples_per_op: int
  batch_size: int
  generate: bool
  max_new_tokens: int
  compare_base: bool
  probes: bool
  probe_test_fraction: float
  probe_l2: float
  probe_steps: int
  probe_method: str
  probe_lr: float
  mechanism: MechanismSettings


@dataclasses.dataclass(frozen=True)
class SweepGrid:
  """The `sweep.*` keys, split and checked."""

  weights: tuple[float, ...]
  formats: tuple[str, ...]
  layer_fractions: tuple[float, ...]
  seeds: tuple[int, ...]
  include_base: bool
  target_sets: tuple[str, ...]
  eval_formats: str  # as given ("" = each arm's default, "all", or a list: data.eval_format's syntax)
  grpo_arms: tuple[str, ...]
  confidence: float
  grpo_steps: int
  grpo_lens_weight: float
  grpo_lr: float


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `parse` returns: the checked config as typed sub-configs, the ones the code reads. `record` is the
  ConfigDict itself, kept only to be written (config.json, provenance, TensorBoard's hparams) and compared."""

  seed: int
  resume: bool
  overwrite: bool
  distributed: bool
  model: ModelSettings
  lora: LoRAConfig
  classifier: ClassifierSettings
  data: DataSettings
  train: TrainSettings
  grpo: GRPOConfig | None  # None unless train.objective=grpo
  mesh: MeshSettings
  eval: EvalSettings
  sweep: SweepGrid
  record: ml_collections.ConfigDict = dataclasses.field(repr=False, compare=False)


def section(cls, values, **parsed):
  """`cls` from a config section: each field is the key of its name, unless `parsed` gives it."""
  return cls(**{f.name: parsed[f.name] if f.name in parsed else values[f.name] for f in dataclasses.fields(cls)})


def comma_list(spec, key: str, unique: bool = False) -> list[str]:
  """`a,b , c` -> ["a", "b", "c"] (blanks dropped); `unique` refuses a value listed twice."""
  items = [s.strip() for s in str(spec or "").split(",") if s.strip()]
  if unique and len(set(items)) != len(items):
    raise UserError(f"{key}={spec!r} lists a value twice")
  return items


def data_formats(c) -> list[str]:
  return comma_list(c.data.format, "data.format")


def eval_formats(c) -> list[str]:
  """The held-out set's formats: `data.eval_format` ("all" = every format). Default (""): the trained formats, or
  every format when a cue-free one (fewshot, word) is trained, so such a run reports its row of the transfer
  matrix and the input-only baselines of every format without being asked."""
  spec = str(c.data.eval_format).strip()
  trained = data_formats(c)
  if spec == "all" or (not spec and set(trained) & {"fewshot", "word"}):
    return list(data_lib.EVAL_FORMATS)
  return comma_list(spec, "data.eval_format") if spec else trained


def lora_config(c) -> LoRAConfig:
  targets = c.lora.targets
  targets = comma_list(targets, "lora.targets") if isinstance(targets, str) else list(targets)
  end = c.lora.layer_end
  return LoRAConfig(
    rank=int(c.lora.rank),
    alpha=float(c.lora.alpha),
    targets=tuple(targets),
    layer_start=int(c.lora.layer_start),
    layer_end=None if end in (None, -1) else int(end),
  )


def parse(c: ml_collections.ConfigDict) -> Settings:
  """Every check that needs no model, in one place; the typed views of what was checked."""
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
  formats = data_lib.check_formats(data_formats(c), "data.format", data_lib.FORMATS)
  evals = data_lib.check_formats(eval_formats(c), "data.eval_format", data_lib.EVAL_FORMATS)
  if c.classifier.target_set not in TARGET_SETS:
    raise UserError(f"classifier.target_set must be one of {', '.join(TARGET_SETS)}, got {c.classifier.target_set!r}")
  if c.train.objective not in OBJECTIVES:
    raise UserError(f"train.objective must be one of {', '.join(OBJECTIVES)}, got {c.train.objective!r}")
  grpo = None
  if c.train.objective == "grpo":
    grpo = GRPOConfig.from_config(c.grpo)  # its value checks
    if c.train.grad_accum_steps != 1:
      raise UserError("train.grad_accum_steps applies to the dual-reward step only: set it to 1 with train.objective=grpo")
  if c.train.init_adapter and not os.path.isdir(c.train.init_adapter):
    raise UserError(f"train.init_adapter {c.train.init_adapter} is not a directory: pass another run's <workdir>/adapter")
  if c.data.jsonl:  # a bad data file is named (file:line) before the model loads
    data_lib.load_jsonl(c.data.jsonl)
  lora = _checked_lora(c)
  check_ranges(c)  # every other numeric key (NaN included), before anything is read or written
  # What evaluate checks is checked here too: train runs it after training, and a typo must not cost a run.
  if c.eval.probe_method not in ("adam", "lbfgs"):
    raise UserError(f"eval.probe_method must be adam or lbfgs, got {c.eval.probe_method!r}")
  if c.model.remat not in ("none", "full", "dots"):
    raise UserError(f"model.remat must be none, full or dots, got {c.model.remat!r}")
  alphas = _checked_mechanism(c, evals)  # what it analyses: the evaluated formats
  mechanism = section(MechanismSettings, c.eval.mechanism, steer_alphas=alphas)
  return Settings(
    seed=c.seed,
    resume=c.resume,
    overwrite=c.overwrite,
    distributed=c.distributed,
    model=section(ModelSettings, c.model),
    lora=lora,
    classifier=section(ClassifierSettings, c.classifier, targets=dict(c.classifier.targets)),
    data=section(DataSettings, c.data, formats=tuple(formats), eval_formats=tuple(evals)),
    train=section(TrainSettings, c.train, table_steps=tuple(int(x) for x in c.train.table_steps)),
    grpo=grpo,
    mesh=MeshSettings(tuple(c.mesh.shape), tuple(tuple(r) for r in c.mesh.rules)),
    eval=section(EvalSettings, c.eval, mechanism=mechanism),
    sweep=sweep_grid(c),
    record=c,
  )


def _checked_lora(c) -> LoRAConfig:
  """The LoRA checks that need no model (the layer range against the model: LoRAConfig.validate)."""
  lora = lora_config(c)
  unknown = [t for t in lora.targets if t not in PROJS]
  if not lora.targets or unknown:
    raise UserError(
      f"unknown LoRA target(s) {unknown or list(lora.targets)}: choose among {','.join(PROJS)} (e.g. --config.lora.targets=v,o)"
    )
  if len(set(lora.targets)) != len(lora.targets):
    raise UserError(f"lora.targets lists a projection twice: {lora.targets}")
  if lora.alpha <= 0:
    raise UserError(f"lora.alpha must be positive, got {lora.alpha}")
  if lora.layer_start < 0 or (lora.layer_end is not None and lora.layer_end <= lora.layer_start):
    raise UserError(
      f"LoRA layer range [{lora.layer_start}, {lora.layer_end}) adapts nothing: use "
      "0 <= lora.layer_start < lora.layer_end (or lora.layer_end=-1 for all layers)"
    )
  return lora


def mechanism_rows(spec: str, n_rows: int, layer: int | None = None) -> list[int]:
  """`all`, `auto` (every 3rd row, the classifier's row L + 1 and the last row) or comma-separated residual rows
  (0 = embeddings, r = after block r-1)."""
  if spec.strip() == "all":
    return list(range(n_rows))
  if spec.strip() == "auto":
    return sorted(set(range(0, n_rows, 3)) | {n_rows - 1} | ({layer + 1} if layer is not None else set()))
  try:
    rows = sorted({int(x) for x in comma_list(spec, "eval.mechanism.rows")})
  except ValueError:
    raise UserError(f"eval.mechanism.rows must be 'all' or comma-separated row numbers, got {spec!r}") from None
  if not rows or rows[0] < 0 or rows[-1] >= n_rows:
    raise UserError(f"eval.mechanism.rows {spec!r}: rows must lie in 0..{n_rows - 1} (row r = after block r-1)")
  return rows


def steer_alphas(c) -> list[float]:
  spec = c.eval.mechanism.steer_alphas
  try:
    alphas = [float(x) for x in comma_list(spec, "eval.mechanism.steer_alphas")]
  except ValueError:
    raise UserError(f"eval.mechanism.steer_alphas must be comma-separated numbers, got {spec!r}") from None
  if not alphas:
    raise UserError("eval.mechanism.steer_alphas is empty: give e.g. 0.5,1,2")
  return alphas


def _checked_mechanism(c, formats: list[str]) -> tuple[float, ...]:
  """eval.mechanism's keys (whether or not it is enabled: the values are the config's either way)."""
  m = c.eval.mechanism
  alphas = tuple(steer_alphas(c))
  if m.rows.strip() not in ("all", "auto"):
    mechanism_rows(m.rows, 10**6)
  if m.enabled and not set(formats) & set(data_lib.MECHANISM_FORMATS):
    # Formats without counterpart prompts (symbolic_alt) are skipped by the analysis; with no other, nothing is left.
    raise UserError(
      f"eval.mechanism analyses the {', '.join(data_lib.MECHANISM_FORMATS)} formats, and this run evaluates only "
      f"{', '.join(sorted(set(formats)))}: add one of them to data.eval_format, or drop --config.eval.mechanism.enabled"
    )
  return alphas


def sweep_grid(c) -> SweepGrid:
  """The `sweep.*` keys, split and checked (before any work)."""
  s = c.sweep

  def items(key: str) -> list[str]:
    got = comma_list(s[key], f"sweep.{key}", unique=True)
    if not got:
      raise UserError(f"sweep.{key} is empty: give a comma-separated list")
    return got

  def numbers(key: str) -> list[float]:
    try:
      return [float(x) for x in items(key)]
    except ValueError:
      raise UserError(f"sweep.{key}={s[key]!r} must be comma-separated numbers") from None

  weights = numbers("weights")
  for w in weights:
    if not 0.0 <= w <= 1.0:
      raise UserError(f"sweep.weights: {w} is outside [0, 1]")
  formats = items("formats")
  for f in formats:
    if f not in data_lib.FORMATS:
      raise UserError(f"sweep.formats: unknown format {f!r}: use {', '.join(data_lib.FORMATS)}")
  fractions = numbers("layer_fractions")
  for f in fractions:
    if not 0.0 < f < 1.0:
      raise UserError(f"sweep.layer_fractions: {f} is outside (0, 1)")
  try:
    seeds = [int(x) for x in items("seeds")]
  except ValueError:
    raise UserError(f"sweep.seeds={s.seeds!r} must be comma-separated non-negative integers") from None
  if any(x < 0 for x in seeds):
    raise UserError(f"sweep.seeds={s.seeds!r} must be non-negative")
  if not 0.0 < s.confidence < 1.0:
    raise UserError(f"sweep.confidence must be in (0, 1), got {s.confidence}")
  target_sets = items("target_sets")
  for t in target_sets:
    if t not in TARGET_SETS:
      raise UserError(f"sweep.target_sets: unknown target set {t!r}: use {', '.join(TARGET_SETS)}")
  evals = str(s.eval_formats).strip()
  if evals and evals != "all":
    data_lib.check_formats(items("eval_formats"), "sweep.eval_formats", data_lib.EVAL_FORMATS)
  grpo_arms = items("grpo_arms") if str(s.grpo_arms).strip() else []
  unknown = [a for a in grpo_arms if a not in GRPO_ARMS]
  if unknown:
    raise UserError(f"sweep.grpo_arms: unknown arm(s) {unknown}: use some of {', '.join(GRPO_ARMS)}")
  if grpo_arms and 0.0 not in weights:
    raise UserError("sweep.grpo_arms warm-start from the SFT arm: sweep.weights must include 0")
  if grpo_arms and (s.grpo_steps <= 0 or s.grpo_lr <= 0 or not 0.0 < s.grpo_lens_weight <= 1.0):
    raise UserError(
      f"sweep.grpo_steps and sweep.grpo_lr must be positive and sweep.grpo_lens_weight in (0, 1], got "
      f"{s.grpo_steps}, {s.grpo_lr}, {s.grpo_lens_weight}"
    )
  return SweepGrid(
    tuple(weights),
    tuple(formats),
    tuple(fractions),
    tuple(seeds),
    bool(s.include_base),
    tuple(target_sets),
    evals,
    tuple(grpo_arms),
    float(s.confidence),
    int(s.grpo_steps),
    float(s.grpo_lens_weight),
    float(s.grpo_lr),
  )
