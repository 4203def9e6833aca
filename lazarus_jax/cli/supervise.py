"""A supervising parent for a distributed train run: a peer's death as one line, not JAX's fatal block.

When one process of a multi-process job dies without notice (SIGKILL, a lost host), JAX's coordination service
ends the others with a `F... Terminating process because the JAX distributed service detected fatal errors` log
line, more lines of status and a C++ stack trace, often after a Python traceback from the collective that lost
its peer (`Gloo ... failed: ... Connection reset by peer`). JAX 0.10 offers no hook that runs before that (see
docs/notes/issue-16-session7.md, "Item 5"), so the process the launcher started stays as a small supervisor
with the same pid: it forks the worker, which runs the command, and passes its stderr through a filter that puts
one `error:` line in place of that block. Everything else is unchanged: stdout is the worker's own, every other
stderr line is copied through as it comes, a SIGTERM / SIGINT / SIGHUP / ... to the pid reaches the worker once
(its own process group, so a terminal's Ctrl-C is not delivered twice), a SIGKILL of the pid takes the worker
with it (PR_SET_PDEATHSIG), and the exit status is the worker's (a signal's death as the shell reports it,
128 + n). Linux only; off with LAZARUS_JAX_SUPERVISE=0.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time

FATAL = b"Terminating process because the JAX distributed service detected fatal errors"
TRACEBACK = b"Traceback (most recent call last):"
# The exception of a collective or RPC whose peer went away: dropped with the fatal block that follows it.
PEER_LOST = re.compile(rb"Gloo .*failed|Connection (reset|closed) by peer|Socket closed|heartbeat timeout")
_CONTINUES = (b" ", b"\t", TRACEBACK, b"During handling of the above exception", b"The above exception was")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)
PR_SET_PDEATHSIG = 1


def peer_died_line(block: bytes) -> str:
  """The one line for JAX's fatal block (the F line and the status lines after it)."""
  text = block.decode("utf-8", "replace")
  # the service's two ways to say it, depending on who notices first: the shutdown barrier or the error poll
  m = re.search(r"Task (\d+) heartbeat timeout", text) or re.search(r"stopped sending heartbeats\):\s*((?:\d+[,\s]*)+)", text)
  if m:
    why = "task " + ", ".join(re.findall(r"\d+", m.group(1))) + " missed its heartbeats"
  elif "Failed to send RPC to coordination service" in text:  # what a task sees when process 0 is gone
    why = "the coordination service of process 0 is unreachable"
  else:
    m = re.search(r"absl::Status: (.+?)(\.\s|\n|$)", text)
    why = " ".join(m.group(1).split())[:200] if m else "fatal error"
  return (
    f"error: another process of this job died (JAX distributed service: {why}); "
    "resume from the last complete checkpoint with --config.resume=True\n"
  )


class StderrFilter:
  """Bytes in, bytes out: JAX's fatal block (and a lost-peer traceback just before it) becomes one line.

  Whole lines are matched; a partial line is passed on at once (a progress bar's redraw) unless it may be the
  start of a traceback or of an absl `F` line. A traceback is held until its exception line; one whose exception
  is a lost peer is held until the next line (dropped if that is the fatal block). From the fatal line on the
  process is aborting: everything after it is dropped."""

  def __init__(self):
    self.partial = b""  # the current line so far
    self.sent = 0  # how much of it was passed on already
    self.held: list[bytes] = []  # a traceback
    self.held_open = False  # its exception line not seen yet
    self.fatal: list[bytes] | None = None  # the fatal block's lines, once seen
    self.reported = False

  def feed(self, data: bytes) -> bytes:
    if self.reported:
      return b""
    out = []
    self.partial += data
    *lines, self.partial = self.partial.split(b"\n")
    for line in lines:
      sent, self.sent = self.sent, 0
      out.append(self._line(line, sent))
      if self.reported:
        self.partial = b""
        return b"".join(out)
    if self.partial and self.fatal is None and not self.held and (self.sent or not _may_start_a_block(self.partial)):
      out.append(self.partial[self.sent :])
      self.sent = len(self.partial)
    return b"".join(out)

  def close(self) -> bytes:
    """At the worker's end: what is still held (or the one line, when the fatal block was seen)."""
    out = b""
    if self.partial and not self.reported:
      sent, self.sent = self.sent, 0
      out = self._line(self.partial, sent, newline=b"")
      self.partial = b""
    if self.fatal is not None and not self.reported:
      out += self._report()
    return out + self._release()

  def _line(self, line: bytes, sent: int, newline: bytes = b"\n") -> bytes:
    if self.fatal is not None:  # the status lines of the fatal block, up to the stack trace
      if line.startswith(b"*** Check failure stack trace"):
        return self._report()
      self.fatal.append(line)
      return b""
    if FATAL in line:
      self.fatal = [line]
      if self.held and not self.held_open and PEER_LOST.search(self.held[-1]):
        self.held = []  # the collective that lost the peer: part of the same story
      return self._release() + (b"\n" if sent else b"")
    if sent:  # its start went out already: not a block's first line
      return self._release() + line[sent:] + newline
    if self.held_open:
      self.held.append(line + newline)
      if not line.startswith(_CONTINUES) and line.strip():
        self.held_open = False  # the exception line
        if not PEER_LOST.search(line):
          return self._release()
      return b""
    out = self._release()
    if line.startswith(TRACEBACK):
      self.held, self.held_open = [line + newline], True
      return out
    return out + line + newline

  def _release(self) -> bytes:
    out, self.held, self.held_open = b"".join(self.held), [], False
    return out

  def _report(self) -> bytes:
    self.reported = True
    return self._release() + peer_died_line(b"\n".join(self.fatal or [])).encode()


