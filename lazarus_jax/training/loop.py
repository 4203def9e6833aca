"""Dual-reward LoRA training (DESIGN.md §2-§5).

  python -m lazarus_jax.train --config configs/smollm2_135m.py --workdir runs/smollm2 [--config.key=value ...]

Sections: setup (config, model, data, mesh) -> state (adapters + optimizer, created sharded) -> the jitted
step -> the loop (logging, checkpoints, preemption) -> outputs (PEFT adapter, training table, summary).
`run(config, workdir)` does the work; the train command (cli/train.py) runs it, then the evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from lazarus_jax import experiment, files, provenance, settings
from lazarus_jax import workdir as workdir_lib
from lazarus_jax.config import flat_config, without_added_defaults
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.errors import UserError
from lazarus_jax.files import check_output_dir, read_json, write_text
from lazarus_jax.models.loading import Pretrained
from lazarus_jax.models.lora import LoRA, LoRAConfig, add_lora
from lazarus_jax.models.model import LoRAParam, pack_frozen_layers
from lazarus_jax.models.padding import pad_prompts
from lazarus_jax.models.sharding import batch_sharding, make_mesh, pinned_activations, state_shardings, validate_model_for_mesh
from lazarus_jax.training import grpo
from lazarus_jax.training.checkpoints import Checkpointer, abstract_like
from lazarus_jax.training.export import write_adapter
from lazarus_jax.training.logging_utils import MetricsWriter, progress_bar, run_hparams
from lazarus_jax.training.losses import dual_reward_loss
from lazarus_jax.workdir import WorkdirLock

# Keys that may change between a run and its resumption without making it "a different run".
RESUMABLE_KEYS = ("resume", "overwrite", "eval", "train.steps", "train.log_every", "train.table_steps", "distributed")


# ---- optimizer ---------------------------------------------------------------------------------------
def make_optimizer(tc, updates_per_step: int = 1) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warm-up, cosine decay and global-norm clipping (ORIGINAL_DEFECTS #4).

  The schedule counts optimizer updates: `train.steps` x `updates_per_step` (GRPO's mu updates per round)."""
  total = tc.steps * updates_per_step
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=tc.lr,
    warmup_steps=max(tc.warmup_steps, 1),
    decay_steps=max(total, tc.warmup_steps + 1),
    end_value=tc.lr * tc.end_lr_fraction,
  )
  tx = optax.chain(optax.clip_by_global_norm(tc.grad_clip), optax.adamw(schedule, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay))
  return tx, schedule


# ---- the step ----------------------------------------------------------------------------------------
def make_train_step(graphdef, tx, schedule, classifier_layer: int, restrict_to_classes: bool, accum: int):
  """A pure `(state, base, rest, batch, weight, class_ids) -> (state, metrics)` step.

  Only the adapters are differentiated (the base weights are closed-over inputs, never differentiated).
  A non-finite loss or gradient skips the update and is counted (state['nonfinite']).
  """

  def loss_fn(lora, base, rest, batch, weight, class_ids, answer_tokens=None):
    model = nnx.merge(graphdef, base, lora, rest)
    return dual_reward_loss(model, batch, class_ids, classifier_layer, weight, restrict_to_classes, answer_tokens)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, base, rest, batch, weight, class_ids):
    if accum == 1:
      (_, aux), grads = grad_fn(state["lora"], base, rest, batch, weight, class_ids)
    else:
      micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)
      # Token-weighted like the whole batch: each micro-batch divides its answer NLL by the batch's tokens / accum.
      per_micro = batch["answer_weight"].sum() / accum

      def body(carry, mb):
        (_, aux), g = grad_fn(state["lora"], base, rest, mb, weight, class_ids, per_micro)
        return jax.tree.map(jnp.add, carry, (g, aux)), None

      zeros = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(lambda: grad_fn(state["lora"], base, rest, jax.tree.map(lambda x: x[0], micro), weight, class_ids, per_micro)),
      )
      (grads, aux), _ = jax.lax.scan(body, (zeros[1], zeros[0][1]), micro)
      grads, aux = jax.tree.map(lambda x: x / accum, (grads, aux))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["lora"])
    lora = optax.apply_updates(state["lora"], updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = {
      "lora": keep(lora, state["lora"]),
      "opt_state": keep(opt_state, state["opt_state"]),
      "step": state["step"] + 1,
      "nonfinite": jnp.where(finite, 0, state["nonfinite"] + 1),
      "skipped": state["skipped"] + (1 - finite.astype(jnp.int32)),
    }
    metrics = dict(aux, grad_norm=grad_norm, learning_rate=schedule(state["step"]), skipped=1 - finite.astype(jnp.int32))
    return new_state, metrics

  return step


SAMPLING_STREAM = 0x6772706F  # folded into the seed for GRPO's sampling key: a stream apart from the LoRA init


def initial_state_fn(model_cfg, lora_cfg: LoRAConfig, tx, seed: int, objective: str = "dual_reward"):
  """The fresh train state (adapters, optimizer state, counters; for GRPO also the optimizer-update count and the
  sampling RNG, so a resumed run samples what the uninterrupted one would) as a function: for `jax.eval_shape` and
  for `jax.jit(..., out_shardings=...)`, which creates it already sharded."""

  def init_state():
    fresh = LoRA(model_cfg, lora_cfg, nnx.Rngs(lora=seed))
    params = {"lora": nnx.to_pure_dict(nnx.state(fresh, LoRAParam))}
    state = {
      "lora": params,
      "opt_state": tx.init(params),
      "step": jnp.zeros((), jnp.int32),
      "nonfinite": jnp.zeros((), jnp.int32),
      "skipped": jnp.zeros((), jnp.int32),
    }
    if objective == "grpo":
      state["opt_step"] = jnp.zeros((), jnp.int32)
      state["rng"] = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), SAMPLING_STREAM))
    return state

  return init_state


