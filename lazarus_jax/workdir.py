"""The run directory: which files a run of ours writes there, one writer at a time, and what overwrite may delete.

- `RUN_OUTPUTS` names everything train and evaluate write into a workdir (a sweep has no overwrite).
  `--config.overwrite=True` deletes those names and nothing else, and refuses a directory that holds anything
  else (a user's file is never deleted because it sits in the wrong directory).
- `WorkdirLock` is an advisory `fcntl.flock` on `<workdir>/.lock`. The kernel drops it when the holder exits, however
  it exits (SIGKILL, OOM, power loss of a local disk), so a crash never leaves a stale lock behind. A second
  writer is refused in one line naming the holder. The lock is per process and re-entrant: train holds it and
  calls evaluate, the sweep holds its own and each arm's.
  Remote paths (gs://...) cannot be locked this way: there one writer per workdir is the launcher's job (one job
  per workdir; within it only process 0 writes single-writer files).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import sys
import time

from lazarus_jax import files
from lazarus_jax.errors import UserError

LOCK_FILE = ".lock"
EXPORTED = re.compile(r"adapter-step-\d+")  # `python -m lazarus_jax.export`'s default outputs: a run's too
RUN_OUTPUTS = ("config.json", "metrics.jsonl", "tb", "checkpoints", "adapter", "eval", "train_summary.json", "training_table.md")


def _ours(name: str, outputs) -> bool:
  # A run's own names, the lock, and what an interrupted atomic write leaves beside them (files.py's `.x.tmp-*`,
  # `.x.old-*`, and the older `x.tmp` / `.tmp-*` names).
  def named(n):
    return n in outputs or (outputs is RUN_OUTPUTS and EXPORTED.fullmatch(n) is not None)

  if named(name) or name == LOCK_FILE:
    return True
  base = name.lstrip(".")
  for sep in (".tmp", ".old-"):
    if sep in base and named(base.split(sep)[0]):
      return True
  return name.startswith(".tmp-")


def foreign_entries(workdir: str, outputs=RUN_OUTPUTS) -> list[str]:
  """Entries of `workdir` that no run of ours writes."""
  try:
    return sorted(n for n in files.listdir(workdir) if not _ours(n, outputs))
  except FileNotFoundError:
    return []


def check_can_clean(workdir: str, outputs=RUN_OUTPUTS) -> None:
  """Refuses to overwrite a directory that holds files a run of ours did not write."""
  foreign = foreign_entries(workdir, outputs)
  if foreign:
    shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
    raise UserError(
      f"--config.overwrite=True would replace the run in {workdir}, but it also holds files that no "
      f"run writes ({shown}): move them away, or use another --workdir"
    )


def clean(workdir: str, outputs=RUN_OUTPUTS) -> None:
  """Deletes the outputs of an earlier run in `workdir` (after `check_can_clean`, under the lock)."""
  for name in files.listdir(workdir):
    if name == LOCK_FILE or not _ours(name, outputs):
      continue
    files.remove_tree(files.join(workdir, name))


is_remote = files.is_remote


_held: dict = {}  # real path -> [fd, depth]: the locks this process holds


class WorkdirLock:
  """`with WorkdirLock(workdir, "train"):` -- one writer per workdir (see the module docstring)."""

  def __init__(self, workdir: str, what: str):
    self.workdir, self.what, self.key = workdir, what, None

  def __enter__(self):
    if is_remote(self.workdir):
      return self
    import fcntl

    os.makedirs(self.workdir, exist_ok=True)
    key = os.path.realpath(self.workdir)
    if key in _held:
      _held[key][1] += 1
      self.key = key
      return self
    path = os.path.join(key, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise _in_use(self.workdir, path) from None
    os.ftruncate(fd, 0)
    os.write(
      fd,
      json.dumps(
        {
          "pid": os.getpid(),
          "host": socket.gethostname(),
          "what": self.what,
          "since": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv[:1] + sys.argv[1:6]),
        }
      ).encode()
      + b"\n",
    )
    _held[key] = [fd, 1]
    self.key = key
    return self

  def __exit__(self, *exc):
    if self.key is None:
      return
    entry = _held[self.key]
    entry[1] -= 1
    if entry[1] == 0:
      del _held[self.key]
      with contextlib.suppress(OSError):
        os.close(entry[0])  # closing drops the flock; the file stays (unlinking it would race a new holder)
    self.key = None


def check_not_in_use(workdir: str) -> None:
  """Refuses early (before loading a model) a workdir another process holds; takes, writes and creates nothing.
  The lock itself is taken later, just before the first write (WorkdirLock)."""
  path = os.path.join(workdir, LOCK_FILE)
  if is_remote(workdir) or os.path.realpath(workdir) in _held or not os.path.exists(path):
    return
  import fcntl

  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while any process holds it exclusively
  except OSError as e:
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise
    raise _in_use(workdir, path) from None
  finally:
    os.close(fd)


def _in_use(workdir: str, lock_path: str) -> UserError:
  return UserError(f"{workdir} is in use by another run ({_holder(lock_path)}): wait for it to finish, or use another --workdir")


def _holder(lock_path: str) -> str:
  try:
    with open(lock_path, encoding="utf-8") as f:
      h = json.loads(f.read() or "{}")
    return f"{h.get('what', 'a run')}, pid {h.get('pid')} on {h.get('host')}, since {h.get('since')}"
  except (OSError, ValueError):
    return "a process that holds its lock"