def _may_start_a_block(partial: bytes) -> bool:
  if TRACEBACK.startswith(partial[: len(TRACEBACK)]):
    return True
  return re.fullmatch(rb"F\d{0,4}( .*)?", partial, re.S) is not None


def wanted(environ=os.environ) -> bool:
  """Supervise here: Linux with fork, not turned off, and JAX's backends not started (forking then is unsafe)."""
  if environ.get("LAZARUS_JAX_SUPERVISE", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    from jax._src import xla_bridge

    return not xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return False


def split_off_worker() -> None:
  """Forks: returns in the worker; in this process supervises it and exits with its status (never returns)."""
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  parent = os.getpid()
  read_fd, write_fd = os.pipe()
  old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED + (signal.SIGTSTP,))
  pid = os.fork()
  if pid == 0:
    try:
      _become_worker(parent, read_fd, write_fd)
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return
  os.close(write_fd)
  try:
    os.setpgid(pid, pid)  # also done by the worker; whichever runs first
  except OSError:
    pass
  for sig in FORWARDED:
    signal.signal(sig, lambda signum, frame: _send(pid, signum))
  signal.signal(signal.SIGTSTP, lambda signum, frame: _stop(pid))
  signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
  os._exit(_supervise(pid, read_fd))


def _become_worker(parent: int, read_fd: int, write_fd: int) -> None:
  import ctypes

  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  if os.getppid() != parent:  # the supervisor died before prctl took effect
    os._exit(128 + signal.SIGKILL)
  try:
    os.setpgid(0, 0)
  except OSError:
    pass
  for sig in (signal.SIGTTOU, signal.SIGTTIN):  # a background group may still use the terminal
    signal.signal(sig, signal.SIG_IGN)
  os.dup2(write_fd, 2)
  os.close(write_fd)
  os.close(read_fd)


def _send(pid: int, signum: int) -> None:
  try:
    os.kill(pid, signum)
  except ProcessLookupError:
    pass


def _stop(pid: int) -> None:
  """Ctrl-Z: the worker stops with this process (SIGCONT, from `fg` or `bg`, is forwarded)."""
  _send(pid, signal.SIGTSTP)
  os.kill(os.getpid(), signal.SIGSTOP)


def _supervise(pid: int, read_fd: int) -> int:
  filt = StderrFilter()
  copy = filt.feed
  status, drain_until = None, None
  while True:
    ready, _, _ = select.select([read_fd], [], [], 0.2)
    if ready:
      data = os.read(read_fd, 1 << 16)
      if not data:
        break
      try:
        _write(copy(data))
      except Exception:  # a bug in the filter must not lose the worker's output: copy the rest as it is
        held, copy, filt = b"".join(filt.held), bytes, StderrFilter()
        _write(held + data)
    elif status is None:
      done, st = os.waitpid(pid, os.WNOHANG)
      if done:
        status, drain_until = st, time.monotonic() + 1.0
    elif time.monotonic() > drain_until:  # the worker is gone; a process it started still holds the pipe
      break
  _write(filt.close())
  if status is None:
    _, status = os.waitpid(pid, 0)
  code = os.waitstatus_to_exitcode(status)
  code = 128 - code if code < 0 else code
  return code or (1 if filt.reported else 0)


def _write(data: bytes) -> None:
  while data:
    try:
      data = data[os.write(2, data) :]
    except OSError:  # stderr is gone: keep reading, so the worker never blocks on a full pipe
      return