def train_state_shardings(abstract_state, lora_shardings, mesh) -> dict:
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  out = {k: replicated for k in abstract_state}  # counters (and GRPO's sampling RNG)
  out.update(lora=lora_shardings, opt_state=opt_state_shardings(abstract_state["opt_state"], lora_shardings, replicated))
  return out


def jit_train_step(step_fn, state_sh, base_sh, batch_sh, mesh):
  """The step under jit with the run's shardings; the state is donated. Lower it inside
  `sharding.pinned_activations` (as `run` and `lazarus_jax.training.aot` do)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(
    step_fn,
    in_shardings=(state_sh, base_sh, None, batch_sh, replicated, replicated),
    out_shardings=(state_sh, replicated),
    donate_argnums=(0,),
  )


# ---- run ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
  workdir: str
  final_step: int
  history: list  # logged metric rows
  preempted: bool = False
  signal_number: int | None = None  # the signal that stopped a preempted run


def check_workdir(c: settings.Settings, workdir: str) -> None:
  """Refuses, before any work and any write, a workdir this run must not write into (issues 6 and 16):
  one that cannot be written, holds a run with another config, holds this run's checkpoints without
  --config.resume=True, holds our outputs without a run's config.json, or (with --config.overwrite=True) holds
  files that no run writes."""
  check_output_dir(workdir, "--workdir")
  if not files.isdir(workdir):
    return
  workdir_lib.check_not_in_use(workdir)
  cfg_file = files.join(workdir, "config.json")
  if c.overwrite:
    workdir_lib.check_can_clean(workdir)
    return
  if not files.exists(cfg_file):
    ours = [
      n
      for n in sorted(set(files.listdir(workdir)) & set(workdir_lib.RUN_OUTPUTS))  # empty dirs: mount points
      if not (files.isdir(files.join(workdir, n)) and not files.listdir(files.join(workdir, n)))
    ]
    if ours:
      raise UserError(
        f"{workdir} holds {', '.join(ours)} but no config.json (not a training run's workdir): use "
        "another --workdir, or --config.overwrite=True to replace them"
      )
    return
  old = read_json(cfg_file, "run config", "use another --workdir, or --config.overwrite=True to replace it")
  new = json.loads(json.dumps(c.record.to_dict(), default=list))

  def relevant(d):
    flat = without_added_defaults(flat_config(d))
    return {k: v for k, v in flat.items() if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)}

  diff = sorted(k for k in set(relevant(old)) | set(relevant(new)) if relevant(old).get(k) != relevant(new).get(k))
  if diff:
    raise UserError(
      f"{workdir} holds a run with a different config ({', '.join(diff[:5])}): use another --workdir, "
      "or --config.overwrite=True to replace it"
    )
  if not c.resume and files.isdir(files.join(workdir, "checkpoints")) and files.listdir(files.join(workdir, "checkpoints")):
    raise UserError(
      f"{workdir} already holds checkpoints of this run: pass --config.resume=True to continue it, "
      "or --config.overwrite=True to start over"
    )


def run(config: ml_collections.ConfigDict | settings.Settings, workdir: str, reward_fn=None) -> TrainResult:
  """Trains into `workdir` (the train command then evaluates: lazarus_jax/cli/train.py). `config`: a ConfigDict, or
  the Settings `settings.parse` made of it (the train command parses once for both). `reward_fn`: GRPO's completion
  scorer `(texts, ended, answers, ids) -> (rewards, correct, well_formed)` in place of the exact-answer reward (tests)."""
  # SIGINT/SIGTERM are a flag from the very start, checked between set-up stages: a KeyboardInterrupt raised
  # asynchronously during set-up could land inside a library that swallows it (seen: ~1 in 15 early Ctrl-Cs lost).
  stop = PreemptionFlag()
  with contextlib.ExitStack() as held:  # the workdir lock, from the first write to the end
    try:
      return _run(config, workdir, stop, held, reward_fn)
    finally:
      stop.restore()


@dataclasses.dataclass
class Setup:
  """What the set-up built and checked, before anything is written."""

  c: settings.Settings  # c.lora, c.grpo (None for dual reward), c.mesh.rules: what the steps are built from
  workdir: str
  is_main: bool
  mesh: jax.sharding.Mesh
  pretrained: Pretrained
  model: nnx.Module
  layer: int  # the classifier layer L
  lora: LoRA
  datasets: experiment.Datasets
  targets: experiment.ResolvedTargets
  train_labels: list[str]  # the class each training example's lens targets
  warm_start: dict | None


@dataclasses.dataclass
class Step:
  """The sharded state and the compiled step (dual-reward) or round (GRPO) that advances it."""

  state: dict
  abstract: object  # the state's shapes (a checkpoint restores into them)
  state_sh: dict
  run: Callable[[dict, int], tuple]  # (state, step) -> (state, metrics)
  compile_s: float
  work_unit: str  # what `work_per_step` counts, for the throughput column: tokens or samples
  work_per_step: int


def _run(config, workdir: str, stop: "PreemptionFlag", held: contextlib.ExitStack, reward_fn=None) -> TrainResult:
  setup = set_up(config, workdir, stop)
  stop.stop_if_requested()
  step = compile_step(setup, stop, reward_fn)
  ckpt, start_step = prepare_workdir(setup, step, held)
  stop.stop_if_requested()
  final_step, history, preempted = train_loop(setup, step, ckpt, start_step, stop)
  if preempted:
    if setup.is_main:
      print(
        f"stopped by {stop.signal_name} at step {final_step}: checkpoint {setup.workdir}/checkpoints/{final_step} "
        "saved; continue with --config.resume=True",
        file=sys.stderr,
      )
    return TrainResult(setup.workdir, final_step, history, preempted=True, signal_number=stop.signal_number)
  write_outputs(setup, step, final_step, history)
  return TrainResult(setup.workdir, final_step, history)


def set_up(config: ml_collections.ConfigDict | settings.Settings, workdir: str, stop: "PreemptionFlag") -> Setup:
  """Config, mesh, model, adapters, targets and data: every check that can run before anything is written."""
  c = config if isinstance(config, settings.Settings) else settings.parse(config)
  workdir = files.abspath(workdir)
  if c.distributed:
    initialize_distributed()
  check_workdir(c, workdir)
  is_main = jax.process_index() == 0
  mesh = make_mesh(c.mesh.shape)  # device count and batch divisibility need no model: fail before loading it
  data_size = mesh.shape["data"] * mesh.shape["fsdp"]
  if c.train.batch_size % data_size:
    raise UserError(
      f"train.batch_size {c.train.batch_size} is not divisible by the data-parallel size {data_size} "
      f"(mesh data x fsdp on {mesh.size} devices): change train.batch_size or mesh.shape"
    )
  stop.stop_if_requested()
  pretrained = experiment.load_model(c.model)
  model = pretrained.build()
  n_layers = pretrained.config.num_layers
  layer = experiment.classifier_layer(c.classifier, n_layers)
  lora = add_lora(model, c.lora, seed=c.seed)
  tok = pretrained.tokenizer
  stop.stop_if_requested()
  datasets = experiment.build_data(c, tok)
  every = datasets.train + datasets.eval
  targets = experiment.class_targets(c.classifier, tok, prompts=experiment.all_prompts(datasets), examples=every)
  train_labels = experiment.example_labels(c.classifier, tok, datasets.train)
  validate_model_for_mesh(mesh, pretrained.config, c.train.batch_size)
  warm_start = read_warm_start(c.train.init_adapter, pretrained.config, c.lora, datasets.split) if c.train.init_adapter else None
  if is_main:
    print(
      f"model {pretrained.name}: {n_layers} layers; classifier layer L={layer}; LoRA r{lora.rank} "
      f"alpha {lora.alpha} on {','.join(lora.targets)} layers [{lora.layer_start},{lora.layer_end}) = "
      f"{lora.num_modules} modules; mesh {dict(mesh.shape)}; {len(datasets.train)} train examples, "
      f"seq_len {datasets.seq_len}",
      file=sys.stderr,
    )
  return Setup(
    c,
    workdir,
    is_main,
    mesh,
    pretrained,
    model,
    layer,
    lora,
    datasets,
    targets,
    train_labels,
    warm_start,
  )


def compile_step(s: Setup, stop: "PreemptionFlag", reward_fn=None) -> Step:
  """The state (base weights placed by the rules; adapters and optimizer created already sharded) and the step,
  compiled ahead of time, so sharding or memory errors fail before the workdir is touched."""
  c, mesh, rules, tok, datasets = s.c, s.mesh, s.c.mesh.rules, s.pretrained.tokenizer, s.datasets
  graphdef, base, lora_state, rest = nnx.split(s.model, nnx.Param, LoRAParam, ...)
  base_shardings = to_pure(state_shardings(base, mesh, rules))
  lora_shardings = to_pure(state_shardings(lora_state, mesh, rules))
  base = pack_frozen_layers(jax.device_put(nnx.to_pure_dict(base), base_shardings), base_shardings)
  rest = nnx.to_pure_dict(rest)
  grpo_cfg = c.grpo
  tx, schedule = make_optimizer(c.train, grpo_cfg.updates_per_batch if grpo_cfg else 1)
  init_state = initial_state_fn(s.pretrained.config, c.lora, tx, c.seed, c.train.objective)
  abstract = jax.eval_shape(init_state)
  state_sh = train_state_shardings(abstract, lora_shardings, mesh)
  state = jax.jit(init_state, out_shardings=state_sh)()

  class_ids = jnp.asarray(s.targets.token_ids, jnp.int32)
  weight = jnp.asarray(c.classifier.weight, jnp.float32)
  bsh = batch_sharding(mesh, rules)
  n = len(datasets.train_encoded)
  label_ids = experiment.balance_ids(datasets.train_labels)

  def local_indices(step):
    idx = data_lib.batch_indices(n, c.train.batch_size, step, c.seed, labels=label_ids)
    return idx, data_lib.process_slice(idx, jax.process_index(), jax.process_count())

  stop.stop_if_requested()
  if grpo_cfg is None:

    def global_batch(step):
      _, local = local_indices(step)
      arrays = data_lib.collate(
        [datasets.train_encoded[i] for i in local],
        [s.train_labels[i] for i in local],
        datasets.seq_len,
        c.data.max_answer_tokens,
        tok.pad_id,
        label_names=s.targets.labels,
      )
      return {k: jax.make_array_from_process_local_data(bsh, v) for k, v in arrays.items()}

    t0 = time.perf_counter()
    step_fn = make_train_step(graphdef, tx, schedule, s.layer, c.classifier.restrict_to_classes, c.train.grad_accum_steps)
    jitted = jit_train_step(step_fn, state_sh, base_shardings, bsh, mesh)
    with pinned_activations(mesh, rules):  # FSDP: activations stay batch-sharded, weights gathered one layer at a time
      compiled = jitted.lower(state, base, rest, global_batch(0), weight, class_ids).compile()
    compile_s = time.perf_counter() - t0
    if s.is_main:
      print(f"compiled train step in {compile_s:.1f}s; {memory_summary(compiled)}", file=sys.stderr)

    def one_step(state, step):
      return compiled(state, base, rest, global_batch(step), weight, class_ids)

    return Step(state, abstract, state_sh, one_step, compile_s, "tokens", c.train.batch_size * datasets.seq_len)

  prompt_width = max(e.prompt_len for e in datasets.train_encoded)  # fixed: the rollout compiles once

  def prompt_batch(step):
    idx, local = local_indices(step)
    enc = datasets.train_encoded
    tokens, mask, _ = pad_prompts([enc[i].ids[: enc[i].prompt_len] for i in local], prompt_width, tok.pad_id, left=True)
    return {
      "prompts": jax.make_array_from_process_local_data(bsh, tokens),
      "prompt_mask": jax.make_array_from_process_local_data(bsh, mask),
      "answers": [datasets.train[i].answer for i in idx],
      "label_host": label_ids[idx],
    }

  shardings = {
    "lora": state_sh["lora"],
    "base": base_shardings,
    "batch": bsh,
    "state": state_sh,
    "replicated": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
  }
  rounds = grpo.Rounds(
    grpo_cfg,
    grpo.make_rollout(graphdef, grpo_cfg, tok.eos_id, tok.pad_id, s.layer),
    grpo.make_update(graphdef, tx, schedule, grpo_cfg, s.layer, c.classifier.restrict_to_classes),
    shardings,
    tok,
    prompt_batch,
    reward_fn,
  )
  with pinned_activations(mesh, rules):
    compile_s = rounds.compile(state, base, rest, weight, class_ids, 0)
  if s.is_main:
    print(
      f"compiled GRPO rollout and update in {compile_s:.1f}s; {memory_summary(rounds._update)}; "
      f"{c.train.batch_size} prompts x G={grpo_cfg.group_size}, <= {grpo_cfg.max_new_tokens} new tokens, "
      f"mu={grpo_cfg.updates_per_batch}, {grpo_cfg.aggregation}-level loss",
      file=sys.stderr,
    )
  return Step(state, abstract, state_sh, rounds, compile_s, "samples", c.train.batch_size * grpo_cfg.group_size)


def prepare_workdir(s: Setup, step: Step, held: contextlib.ExitStack) -> tuple[Checkpointer, int]:
  """Now that every check passed and the step compiled (on every process): the lock, a clean workdir when
  overwriting, config.json; then the state restored (resume) or warm-started. Returns the checkpointer and the
  step to start from."""
  c, workdir = s.c, s.workdir
  sync_processes("inputs checked")
  if s.is_main:
    held.enter_context(WorkdirLock(workdir, "train"))
    check_workdir(c, workdir)  # again, under the lock: another run may have written here since the first check
    if c.overwrite:
      workdir_lib.clean(workdir)  # what a run of ours wrote, nothing else (check_workdir refused anything else)
    files.makedirs(workdir)
    write_text(files.join(workdir, "config.json"), json.dumps(c.record.to_dict(), indent=2, default=list))
  sync_processes("workdir prepared")
  if not s.is_main:
    files.makedirs(workdir)
  ckpt = Checkpointer(files.join(workdir, "checkpoints"), max_to_keep=c.train.max_to_keep)
  restored = ckpt.restore_latest(abstract_like(step.abstract, step.state_sh), say=_say) if c.resume else None
  if restored is not None:
    step.state, meta = restored
    if s.is_main:
      print(f"resumed from {files.join(workdir, 'checkpoints')} at step {int(meta['step'])}", file=sys.stderr)
    return ckpt, int(meta["step"])
  if s.warm_start is not None:  # the adapters start from another run's; the optimizer starts fresh
    lora_now = step.state["lora"]["lora"]
    step.state["lora"] = {"lora": {k: jax.device_put(jnp.asarray(v), lora_now[k].sharding) for k, v in s.warm_start.items()}}
    if s.is_main:
      print(f"warm start: adapters from {c.train.init_adapter}", file=sys.stderr)
  return ckpt, 0


def train_loop(s: Setup, step: Step, ckpt: Checkpointer, start_step: int, stop: "PreemptionFlag") -> tuple[int, list, bool]:
  """Steps from `start_step` to train.steps: metrics every log_every, checkpoints every checkpoint_every and at a
  stop request (all processes at the same step). Returns (last step, metric rows, whether a signal stopped it)."""
  c, mesh, rules = s.c, s.mesh, s.c.mesh.rules
  ckpt_dir = files.join(s.workdir, "checkpoints")
  writer = MetricsWriter(s.workdir, enabled=s.is_main, truncate_after=start_step, hparams=run_hparams(c.record))
  pbar = progress_bar(total=c.train.steps, initial=start_step, enabled=s.is_main)
  pending, t_window, work_window = [], time.perf_counter(), 0
  n = start_step
  preempted = False
  multi_process = jax.process_count() > 1
  try:
    while n < c.train.steps:
      with pinned_activations(mesh, rules):
        step.state, metrics = step.run(step.state, n)
      n += 1
      pending.append(metrics)
      work_window += int(step.work_per_step)
      if n % c.train.log_every == 0 or n == c.train.steps:
        rows = jax.device_get(pending)
        dt = time.perf_counter() - t_window
        row = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "samples"}
        row.update(
          {
            "step": n,
            "steps_per_s": len(rows) / dt,
            f"{step.work_unit}_per_s": work_window / dt,
            "skipped": float(np.sum([r["skipped"] for r in rows])),
          }
        )
        writer.write(row)
        pbar.update(len(rows))
        pbar.set_postfix(**progress_fields(row))
        pending, t_window, work_window = [], time.perf_counter(), 0
        nonfinite = int(jax.device_get(step.state["nonfinite"]))
        if nonfinite >= c.train.max_consecutive_nonfinite:
          ckpt.wait()
          raise TrainingDiverged(
            f"{nonfinite} consecutive non-finite updates were skipped at step {n}; the last good checkpoint "
            f"is step {ckpt.latest_step()} in {ckpt_dir}: lower train.lr or check the data"
          )
      stop_now = stop.requested if not multi_process else stop.reached_sync_point(n)
      if n % c.train.checkpoint_every == 0 or n == c.train.steps or stop_now:
        save_checkpoint(ckpt, step.state, n, c.seed, force=stop_now)
      if stop_now and n < c.train.steps:  # at the last step, finish normally (outputs)
        preempted = True
        break
  finally:
    pbar.close()
    stop.restore()
    writer.close()  # never raises; the checkpointer's close may (a failed last save), so it goes last
    ckpt.close()
  return n, writer.history, preempted


def write_outputs(s: Setup, step: Step, final_step: int, history: list) -> None:
  """The PEFT adapter, the training table and train_summary.json (process 0; the gather is a collective)."""
  c, workdir = s.c, s.workdir
  lora_params = gather_to_host(step.state["lora"]["lora"])  # a collective: every process takes part
  if not s.is_main:
    return
  # the same writer as `python -m lazarus_jax.export` (training/export.py): its export of this step is these bytes
  write_adapter(lora_params, c.lora, s.pretrained, s.datasets.split, final_step, c.train.objective, files.join(workdir, "adapter"))
  table = training_table(history, c.train.table_steps, c.train.objective)
  write_text(files.join(workdir, "training_table.md"), table + "\n")
  summary = {
    "final_step": final_step,
    "compile_seconds": step.compile_s,
    "classifier_layer": s.layer,
    "objective": c.train.objective,
    "init_adapter": warm_start_record(c.train.init_adapter),
    "skipped_updates": int(jax.device_get(step.state["skipped"])),
    "class_targets": s.targets.as_dict(),
    "split": s.datasets.split,
    "provenance": provenance.collect(c.record, s.pretrained.dtypes),
  }
  write_text(files.join(workdir, "train_summary.json"), json.dumps(summary, indent=2, default=str))
  print(table)


def initialize_distributed() -> None:
  """`jax.distributed.initialize()`: auto-detects TPU pod slices and clusters (SLURM, Open MPI, ...); a job started
  by hand names its coordinator in JAX_COORDINATOR_ADDRESS and each process's JAX_NUM_PROCESSES / JAX_PROCESS_ID
  (e.g. the two-process CPU test: tests/test_multiprocess.py)."""
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES") and os.environ.get("JAX_PROCESS_ID"):
    kwargs = {"num_processes": int(os.environ["JAX_NUM_PROCESSES"]), "process_id": int(os.environ["JAX_PROCESS_ID"])}
  if os.environ.get("LAZARUS_JAX_HEARTBEAT_S"):  # how soon a dead peer stops the others (JAX's default: 100 s)
    kwargs["heartbeat_timeout_seconds"] = int(os.environ["LAZARUS_JAX_HEARTBEAT_S"])
  jax.distributed.initialize(**kwargs)


def sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def gather_to_host(tree):
  """Numpy copies of (possibly multi-host sharded) arrays."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


