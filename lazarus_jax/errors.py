"""User-facing errors: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

import functools
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


def tidy_stderr() -> None:
  """For a CLI process (`python -m`, not a library call): stderr passes whole lines, and uncaught exceptions print
  whole tracebacks."""
  if not isinstance(sys.stderr, LineAtomicStream):
    sys.stderr = LineAtomicStream(sys.stderr)
  sys.excepthook = _write_traceback
  threading.excepthook = _thread_excepthook


def cli_entry(fn):
  """Wraps a CLI `main`: user errors become one line on stderr and exit status 2."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except UserError as e:
      print_error(str(e))
      sys.exit(2)

  return wrapper
