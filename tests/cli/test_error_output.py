"""stderr under the CLIs: whole lines only, whole tracebacks, and the run's `error:` line never split.

A failing disk makes orbax's, tensorstore's and tensorboardX's threads report at the same moment as the run; the
interpreter writes a traceback in fragments, which once split the run's own error line mid-line (a CI failure of
tests/test_disk.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import threading

from lazarus_jax.errors import LineAtomicStream

import cli_run


class Recorder:
  """The real stream underneath: every write call as the file receives it."""

  def __init__(self):
    self.calls: list[str] = []
    self.flushes = 0

  def write(self, text):
    self.calls.append(text)
    return len(text)

  def flush(self):
    self.flushes += 1

  def isatty(self):
    return False


def test_a_partial_line_from_another_thread_waits_for_its_end():
  rec = Recorder()
  out = LineAtomicStream(rec)
  started, go_on = threading.Event(), threading.Event()

  def background():  # as the interpreter prints a traceback's source line: text, then later its newline
    out.write("    self._check_closed()")
    started.set()
    go_on.wait(10)
    out.write("\n")

  t = threading.Thread(target=background)
  t.start()
  started.wait(10)
  out.write("error: could not save checkpoint step 8\n")  # the main thread's line, in the middle
  go_on.set()
  t.join(10)
  assert rec.calls == ["error: could not save checkpoint step 8\n", "    self._check_closed()\n"]


def test_flush_passes_a_partial_line_on_and_attributes_are_the_streams():
  rec = Recorder()
  out = LineAtomicStream(rec)
  out.write("\rtrain:  30%|###")  # a progress bar redraw: no newline, then flush
  assert rec.calls == []
  out.flush()
  assert rec.calls == ["\rtrain:  30%|###"] and rec.flushes == 1
  out.write("a\nb")  # whole lines pass at once; the rest waits
  assert rec.calls[-1] == "a\n"
  assert out.isatty() is False


_CHILD = textwrap.dedent("""
  import sys, threading
  from lazarus_jax.errors import print_error, tidy_stderr

  class Recorder:
    def __init__(self, real):
      self.real, self.calls = real, []
    def write(self, s):
      self.calls.append(s)
      return self.real.write(s)
    def flush(self):
      self.real.flush()

  rec = sys.stderr = Recorder(sys.stderr)
  tidy_stderr()

  def fails():
    raise OSError(28, "No space left on device")

  t = threading.Thread(target=fails, name="writer")
  t.start(); t.join()
  print_error("could not save  checkpoint\\n step 8")
  sys.__stdout__.write(repr(rec.calls) + "\\n")
  raise ValueError("main thread fails too")
""")


def test_tracebacks_and_the_error_line_are_single_writes():
  proc = subprocess.run(
    [sys.executable, "-c", _CHILD], capture_output=True, text=True, cwd=cli_run.REPO, env=cli_run.env(), timeout=120
  )
  assert proc.returncode == 1, proc.stderr
  calls = ast.literal_eval(proc.stdout.strip().splitlines()[-1])  # the writes before the main thread's traceback
  report = [c for c in calls if "Exception in thread writer" in c]
  assert len(report) == 1, calls
  assert report[0].startswith("Exception in thread writer:\nTraceback (most recent call last):\n"), report
  assert "self._target(*self._args, **self._kwargs)" in report[0], report  # source lines, in the same write
  assert report[0].endswith("OSError: [Errno 28] No space left on device\n"), report
  assert "error: could not save checkpoint step 8\n" in calls, calls  # whitespace folded: one line, one write
  # The main thread's uncaught exception goes through the same hook: whole, after the error line.
  tail = proc.stderr[proc.stderr.index("error: could not save") :]
  assert tail.splitlines()[1] == "Traceback (most recent call last):", tail
  assert tail.rstrip().endswith("ValueError: main thread fails too"), tail


_CLI_CHILD = textwrap.dedent("""
  import sys, threading
  from lazarus_jax.cli.common import run_cli
  from lazarus_jax.errors import UserError

  def main(argv):
    fragment_written, go_on = threading.Event(), threading.Event()
    def background():  # a traceback's source line, its newline still to come
      sys.stderr.write("    self._check_closed()")
      fragment_written.set()
      go_on.wait(10)
      sys.stderr.write("\\n")
    threading.Thread(target=background, daemon=True).start()
    fragment_written.wait(10)
    try:
      raise UserError("the disk is full")
    finally:
      threading.Timer(0.2, go_on.set).start()

  run_cli(main, with_config=False)
""")


def test_the_cli_error_line_starts_its_own_line():
  proc = subprocess.run(
    [sys.executable, "-c", _CLI_CHILD], capture_output=True, text=True, cwd=cli_run.REPO, env=cli_run.env(), timeout=120
  )
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.splitlines()[0] == "error: the disk is full", proc.stderr
