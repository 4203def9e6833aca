"""Orbax checkpoints of what trains: adapters, optimizer state, step, data position and RNG.

Restores into an abstract target that carries the current shardings, so a run saved on 8 devices restores
on 2. Orbax writes each step into a temporary directory and renames it when complete, so a partially written
checkpoint is never listed or loaded.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from lazarus_jax.errors import UserError


class Checkpointer:
  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state):
    """Restores `step` into `abstract_state` (a tree of ShapeDtypeStructs with shardings)."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    try:
      out = self.manager.restore(step, args=args)
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"checkpoint {self.directory}/{step} does not match this run's adapters ({e}); "
                      "use a fresh --workdir or the config it was trained with") from None
    return out.state, out.meta

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
