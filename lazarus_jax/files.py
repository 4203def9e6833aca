"""Writing outputs: whole or not at all, UTF-8 whatever the locale, with the user's umask.

Every file a run writes goes through here (or through orbax / tensorboardX, which keep the umask too), so that
- a kill or a full disk mid-write never leaves a truncated file under the final name (write beside it, rename);
- the bytes do not depend on the locale (`LC_ALL=C` once made `open(path, "w")` ASCII-only);
- permissions follow the umask like any other program's (tempfile.mkstemp creates 0600 files: results.json was
  unreadable to the group that shares a run directory).

Workdirs may also be remote (`gs://bucket/run`, or any other `etils.epath` scheme: "://" in the name). There the
same helpers go through `epath`: a file is written locally and uploaded as one object (an object write is
all-or-nothing on GCS and S3, which gives the same guarantee as the local rename), directories are prefixes,
and nothing is locked (one writer per workdir is process 0 of one job; see workdir.py).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import secrets
import shutil
import sys
import tempfile

from lazarus_jax.errors import UserError

# ---- paths: local (os) or remote (etils.epath) ----------------------------------------------------------


def is_remote(path) -> bool:
  """A URL-style path (gs://..., s3://...): handled through etils.epath, never through os."""
  return "://" in str(path)


# The library epath's fsspec backend needs per scheme (not dependencies: `pip install "lazarus_jax[gcs]"`).
_FSSPEC_LIBRARY = {
  "gs": ("gcsfs", 'pip install "lazarus_jax[gcs]"'),
  "s3": ("s3fs", "pip install s3fs"),
  "az": ("adlfs", "pip install adlfs"),
}


def epath_of(path):
  """`path` as an etils.epath.Path; an unknown scheme or a missing filesystem library is one UserError."""
  from etils import epath
  from etils.epath import backend

  try:
    p = epath.Path(path)
    chosen = p._backend  # resolves the scheme's backend now, so an unknown scheme fails here, once
  except (KeyError, NotImplementedError):
    scheme = str(path).split("://", 1)[0]
    raise UserError(
      f"{path}: no filesystem is registered for {scheme}:// (etils.epath knows gs://, s3://, az://, "
      "hf://): use one of those or a local directory"
    ) from None
  missing = _fsspec_missing(p._uri_scheme) if chosen is backend.fsspec_backend else None
  if missing:
    raise UserError(f"{path}: {missing}")
  return p


@functools.cache
def _fsspec_missing(scheme: str) -> str | None:
  """What is missing for `scheme`, or None. fsspec imports a scheme's library at the first file operation (an
  ImportError deep in a run): asked at the first path instead, the workdir checks, before anything is written."""
  import fsspec

  try:
    fsspec.get_filesystem_class(scheme)
  except ImportError as e:
    library, install = _FSSPEC_LIBRARY.get(scheme, (f"fsspec's {scheme} filesystem", f"({e})"))
    return f"{scheme}:// paths need {library}: {install}"
  return None


def abspath(path: str) -> str:
  """The absolute form of a local path; a remote one as given, without a trailing slash."""
  return str(path).rstrip("/") if is_remote(path) else os.path.abspath(path)


def join(path: str, *names: str) -> str:
  return "/".join([str(path).rstrip("/"), *names]) if is_remote(path) else os.path.join(path, *names)


def exists(path: str) -> bool:
  return epath_of(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return epath_of(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  if is_remote(path):
    p = epath_of(path)
    return p.exists() and not p.is_dir()
  return os.path.isfile(path)


def listdir(path: str) -> list[str]:
  """Names in a directory (FileNotFoundError when it does not exist, as os.listdir)."""
  if not is_remote(path):
    return os.listdir(path)
  p = epath_of(path)
  if not p.is_dir():
    raise FileNotFoundError(errno.ENOENT, "no such directory", str(path))
  return [c.name for c in p.iterdir()]


def makedirs(path: str) -> None:
  if is_remote(path):
    epath_of(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def remove_tree(path: str) -> None:
  """Deletes a file or a directory tree."""
  if is_remote(path):
    p = epath_of(path)
    p.rmtree() if p.is_dir() else p.unlink()
  elif os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  else:
    os.remove(path)


def rename(src: str, dst: str) -> None:
  """Renames a file or directory (remote: copy and delete, as object stores do)."""
  if is_remote(src):
    epath_of(src).rename(epath_of(dst))
  else:
    os.rename(src, dst)


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    p = epath_of(path)
    if p.is_dir():
      raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    return p.read_bytes()
  with open(path, "rb") as f:
    return f.read()


def _upload(local: str, path: str) -> None:
  with open(local, "rb") as f:
    epath_of(path).write_bytes(f.read())


# ---- writing -----------------------------------------------------------------------------------------


def _tmp_name(path: str, suffix: str = "") -> str:
  directory, name = os.path.split(os.path.abspath(path))
  return os.path.join(directory, f".{name}.tmp-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; on success it is renamed onto `path`, on failure removed.

  The temporary file is created here (O_EXCL, mode 0666 less the umask) so that writers that reopen it by name
  (matplotlib, safetensors) keep those permissions. For a remote `path` the temporary file is local and is
  uploaded as one object."""
  if is_remote(path):
    with tempfile.TemporaryDirectory(prefix="lazarus_jax-") as d:
      tmp = os.path.join(d, path.rstrip("/").rsplit("/", 1)[-1])
      yield tmp
      _upload(tmp, path)
    return
  tmp = _tmp_name(path, os.path.splitext(path)[1])
  os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """`text` to `path` as UTF-8, atomically."""
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(path: str, doc, **dump_kwargs) -> None:
  """`doc` as JSON (UTF-8, non-ASCII kept as is) to `path`, atomically."""
  dump_kwargs.setdefault("indent", 1)
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    json.dump(doc, f, ensure_ascii=False, **dump_kwargs)


def replace_dir(build, path: str) -> None:
  """Builds a directory with `build(tmp_dir)` beside `path`, then puts it at `path`.

  A reader sees the old directory, no directory for the instant between two renames, or the new one: never a
  half-written one (a kill mid-build leaves only a `.name.tmp-*` directory beside it, which the next export of
  the same run removes).

  Remote (object stores have no directory rename): built locally, then uploaded file by file into `path`, the
  files of the old directory that the new one lacks deleted, and `adapter_config.json` uploaded last, so a reader
  that waits for the config (as `load_adapter` does) finds the weights it names."""
  if is_remote(path):
    _replace_remote_dir(build, path)
    return
  parent, name = os.path.split(os.path.abspath(path))
  for stale in os.listdir(parent):  # a build or swap that a kill interrupted
    if stale.startswith(f".{name}.tmp-") or stale.startswith(f".{name}.old-"):
      shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
  tmp = _tmp_name(path)
  os.mkdir(tmp)
  try:
    build(tmp)
    if os.path.isdir(path):
      old = os.path.join(parent, f".{name}.old-{secrets.token_hex(4)}")
      os.rename(path, old)
      os.rename(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _replace_remote_dir(build, path: str, last: str = "adapter_config.json") -> None:
  with tempfile.TemporaryDirectory(prefix="lazarus_jax-") as tmp:
    build(tmp)
    names = sorted(os.listdir(tmp), key=lambda n: n == last)
    makedirs(path)
    for n in names:
      _upload(os.path.join(tmp, n), join(path, n))
    for n in set(listdir(path)) - set(names):
      remove_tree(join(path, n))


def read_json(path: str, what: str, fix: str):
  """A JSON file's content; an unreadable, non-UTF-8 or malformed file is one UserError naming `what` and `fix`."""
  try:
    return json.loads(read_bytes(path).decode("utf-8"))
  except UnicodeDecodeError as e:
    reason = f"not UTF-8 text: byte {e.object[e.start : e.start + 1]!r} at offset {e.start}"
  except json.JSONDecodeError as e:
    reason = f"malformed JSON: {e.msg} at line {e.lineno}"
  except IsADirectoryError:
    reason = "a directory, not a file"
  except OSError as e:
    reason = e.strerror or type(e).__name__
  raise UserError(f"{what} {path} is unreadable ({reason}): {fix}")


def check_output_dir(path: str, flag: str) -> None:
  """Refuses, before any work, an output directory that cannot be created or written: the nearest existing
  ancestor must be a writable directory, and every name must fit the filesystem. A remote path's scheme must have
  a filesystem (permissions there show at the first write)."""
  if is_remote(path):
    epath_of(path)
    return
  path = os.path.abspath(path)
  try:
    path.encode("utf-8"), os.fsencode(path)
  except UnicodeEncodeError:  # LC_ALL=C: undecodable bytes (tensorstore cannot open them), or text the filesystem encoding lacks
    raise UserError(
      f"{flag} {ascii(path)[1:-1]} is not valid text in this locale ({sys.getfilesystemencoding()}): "
      "run with a UTF-8 locale (LC_ALL=C.UTF-8) or PYTHONUTF8=1, or use an ASCII path"
    ) from None
  for part in path.split(os.sep):
    if len(part.encode("utf-8", "surrogateescape")) > 255:
      raise UserError(
        f"{flag}: the name {part[:20]}... in it is {len(part.encode('utf-8', 'surrogateescape'))} "
        "bytes long, more than the filesystem's 255 bytes: use a shorter name"
      )
  probe = path
  while not os.path.lexists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    what = "is a file" if probe == path else f"is under {probe}, which is a file"
    raise UserError(f"{flag} {path} {what}, not a directory: pass a directory for the outputs")
  if not os.access(probe, os.W_OK | os.X_OK) or _read_only_fs(probe):
    raise UserError(f"{flag} {path}: {probe} is not writable: choose a directory you can write, or fix its permissions")


def _read_only_fs(path: str) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


def describe_os_error(e: OSError) -> str:
  """'<file>: <reason>' for an OSError, naming both files of a rename."""
  name = e.filename if e.filename is not None else ""
  if e.filename2 is not None:
    name = f"{name} -> {e.filename2}"
  reason = e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)
  return f"{name}: {reason}" if name else reason


def read_text(path: str, what: str) -> str:
  """A text file's content as UTF-8 (a byte-order mark is dropped); other encodings are one UserError naming the
  file and the first offending byte, whatever the locale."""
  try:
    data = read_bytes(path)
  except IsADirectoryError:
    raise UserError(f"{what} {path} is a directory, not a file") from None
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise UserError(
      f"{what} {path} is not UTF-8 text (byte {data[e.start : e.start + 1]!r} at line {line}): save it as UTF-8"
    ) from None