class TrainingDiverged(UserError):
  """Too many consecutive non-finite updates."""


def _say(line: str) -> None:
  if jax.process_index() == 0:
    print(line, file=sys.stderr)


def save_checkpoint(ckpt: Checkpointer, state, step: int, seed: int, force: bool = False) -> None:
  meta = {"step": step, "data_position": step, "seed": seed, "skipped": int(jax.device_get(state["skipped"]))}
  ckpt.save(step, state, meta, force=force)


def to_pure(sharding_state):
  return nnx.to_pure_dict(sharding_state) if isinstance(sharding_state, nnx.State) else sharding_state


def opt_state_shardings(abstract_opt, lora_shardings, replicated):
  """Optimizer leaves mirroring an adapter leaf (Adam's mu, nu) take its sharding; the rest is replicated."""
  by_path = {}
  for path, s in jax.tree_util.tree_flatten_with_path(lora_shardings)[0]:
    by_path[tuple(str(getattr(k, "key", k)) for k in path)] = s

  def pick(path, leaf):
    keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    for n in range(len(keys)):
      s = by_path.get(keys[n:])
      if s is not None and len(s.spec) <= len(leaf.shape):
        return s
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def memory_summary(compiled) -> str:
  try:
    m = compiled.memory_analysis()
    mb = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    return (
      f"memory: arguments {mb(m.argument_size_in_bytes)}, outputs {mb(m.output_size_in_bytes)}, temporaries {mb(m.temp_size_in_bytes)}"
    )
  except Exception:  # not every backend reports it
    return "memory analysis unavailable on this backend"


