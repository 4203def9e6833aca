"""Orbax checkpoints of what trains: adapters, optimizer state, step, data position and RNG.

Restores into an abstract target that carries the current shardings, so a run saved on 8 devices restores
on 2. Orbax writes each step into a temporary directory and renames it when complete, so a partially written
checkpoint is never listed or loaded.
"""

from __future__ import annotations

import logging

import jax
import orbax.checkpoint as ocp

from lazarus_jax import files
from lazarus_jax.errors import UserError


class CheckpointSaveError(UserError):
  """A checkpoint could not be written (disk full, read-only, ...). Earlier checkpoints are untouched."""


class _NoTracebacks(logging.Filter):
  # Orbax's and asyncio's background threads log a failed write with full tracebacks; the run reports the
  # failure itself in one line (CheckpointSaveError), so keep their messages but drop the tracebacks.
  def filter(self, record):
    if record.exc_info and ("orbax" in record.pathname or "asyncio" in record.pathname):
      record.exc_info, record.exc_text = None, None
    return True


_FILTER = _NoTracebacks()


class Checkpointer:
  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    for name in ("absl", "asyncio"):
      logging.getLogger(name).addFilter(_FILTER)  # a set: adding twice is harmless
    self._pending = None  # the step whose (async) save may still be running
    self._failed = False
    self.directory = files.abspath(directory)  # a gs:// directory goes to orbax as it is
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    self.wait()  # an earlier async save that failed is reported as itself, not as this one
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    try:
      saved = self.manager.save(step, args=args, force=force)
    except Exception as e:
      self._fail(step, e)
    self._pending = step if saved else self._pending
    return saved

  def finalized_steps(self) -> list[int]:
    """Steps whose checkpoint is complete on disk (orbax renames a step's directory to `<step>` last)."""
    try:
      return sorted(int(n) for n in files.listdir(self.directory) if n.isdigit())
    except OSError:
      return []

  def _fail(self, step, e: Exception):
    self._failed = True
    done = self.finalized_steps()
    reason = " ".join(str(e).split())
    reason = reason if len(reason) < 200 else reason[:200] + "..."
    last = (
      f"the last complete checkpoint is step {done[-1]}; continue from it with --config.resume=True"
      if done
      else "no complete checkpoint exists yet"
    )
    raise CheckpointSaveError(
      f"could not save checkpoint step {step} to {self.directory} ({type(e).__name__}: "
      f"{reason}): free disk space or fix the directory's permissions; {last}"
    ) from None

  def restore(self, step: int, abstract_state):
    """Restores `step` into `abstract_state` (a tree of ShapeDtypeStructs with shardings); raises what orbax raises."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    out = self.manager.restore(step, args=args)
    saved_step = out.meta.get("step") if isinstance(out.meta, dict) else None
    if saved_step != step:
      raise ValueError(f"its metadata names step {saved_step}")
    return out.state, out.meta

  def restore_latest(self, abstract_state, say=print):
    """The newest checkpoint that restores, as (state, meta), or None when there is none.

    A torn or corrupt newest checkpoint (a disk that lost part of it, a copy cut short) is moved aside to
    `corrupt-<step>` and the previous complete one restored, said in one line: the run loses the steps since
    then, not itself. When no checkpoint restores, one UserError names the newest one's error and moves nothing
    (it may be this run's config that does not fit them, e.g. another LoRA rank)."""
    failures = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, abstract_state)
      except Exception as e:  # orbax, tensorstore and json report damage in many types
        failures.append((step, e))
        continue
      for bad, e in failures:
        aside = files.join(self.directory, f"corrupt-{bad}")
        files.rename(files.join(self.directory, str(bad)), aside)
        say(
          f"checkpoint step {bad} is unreadable ({_short(e)}): moved it to {aside} and resumed from step {step}, "
          "the previous complete checkpoint"
        )
      if failures:
        self.manager.reload()
      return state, meta
    if failures:
      step, e = failures[0]
      others = f" nor do the {len(failures) - 1} before it" if len(failures) > 1 else ""
      raise UserError(
        f"checkpoint {self.directory}/{step} is unreadable ({_short(e)}){others}, and no earlier "
        "checkpoint restores: it is damaged, or was written with another config (LoRA rank, targets, "
        "layers); use the config it was trained with, or start over with --config.overwrite=True"
      )
    return None

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      self._fail(self._pending, e)

  def close(self):
    """Waits for the last save (raising if it failed); after a reported failure, closes quietly."""
    try:
      if not self._failed:
        self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:
        if not self._failed:
          raise


def _short(e: Exception) -> str:
  text = " ".join(str(e).split(". See full TensorStore details")[0].split()) or type(e).__name__
  return f"{type(e).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


def abstract_like(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
