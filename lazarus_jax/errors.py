"""User-facing errors: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

import errno
import sys
import threading
import traceback


class UserError(Exception):
  """A mistake in the user's input (config, path, data). Printed as one line; exit code 2."""


def print_error(text: str) -> None:
  """Writes `error: <text>` to stderr as one line, in one write."""
  sys.stderr.write(f"error: {' '.join(text.split())}\n")
  sys.stderr.flush()


class LineAtomicStream:
  """A text stream that passes on whole lines only, one write each; each thread's partial line waits for its end.

  A failing disk makes orbax's, tensorstore's and tensorboardX's background threads report at the same moment as
  the run. The interpreter writes a traceback in fragments (indent, source text, newline), so without this their
  fragments land mid-line in each other and in the run's own `error:` line. `flush()` passes a partial line on
  (a progress bar's `\\r` redraw).
  """

  def __init__(self, stream):
    self._stream = stream
    self._lock = threading.Lock()
    self._partial = threading.local()

  def write(self, text: str) -> int:
    pending = getattr(self._partial, "text", "") + text
    lines, newline, rest = pending.rpartition("\n")
    self._partial.text = rest
    if newline:
      with self._lock:
        self._stream.write(lines + newline)
        self._stream.flush()
    return len(text)

  def flush(self) -> None:
    rest, self._partial.text = getattr(self._partial, "text", ""), ""
    with self._lock:
      if rest:
        self._stream.write(rest)
      self._stream.flush()

  def __getattr__(self, name):  # fileno, isatty, encoding, ...: the real stream's
    return getattr(self._stream, name)


def _write_traceback(exc_type, exc, tb, header: str = "") -> None:
  """An uncaught exception's report, formatted first and written whole (the default hooks write fragments)."""
  try:
    sys.stderr.write(header + "".join(traceback.format_exception(exc_type, exc, tb)))
    sys.stderr.flush()
  except (OSError, ValueError):  # stderr closed or failing: nothing left to tell
    pass


def _thread_excepthook(args) -> None:
  if args.exc_type is SystemExit:
    return
  name = args.thread.name if args.thread is not None else threading.get_ident()
  _write_traceback(args.exc_type, args.exc_value, args.exc_traceback, f"Exception in thread {name}:\n")


def _unraisable_hook(args) -> None:
  # An exception Python could only ignore (a coroutine orbax abandoned after a failed read, a __del__): one line,
  # not a traceback among the run's own lines. The run reports what it means itself.
  text = " ".join(str(args.exc_value).split())
  try:
    where = repr(args.object)[:60] if args.object is not None else "a finalizer"
    sys.stderr.write(f"note: ignored {args.exc_type.__name__} in {where}{': ' + text[:120] if text else ''}\n")
  except (OSError, ValueError):
    pass


def tidy_stderr() -> None:
  """For a CLI process (`python -m`, not a library call): stderr passes whole lines, uncaught exceptions print
  whole tracebacks, and exceptions Python ignores print one line."""
  for stream in (sys.stdout, sys.stderr):  # a C / ASCII locale must not turn a printed token into a traceback
    if hasattr(stream, "reconfigure") and stream.errors == "strict":
      stream.reconfigure(errors="backslashreplace")
  if not isinstance(sys.stderr, LineAtomicStream):
    sys.stderr = LineAtomicStream(sys.stderr)
  sys.excepthook = _write_traceback
  threading.excepthook = _thread_excepthook
  sys.unraisablehook = _unraisable_hook


# A full disk, a read-only or unwritable directory: the user's to fix, and what a training run has checkpointed
# up to here is complete on disk.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def os_error_line(e: OSError, fallback_path: str | None = None, resumable: bool = False) -> str:
  """One line for a filesystem failure that escaped the checks (they run first): what, where, how to fix."""
  where = e.filename if e.filename is not None else (fallback_path or "the outputs")
  if e.filename2 is not None:
    where = f"{where} -> {e.filename2}"
  reason = e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)
  if e.errno in DISK_ERRNOS:
    fix = "free disk space or fix the directory's permissions" + (
      ", then continue with --config.resume=True" if resumable else ", then run again"
    )
    return f"cannot write {where}: {reason}: {fix}"
  return f"cannot use {where}: {reason}: check the path (a directory that exists, names the filesystem accepts)"


def unicode_error_line(e: UnicodeError) -> str:
  what = "decode" if isinstance(e, UnicodeDecodeError) else "encode"
  return f"cannot {what} text as {e.encoding} ({e.reason} at position {e.start}): save text files as UTF-8, or run with PYTHONUTF8=1"