def progress_fields(row: dict) -> dict:
  """The progress bar's postfix for a logged row (either objective)."""
  if "reward_mean" in row:
    return {
      "reward": f"{row['reward_mean']:.3f}",
      "acc": f"{row['answer_accuracy']:.2f}",
      "kl": f"{row.get('kl', 0.0):.3f}",
      "cls": f"{row['classifier_accuracy']:.2f}",
      "samples/s": f"{row['samples_per_s']:.1f}",
    }
  return {
    "loss": f"{row['loss']:.3f}",
    "cls": f"{row['classifier_loss']:.3f}",
    "ans": f"{row['answer_loss']:.3f}",
    "acc": f"{row['classifier_accuracy']:.2f}",
  }


def read_warm_start(path: str, model_cfg, lora_cfg: LoRAConfig, split: dict) -> dict:
  """The adapter weights of `train.init_adapter`, checked against this run: the same LoRA shape, and trained against
  this run's held-out split (else its training may have seen prompts this run evaluates on)."""
  from lazarus_jax.models.adapters import adapter_record, read_adapter

  if not files.isdir(path):
    raise UserError(f"train.init_adapter {path} is not a directory: pass another run's <workdir>/adapter")
  saved_cfg, weights = read_adapter(path, model_cfg)
  start, end = lora_cfg.validate(model_cfg.num_layers)
  mine = (lora_cfg.rank, lora_cfg.alpha, tuple(sorted(lora_cfg.targets)), start, end)
  theirs = (saved_cfg.rank, saved_cfg.alpha, tuple(sorted(saved_cfg.targets)), saved_cfg.layer_start, saved_cfg.layer_end)
  if mine != theirs:
    raise UserError(
      f"train.init_adapter {path} has LoRA (rank, alpha, targets, layers) {theirs}, this run {mine}: set lora.* to the adapter's"
    )
  trained_split = adapter_record(path).get("split")
  if trained_split is not None and trained_split.get("heldout_sha256") != split.get("heldout_sha256"):
    raise UserError(
      f"train.init_adapter {path} was trained against another held-out split than this run's (seed "
      f"or data differ): warm-start from a run with the same seed and data"
    )
  return weights


