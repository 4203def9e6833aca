"""Default configuration; each `lazarus_jax/configs/<name>.py` (`configs/` in a checkout) starts from
`default_config()` and changes what differs.

Every key is documented here, once. Configs are locked, so a mistyped `--config.<key>` fails at start.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from lazarus_jax.errors import UserError
from lazarus_jax.models.sharding import DEFAULT_RULES


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resume = False  # continue the run in --workdir from its latest checkpoint
  c.overwrite = False  # replace a run in --workdir that has a different config
  c.distributed = False  # call jax.distributed.initialize() (multi-host TPU/GPU)

  c.model = ml_collections.ConfigDict()
  c.model.source = "smollm2-135m"  # embedded name, HF dir, .gguf file or hub id
  c.model.path = ""  # if set, overrides model.source (a local dir / file / hub id)
  # Model dtypes: float32 | bfloat16 | float16 | auto. auto (resolved at start, printed, recorded in provenance;
  # lazarus_jax/models/dtypes.py): params and matmuls bfloat16 on TPU, GPU and CPUs with AMX/AVX512-BF16, else float32;
  # activations bfloat16 on TPU/GPU only. Adapters and optimizer state are float32 whatever is chosen.
  c.model.param_dtype = "float32"
  c.model.compute_dtype = "float32"  # matmul operands; accumulation, norms and softmax stay float32
  c.model.remat = "none"  # none | full | dots
  c.model.activation_dtype = "float32"  # residual stream + matmul outputs; bfloat16 halves activation traffic on GPU/TPU
  # Kernels (lazarus_jax/models/kernels.py): auto = cuDNN fused attention and unrolled layers on NVIDIA GPUs (31% -> 47%
  # MFU on an H200), blockwise attention (einsum up to 128 positions) and the scanned loop on CPU, einsum on TPU.
  c.model.attention = "auto"  # auto (blockwise on CPU: models/blockwise.py) | einsum | blockwise | xla | cudnn
  c.model.layer_loop = "auto"  # auto | scan | unroll

  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 32
  c.lora.alpha = 64.0  # scale = alpha / rank (PEFT)
  c.lora.targets = "v,o"  # any of q,k,v,o,gate,up,down
  c.lora.layer_start = 0
  c.lora.layer_end = -1  # exclusive; -1 = all layers

  c.classifier = ml_collections.ConfigDict()
  c.classifier.layer = -1  # block index L; -1 = int(n_layers * layer_fraction)
  c.classifier.layer_fraction = 0.55
  c.classifier.weight = 0.7  # w in total = w * classifier_loss + (1 - w) * answer_loss
  c.classifier.restrict_to_classes = False  # softmax over the class tokens only
  c.classifier.allow_target_in_prompt = False
  c.classifier.targets = ml_collections.ConfigDict({"multiply": "multiply", "add": "add", "subtract": "subtract", "divide": "divide"})
  # Target controls (targets.TARGET_SETS): operation = classifier.targets above; arbitrary = unrelated words
  # (multiply -> " river", ...); shuffled = the operation words deranged (multiply -> " add", ...); answer = the
  # lens target at L is the first token of the answer (the seed's "classifier_emergence (answer)").
  c.classifier.target_set = "operation"

  c.data = ml_collections.ConfigDict()
  # Trained formats, comma-separated: symbolic | semantic | fewshot | word (prompt_formats.py for the last two).
  c.data.format = "symbolic"
  # Held-out formats evaluated: "" = the trained ones (every format when fewshot or word is trained); "all"; or a
  # list that may add symbolic_alt, the held-out operator spellings. The same held-out triples in each, so one
  # run gives a row of the transfer matrix.
  c.data.eval_format = ""
  c.data.fewshot_k = 2  # solved examples per fewshot prompt
  c.data.jsonl = ""  # optional user data {prompt, response, operation} replacing the generator's train split
  c.data.n_eval_per_op = 200
  c.data.append_eos = True
  c.data.max_answer_tokens = 8
  c.data.seq_len = 0  # 0 = the longest example rounded up to 16

  c.train = ml_collections.ConfigDict()
  # dual_reward: w * classifier_loss + (1 - w) * answer_loss (w = 0 is SFT); grpo: lazarus_jax/training/grpo.py (RL with
  # sampled completions and a verifiable reward; the lens term enters weighted by classifier.weight)
  c.train.objective = "dual_reward"
  c.train.init_adapter = ""  # warm start: a PEFT adapter directory (another run's <workdir>/adapter), same LoRA shape
  c.train.steps = 1000  # also the length of the lr schedule: raising it on resume stretches the remaining decay
  c.train.batch_size = 8
  c.train.lr = 5e-4
  c.train.warmup_steps = 50
  c.train.end_lr_fraction = 0.1  # cosine decay to lr * this
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.grad_clip = 1.0
  c.train.grad_accum_steps = 1
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.train.max_to_keep = 3
  c.train.max_consecutive_nonfinite = 5  # stop after this many skipped (non-finite) updates in a row
  c.train.table_steps = (100, 500, 1000)  # rows of the final training table

  # GRPO (train.objective=grpo): train.steps counts generation rounds of train.batch_size prompts, each round
  # sampling group_size completions per prompt and taking updates_per_batch optimizer steps on them.
  c.grpo = ml_collections.ConfigDict()
  c.grpo.group_size = 8  # G completions per prompt; advantages are normalised within each group
  c.grpo.max_new_tokens = 8
  c.grpo.temperature = 1.0  # > 0; the policy is softmax(logits / temperature), in sampling and in the loss
  c.grpo.top_p = 1.0  # nucleus sampling; the loss still scores the untruncated policy (as TRL does)
  c.grpo.updates_per_batch = 1  # mu: optimizer steps per generation batch (> 1 makes the clipped ratio matter)
  c.grpo.clip_low = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
  c.grpo.clip_high = 0.2  # DAPO raises this (0.28)
  c.grpo.kl_beta = 0.04  # KL(policy || reference) weight, k3 estimator; reference = the model with adapters off
  c.grpo.aggregation = "token"  # token (DAPO: mean over all completion tokens) | sequence (GRPO) | constant (Dr. GRPO)
  c.grpo.scale_rewards = True  # divide advantages by the group's std (GRPO); False: Dr. GRPO's unscaled advantages
  c.grpo.format_weight = 0.0  # extra reward for a completion that is exactly an integer followed by EOS

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor); one -1 fills the device count
  c.mesh.rules = DEFAULT_RULES

  c.eval = ml_collections.ConfigDict()
  c.eval.enabled = True  # the train command evaluates the run into <workdir>/eval at the end (cli/train.py)
  c.eval.adapter = "workdir"  # workdir | none | <adapter dir>
  c.eval.max_examples_per_op = 200
  c.eval.batch_size = 32
  c.eval.generate = True
  c.eval.max_new_tokens = 8
  c.eval.compare_base = True  # with an adapter, also evaluate the base model in the same run (report compares)
  c.eval.probes = True  # linear probes at every layer (hidden-space classifiers)
  c.eval.probe_test_fraction = 0.5  # of the held-out set, per format, stratified by operation
  c.eval.probe_l2 = 1e-3
  c.eval.probe_steps = 200
  # adam: full-batch, ~25x faster than probes.py's L-BFGS on CPU at equal held-out accuracy (measured on
  # 31 layers x 400 x 576 features); lbfgs reaches the exact convex optimum.
  c.eval.probe_method = "adam"  # adam | lbfgs
  c.eval.probe_lr = 0.05  # adam only
  # Is the classifier used? (lazarus_jax/analysis/mechanism.py): interventions at the readout, a tuned lens, what V/O learned.
  # Off by default (minutes of CPU per model on SmolLM2); results.json `mechanism`, report.md "Mechanism".
  c.eval.mechanism = ml_collections.ConfigDict()
  c.eval.mechanism.enabled = False
  c.eval.mechanism.max_examples_per_op = 25  # held-out prompts per operation (seeded random subset)
  # Residual rows for ablation and patching (row r = after block r-1): auto (every 3rd row, L + 1 and the last) |
  # all | a comma list. Each row costs 1 + n_random + 1 greedy decodings of the prompts.
  c.eval.mechanism.rows = "auto"
  c.eval.mechanism.n_random = 2  # random-direction ablations per row (the control)
  c.eval.mechanism.steer_alphas = "0.5,1,2,4"  # steering sizes at L, in units of the readout residual's norm
  c.eval.mechanism.tuned_lens = True
  c.eval.mechanism.tuned_lens_train = 512  # training prompts the translators are fitted on
  c.eval.mechanism.tuned_lens_steps = 150  # full-batch AdamW steps
  c.eval.mechanism.tuned_lens_lr = 1e-3
  c.eval.mechanism.tuned_lens_top_k = 16  # each training prompt's top final tokens form the lens's vocabulary
  c.eval.mechanism.position_prompt = ""  # the layer x position lens figure's prompt; "" = the first seed prompt

  # Controlled comparison (python -m lazarus_jax.sweep): arms differ only in classifier.weight.
  # Comma-separated strings so that --config.sweep.<key>=a,b works on the command line.
  c.sweep = ml_collections.ConfigDict()
  c.sweep.weights = "0,0.7,1"  # 0 = SFT only, 0.7 = dual reward, 1 = classifier only
  c.sweep.include_base = True  # the untrained model, measured the same way
  c.sweep.formats = "symbolic,semantic"  # one arm per format (each trains and evaluates on that format)
  c.sweep.layer_fractions = "0.25,0.4,0.55,0.7,0.85"  # classifier depth; w=0 arms are depth-independent
  c.sweep.seeds = "0,1,2"  # data split, LoRA init and batch order
  # Held-out formats every arm is evaluated on ("" = the arm's own; "all"): the transfer matrix (train x eval).
  c.sweep.eval_formats = ""
  # Target controls: one arm set per classifier.target_set (operation | arbitrary | shuffled | answer).
  c.sweep.target_sets = "operation"
  c.sweep.confidence = 0.95
  # GRPO arms (train.objective=grpo), each warm-started from the same (format, seed) SFT arm (so sweep.weights
  # must hold 0): "grpo" (w = 0) and "grpo+lens" (w = grpo_lens_weight, at every layer fraction). Empty: none.
  # Their equal-budget controls, the SFT arm trained grpo_steps more supervised steps at grpo_lr: sft+more (w = 0)
  # for grpo, sft+lens (the dual-reward loss at w = grpo_lens_weight, every layer fraction) for grpo+lens.
  c.sweep.grpo_arms = ""  # e.g. grpo,grpo+lens,sft+more,sft+lens
  c.sweep.grpo_steps = 100  # generation rounds of each GRPO arm, after the SFT arm's train.steps
  c.sweep.grpo_lens_weight = 0.7
  c.sweep.grpo_lr = 1e-4  # train.lr of the GRPO arms (RL steps are noisier than SFT's)
  return c


# Keys added after runs were recorded: at their default value they are left out when runs are compared (resume)
# and hashed (sweep arms), so every earlier run and arm keeps its identity.
ADDED_KEY_PREFIXES = (
  # round 2: cue-free formats, target controls, transfer evaluation
  "data.eval_format",
  "data.fewshot_k",
  "classifier.target_set",
  "sweep.eval_formats",
  "sweep.target_sets",
  # kernels (auto = einsum attention and the scanned loop for the <= 128-position CPU runs recorded before), GRPO
  "model.attention",
  "model.layer_loop",
  "train.objective",
  "train.init_adapter",
  "grpo.",
  "sweep.grpo_",
)


def without_added_defaults(flat: dict) -> dict:
  """`flat` (from `flat_config`) without the ADDED_KEY_PREFIXES keys that hold their default value."""
  defaults = flat_config(default_config())
  return {k: v for k, v in flat.items() if not (k.startswith(ADDED_KEY_PREFIXES) and k in defaults and _same(v, defaults[k]))}


def _same(a, b) -> bool:
  return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b


def flat_config(c) -> dict:
  """A config (ConfigDict or the dict of a config.json) as {"dotted.key": value}: how runs and arms are compared."""
  out = {}

  def walk(prefix, d):
    for k, v in d.items():
      key = f"{prefix}{k}"
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(key + ".", v)
      else:
        out[key] = v

  walk("", c.to_dict() if isinstance(c, ml_collections.ConfigDict) else c)
  return out


# ---- ranges ------------------------------------------------------------------------------------------
# Every numeric key has its range here, checked at start before anything is read or written (`check_ranges`;
# tests/test_config_ranges.py fails for a numeric key without one). NaN and infinity are refused everywhere.


@dataclasses.dataclass(frozen=True)
class Range:
  low: float | None = None
  high: float | None = None
  open_low: bool = False
  open_high: bool = False
  special: tuple = ()  # sentinel values allowed outside the range (e.g. -1 = "all" / "derive it")
  meaning: str = ""  # what the sentinel means, for the error line

  def contains(self, v) -> bool:
    if v in self.special:
      return True
    if isinstance(v, float) and not math.isfinite(v):
      return False
    if self.low is not None and (v < self.low or (self.open_low and v == self.low)):
      return False
    return not (self.high is not None and (v > self.high or (self.open_high and v == self.high)))

  def describe(self) -> str:
    if self.low is not None and self.high is not None:
      text = f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"
    elif self.low is not None:
      text = f"{'>' if self.open_low else '>='} {self.low}"
    elif self.high is not None:
      text = f"{'<' if self.open_high else '<='} {self.high}"
    else:
      text = "finite"
    return text + (f" (or {self.meaning})" if self.special else "")


_POSITIVE_INT = Range(1)
_FRACTION_OPEN = Range(0, 1, open_low=True, open_high=True)
RANGES = {
  "seed": Range(0, 2**31 - 1),
  "lora.rank": _POSITIVE_INT,
  "lora.alpha": Range(0, open_low=True),
  "lora.layer_start": Range(0),
  "lora.layer_end": Range(1, special=(-1,), meaning="-1 = through the last layer"),
  "classifier.layer": Range(0, special=(-1,), meaning="-1 = int(n_layers * classifier.layer_fraction)"),
  "classifier.layer_fraction": _FRACTION_OPEN,
  "classifier.weight": Range(0, 1),
  "data.n_eval_per_op": _POSITIVE_INT,
  "data.max_answer_tokens": _POSITIVE_INT,
  "data.seq_len": Range(0, 1 << 20),  # 0 = the longest example rounded up to 16
  "data.fewshot_k": _POSITIVE_INT,
  "train.steps": _POSITIVE_INT,
  "train.batch_size": _POSITIVE_INT,
  "train.lr": Range(0, open_low=True),
  "train.warmup_steps": Range(0),
  "train.end_lr_fraction": Range(0, 1),
  "train.weight_decay": Range(0),
  "train.b1": Range(0, 1, open_high=True),
  "train.b2": Range(0, 1, open_high=True),
  "train.grad_clip": Range(0, open_low=True),
  "train.grad_accum_steps": _POSITIVE_INT,
  "train.log_every": _POSITIVE_INT,
  "train.checkpoint_every": _POSITIVE_INT,
  "train.max_to_keep": _POSITIVE_INT,  # 0 kept nothing: the "saved" checkpoint did not exist and resume restarted
  "train.max_consecutive_nonfinite": _POSITIVE_INT,
  "train.table_steps": _POSITIVE_INT,  # each element
  "mesh.shape": Range(1, special=(-1,), meaning="-1 = fill the device count"),  # each element
  "eval.max_examples_per_op": _POSITIVE_INT,
  "eval.batch_size": _POSITIVE_INT,
  "eval.max_new_tokens": _POSITIVE_INT,
  "eval.probe_test_fraction": _FRACTION_OPEN,
  "eval.probe_l2": Range(0),
  "eval.probe_steps": _POSITIVE_INT,
  "eval.probe_lr": Range(0, open_low=True),
  "sweep.confidence": _FRACTION_OPEN,
  "sweep.grpo_steps": _POSITIVE_INT,
  "sweep.grpo_lr": Range(0, open_low=True),
  "sweep.grpo_lens_weight": Range(0, 1),
  # GRPO (grpo.GRPOConfig.validate says the same, in its own words, for the API)
  "grpo.group_size": Range(2),  # advantages compare completions of one prompt
  "grpo.max_new_tokens": _POSITIVE_INT,
  "grpo.temperature": Range(0, open_low=True),
  "grpo.top_p": Range(0, 1, open_low=True),
  "grpo.updates_per_batch": _POSITIVE_INT,
  "grpo.clip_low": Range(0, 1, open_high=True),
  "grpo.clip_high": Range(0),
  "grpo.kl_beta": Range(0),
  "grpo.format_weight": Range(0),
  # the mechanism section of evaluate (interventions.py, tuned_lens.py)
  "eval.mechanism.max_examples_per_op": _POSITIVE_INT,
  "eval.mechanism.n_random": _POSITIVE_INT,
  "eval.mechanism.tuned_lens_train": _POSITIVE_INT,
  "eval.mechanism.tuned_lens_steps": _POSITIVE_INT,
  "eval.mechanism.tuned_lens_lr": Range(0, open_low=True),
  "eval.mechanism.tuned_lens_top_k": _POSITIVE_INT,
}


def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_ranges(c) -> None:
  """Refuses, in one line, the first numeric config value outside its range (RANGES), NaN and infinity included."""
  from lazarus_jax.errors import UserError

  for key, value in flat_config(c).items():
    rng = RANGES.get(key)
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    if rng is None:
      bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
      if bad:
        raise UserError(f"{key} must be a finite number, got {bad[0]}")
      continue
    for v in values:
      if not is_number(v):
        raise UserError(f"{key} must be a number {rng.describe()}, got {v!r}")
      if not rng.contains(v):
        raise UserError(f"{key} must be {rng.describe()}, got {value}: fix --config.{key}")
  shape = tuple(c.mesh.shape)
  if len(shape) != 3 or shape.count(-1) > 1:
    raise UserError(f"mesh.shape must be three sizes (data, fsdp, tensor) with at most one -1, got {shape}")


# ---- typed sub-configs -------------------------------------------------------------------------------

AGGREGATIONS = ("token", "sequence", "constant")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """The `grpo.*` keys, typed and checked (training/grpo.py)."""

  group_size: int = 8
  max_new_tokens: int = 8
  temperature: float = 1.0
  top_p: float = 1.0
  updates_per_batch: int = 1
  clip_low: float = 0.2
  clip_high: float = 0.2
  kl_beta: float = 0.04
  aggregation: str = "token"
  scale_rewards: bool = True
  format_weight: float = 0.0

  @classmethod
  def from_config(cls, g) -> "GRPOConfig":
    types = {"int": int, "float": float, "bool": bool, "str": str}
    out = cls(**{f.name: types[f.type](g[f.name]) for f in dataclasses.fields(cls)})
    out.validate()
    return out

  def validate(self) -> None:
    checks = (
      (
        self.group_size >= 2,
        f"grpo.group_size must be at least 2 (advantages compare completions of one prompt), got {self.group_size}",
      ),
      (self.max_new_tokens >= 1, f"grpo.max_new_tokens must be positive, got {self.max_new_tokens}"),
      (self.temperature > 0, f"grpo.temperature must be positive (GRPO samples), got {self.temperature}"),
      (0 < self.top_p <= 1, f"grpo.top_p must be in (0, 1], got {self.top_p}"),
      (self.updates_per_batch >= 1, f"grpo.updates_per_batch must be positive, got {self.updates_per_batch}"),
      (
        0 <= self.clip_low < 1 and self.clip_high >= 0,
        f"grpo.clip_low must be in [0, 1) and grpo.clip_high >= 0, got {self.clip_low}, {self.clip_high}",
      ),
      (self.kl_beta >= 0, f"grpo.kl_beta must be non-negative, got {self.kl_beta}"),
      (self.aggregation in AGGREGATIONS, f"grpo.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}"),
      (self.format_weight >= 0, f"grpo.format_weight must be non-negative, got {self.format_weight}"),
    )
    for ok, message in checks:
      if not ok:
        raise UserError(message)
