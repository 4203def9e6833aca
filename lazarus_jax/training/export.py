"""The PEFT adapter of any checkpoint of a run (`python -m lazarus_jax.export --workdir W [--step N] [--out DIR]`).

Rebuilds what training restores (the run's config.json -> the model -> the train-state tree), restores one
complete checkpoint onto this machine's first device (a run saved sharded on 8 devices exports on 1) and writes
the adapter through `write_adapter`, which the training loop also uses for its final `<workdir>/adapter`: the
export of the last step is the adapter training wrote, byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import jax
import ml_collections

from lazarus_jax import experiment, files, settings
from lazarus_jax.config import default_config
from lazarus_jax.errors import UserError
from lazarus_jax.models.adapters import export_peft, model_fingerprint
from lazarus_jax.models.lora import LoRAConfig
from lazarus_jax.workdir import WorkdirLock


def write_adapter(lora_params, lora_cfg: LoRAConfig, pretrained, split: dict, step: int, objective: str, out_dir: str) -> None:
  """The run's adapter at `step` as a PEFT directory, with our record (held-out split, step, objective, base)."""
  start, end = lora_cfg.validate(pretrained.config.num_layers)
  export_peft(
    lora_params,
    lora_cfg,
    (start, end),
    out_dir,
    base_model=pretrained.base_model_id,
    model_fingerprint=model_fingerprint(pretrained.config),
    record={"split": split, "final_step": step, "objective": objective, "base_model": pretrained.base_record()},
  )


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run recorded in its config.json, over today's defaults (keys added since keep their default)."""
  path = files.join(workdir, "config.json")
  if not files.exists(path):
    raise UserError(f"{workdir} holds no config.json: not a training run's workdir (pass the --workdir train wrote)")
  stored = files.read_json(path, "run config", "pass the workdir of an intact run")
  return recorded_config(stored, path)


def recorded_config(stored, path: str) -> ml_collections.ConfigDict:
  """A config recorded as a dict (config.json, or results.json's provenance.config) over today's defaults."""
  if not isinstance(stored, dict):
    raise UserError(f"run config {path} is not a JSON object: pass the workdir of an intact run")
  c = default_config()

  def merge(node, values):
    for k, v in values.items():
      if k not in node:
        continue  # a key this version no longer has: it cannot shape the adapters
      if isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, dict):
        merge(node[k], v)
      else:
        node[k] = tuple(v) if isinstance(node[k], tuple) and isinstance(v, list) else v

  try:
    merge(c, stored)
  except (TypeError, ValueError) as e:
    raise UserError(f"run config {path} does not fit this version's config ({type(e).__name__}: {e})") from None
  return c


def complete_steps(workdir: str) -> list[int]:
  ckpt_dir = files.join(workdir, "checkpoints")
  return sorted(int(n) for n in files.listdir(ckpt_dir) if n.isdigit()) if files.isdir(ckpt_dir) else []


def export_checkpoint(workdir: str, step: int | None = None, out: str | None = None, overwrite: bool = False) -> tuple[int, str, bool]:
  """Writes the adapter of checkpoint `step` (default: the newest complete one) of the run in `workdir` to `out`
  (default `<workdir>/adapter-step-<step>`); returns (step, out, written). An `out` that exists is left alone
  when it already holds this adapter (written False) and refused when it holds anything else, unless `overwrite`."""
  from lazarus_jax.training import loop  # the loop imports this module: its state helpers come in at call time
  from lazarus_jax.training.checkpoints import Checkpointer, _short, abstract_like

  workdir = files.abspath(workdir)
  if not files.isdir(workdir):
    raise UserError(f"--workdir {workdir} does not exist: pass the directory of a training run")
  c = settings.parse(run_config(workdir))
  steps = complete_steps(workdir)
  if not steps:
    raise UserError(f"{workdir}/checkpoints holds no complete checkpoint: train first (python -m lazarus_jax.train ...)")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise UserError(
      f"--step {step}: no complete checkpoint of that step in {workdir}/checkpoints (it has steps "
      f"{', '.join(map(str, steps))}; older ones beyond train.max_to_keep are deleted)"
    )
  out = files.abspath(out) if out else files.join(workdir, f"adapter-step-{step}")
  if files.exists(out) and not files.isdir(out):
    raise UserError(f"--out {out} is a file: pass a directory")
  files.check_output_dir(out, "--out")

  pretrained = experiment.load_model(c.model)
  lora_cfg = c.lora
  lora_cfg.validate(pretrained.config.num_layers)
  tx, _ = loop.make_optimizer(c.train)  # the optimizer state's structure: the checkpoint holds it beside the adapters
  abstract = jax.eval_shape(loop.initial_state_fn(pretrained.config, lora_cfg, tx, c.seed, c.train.objective))
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  ckpt = Checkpointer(files.join(workdir, "checkpoints"), max_to_keep=c.train.max_to_keep, async_save=False)
  try:
    state, _ = ckpt.restore(step, abstract_like(abstract, jax.tree.map(lambda _: here, abstract)))
  except Exception as e:  # orbax, tensorstore and json report damage (or another LoRA shape) in many types
    raise UserError(
      f"checkpoint {workdir}/checkpoints/{step} does not restore ({_short(e)}): it is damaged, or the run's "
      "config.json no longer describes it"
    ) from None
  finally:
    ckpt.close()
  lora_params = jax.device_get(state["lora"]["lora"])
  split = experiment.build_data(c, pretrained.tokenizer).split

  def write(to):
    write_adapter(lora_params, lora_cfg, pretrained, split, step, c.train.objective, to)

  with WorkdirLock(workdir, "export") if _inside(out, workdir) else contextlib.nullcontext():
    if files.isdir(out) and not overwrite:
      if _same_adapter(write, out):
        return step, out, False
      raise UserError(f"--out {out} already holds a different directory: pass --overwrite to replace it, or another --out")
    write(out)
  return step, out, True


def _same_adapter(write, out: str) -> bool:
  """Whether `out` holds exactly the files `write` would write (built in a scratch directory to compare)."""
  with tempfile.TemporaryDirectory() as scratch:
    fresh = os.path.join(scratch, "adapter")
    write(fresh)
    names = sorted(os.listdir(fresh))
    if sorted(files.listdir(out)) != names:
      return False
    return all(files.read_bytes(files.join(out, n)) == open(os.path.join(fresh, n), "rb").read() for n in names)


def _inside(path: str, workdir: str) -> bool:
  # the lock is local-only (workdir.py); a remote run has one writer by its launcher
  return not (files.is_remote(workdir) or files.is_remote(path)) and os.path.commonpath([path, workdir]) == workdir