def warm_start_record(path: str) -> dict | None:
  if not path:
    return None
  from lazarus_jax.models.adapters import adapter_record

  rec = adapter_record(path)
  return {"path": path, "final_step": rec.get("final_step"), "objective": rec.get("objective", "dual_reward")}


TABLE_COLUMNS = {
  "dual_reward": (
    ("Total Loss", "loss", "{:.3f}"),
    ("Classifier Loss", "classifier_loss", "{:.3f}"),
    ("Answer Loss", "answer_loss", "{:.3f}"),
  ),
  "grpo": (
    ("Total Loss", "loss", "{:.3f}"),
    ("Reward", "reward_mean", "{:.3f}"),
    ("Answer Acc", "answer_accuracy", "{:.1%}"),
    ("KL", "kl", "{:.4f}"),
    ("Classifier Loss", "classifier_loss", "{:.3f}"),
  ),
}


def training_table(history: list[dict], table_steps, objective: str = "dual_reward") -> str:
  """The seed's training table (step | total | classifier | answer | accuracy) at the requested steps; for GRPO
  (step | total | reward | sampled answer accuracy | KL | classifier | accuracy)."""
  cols = TABLE_COLUMNS[objective]
  lines = ["| Step | " + " | ".join(c[0] for c in cols) + " | Cls Accuracy |", "|---" * (len(cols) + 2) + "|"]
  shown = set()
  last = history[-1]["step"] if history else 0
  # The requested steps within the run (the nearest logged step at or before each), and the final step.
  for s in sorted({min(int(s), last) for s in table_steps} | {last}):
    earlier = [r for r in history if r["step"] <= s]
    row = earlier[-1] if earlier else None
    if row is not None and row["step"] not in shown:
      shown.add(row["step"])
      cells = [fmt.format(row[key]) if key in row else "n/a" for _, key, fmt in cols]
      lines.append(f"| {row['step']} | " + " | ".join(cells) + f" | {100 * row['classifier_accuracy']:.0f}% |")
  return "\n".join(lines)


class PreemptionFlag:
  """SIGTERM (a TPU VM's preemption notice) and SIGINT ask the loop to checkpoint and stop."""

  def __init__(self):
    self.requested, self.signal_name, self.signal_number, self._old = False, None, None, {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass

  def _handle(self, signum, frame):
    if self.requested:  # asked twice (a second Ctrl-C): stop now, as without the handler
      self.restore()
      signal.raise_signal(signum)
      return
    self.requested, self.signal_name, self.signal_number = True, signal.Signals(signum).name, signum

  def restore(self):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)
    self._old = {}

  def reached_sync_point(self, step: int) -> bool:
    """Multi-process: True on every process at the same step once any of them got a preemption notice.

    `jax.distributed.initialize` replaces our SIGTERM handler with JAX's preemption notifier, which tells the
    coordination service; each process asks here after every step, and all of them are told the same step, so
    all save that step and exit together (a SIGTERM reaches the hosts of a pod slice at different moments)."""
    from jax.experimental import multihost_utils

    try:
      if not multihost_utils.reached_preemption_sync_point(step):
        return False
    except RuntimeError:  # JAX's preemption service turned off: only this process's own signal (uncoordinated)
      return self.requested
    self.requested, self.signal_name, self.signal_number = True, "SIGTERM (preemption, all processes)", signal.SIGTERM
    return True

  def stop_if_requested(self):
    """Before the loop there is nothing to checkpoint: a signal then ends the run as the signal would."""
    if not self.requested:
      return
    self.restore()
    if self.signal_number == signal.SIGINT:
      raise KeyboardInterrupt  # the CLI prints one line, exit status 130
    print(f"stopped by {self.signal_name} before training started: nothing to checkpoint", file=sys.stderr)
    raise SystemExit(128 + self.signal_number)
