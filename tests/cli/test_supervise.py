"""cli/supervise.py: the stderr filter on JAX's real fatal text (jax 0.10.2, CPU, gloo), and the supervisor's
process plumbing (fork, signals, exit status, PR_SET_PDEATHSIG) on a small worker without JAX."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lazarus_jax.cli import supervise

import repo

BEFORE = b"""dtypes: param float32, compute float32, activation float32
resumed from /tmp/run/checkpoints at step 4
"""
# Process 0 after process 1's SIGKILL: the collective fails, then the shutdown barrier at exit (abridged frames).
GLOO_TRACEBACK = b"""Traceback (most recent call last):
  File "/work/main/lazarus_jax/training/loop.py", line 487, in train_loop
    rows = jax.device_get(pending)
           ^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/jax/_src/array.py", line 623, in _value
    npy_value, did_copy = self._single_device_array_to_np_array_did_copy()
                          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
jax.errors.JaxRuntimeError: UNKNOWN: Gloo all-to-all failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read error [127.0.0.1]:24200: Connection reset by peer
"""  # noqa: E501
HEARTBEAT_FATAL = b"""F1203 10:29:30.974541   20611 client.h:80] Terminating process because the JAX distributed service detected fatal errors. This most likely indicates that another task died; see the other task logs for more details. Disable Python buffering, i.e. `python -u`, to be sure to see all the previous output. absl::Status: INTERNAL: Failed to disconnect from coordination service with status: INTERNAL: Shutdown barrier has failed.
Barrier result: 'INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout. This indicates that the remote task has failed, got preempted, or crashed unexpectedly. Check the task logs for an earlier error or scheduler events (e.g. preemption, eviction) to debug further. [type.googleapis.com/tensorflow.CoordinationServiceError='']. Barrier Id: Shutdown::16468793428547609370::0, Task: 1 [type.googleapis.com/tensorflow.CoordinationServiceError=''] [type.googleapis.com/tensorflow.BarrierError='\\n\\x1eShutdown::16468793428547609370']

RPC: /xla.coordination.CoordinationService/ShutdownTask [type.googleapis.com/tensorflow.CoordinationServiceError='']Proceeding with agent shutdown anyway. This is usually caused by an earlier error during execution. Check the logs of (a) this task, (b) the leader (usually slice 0 task 0) and (c) the scheduler (e.g. preemption, eviction) for an earlier error to debug further. [type.googleapis.com/tensorflow.CoordinationServiceError='']
*** Check failure stack trace: ***
    @     0x7fc99b040634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
    @     0x7fc99b0405b6  absl::lts_20260107::log_internal::LogMessage::Flush()
    @     0x7fc9971064af  xla::CoordinationServiceAgent::Shutdown()
    @     0x7fc9a2758ba3  PyObject_Vectorcall
"""  # noqa: E501
# The same, when the service's error poll notices first (no traceback before it).
UNHEALTHY_FATAL = b"""F1203 10:37:34.743640   30991 client.h:80] Terminating process because the JAX distributed service detected fatal errors. This most likely indicates that another task died; see the other task logs for more details. Disable Python buffering, i.e. `python -u`, to be sure to see all the previous output. absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) to debug further.

RPC: /xla.coordination.CoordinationService/PollForError [type.googleapis.com/tensorflow.CoordinationServiceError='']
*** Check failure stack trace: ***
    @     0x7f91a3440634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
    @     0x7f91a34405b6  absl::lts_20260107::log_internal::LogMessage::Flush()
"""  # noqa: E501
# Process 1 after process 0's (the coordinator's) SIGKILL: the client's error poll fails at once.
COORDINATOR_FATAL = b"""F1203 10:34:30.152912   26102 client.h:80] Terminating process because the JAX distributed service detected fatal errors. This most likely indicates that another task died; see the other task logs for more details. Disable Python buffering, i.e. `python -u`, to be sure to see all the previous output. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was preempted/died/restarted unexpectedly or this task is experiencing network issues. Check earlier logs from 1) this task, 2) the leader (usually slice 0 task 0), and 3) cluster scheduler to debug further.
Additional GRPC error information from remote target coordination_service while calling /xla.coordination.CoordinationService/PollForError:
:UNKNOWN:Error received from peer  {grpc_message:"Socket closed", grpc_status:14}
*** Check failure stack trace: ***
    @     0x7fc1ce840634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
    @     0x7fc1ca8f0321  tsl::RPCState<>::OnCompleted()
    @     0x7fc1d5ca71f5  (unknown)

"""  # noqa: E501
BUG_TRACEBACK = b"""Traceback (most recent call last):
  File "/work/main/lazarus_jax/training/loop.py", line 10, in train_loop
    raise ValueError("a bug")
ValueError: a bug
"""


def filtered(data: bytes, chunk: int | None = None) -> bytes:
  """`data` through a StderrFilter, `chunk` bytes at a time (all at once when None)."""
  f = supervise.StderrFilter()
  size = chunk or len(data) or 1
  return b"".join(f.feed(data[i : i + size]) for i in range(0, len(data), size)) + f.close()


@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_a_dead_peer_is_one_line_in_place_of_the_traceback_and_the_fatal_block(chunk):
  out = filtered(BEFORE + GLOO_TRACEBACK + HEARTBEAT_FATAL, chunk).decode()
  lines = out.splitlines()
  assert lines[:2] == BEFORE.decode().splitlines()
  assert len(lines) == 3, out
  assert lines[2] == (
    "error: another process of this job died (JAX distributed service: task 1 missed its heartbeats); "
    "resume from the last complete checkpoint with --config.resume=True"
  )


@pytest.mark.parametrize("chunk", [None, 1, 13])
def test_a_dead_peer_seen_by_the_error_poll_is_one_line(chunk):
  out = filtered(BEFORE + UNHEALTHY_FATAL, chunk).decode()
  assert out.splitlines()[:2] == BEFORE.decode().splitlines() and len(out.splitlines()) == 3, out
  assert "(JAX distributed service: task 1 missed its heartbeats)" in out.splitlines()[2]


@pytest.mark.parametrize("chunk", [None, 1, 13])
def test_the_coordinator_gone_is_one_line(chunk):
  out = filtered(BEFORE + COORDINATOR_FATAL, chunk).decode()
  assert out.splitlines()[:2] == BEFORE.decode().splitlines() and len(out.splitlines()) == 3, out
  assert "(JAX distributed service: the coordination service of process 0 is unreachable)" in out.splitlines()[2]


def test_a_fatal_block_cut_short_is_still_reported_at_the_end():
  out = filtered(BEFORE + HEARTBEAT_FATAL.split(b"\n")[0]).decode()  # no newline, no stack trace
  assert out.splitlines()[2].startswith("error: another process of this job died") and len(out.splitlines()) == 3
  f = supervise.StderrFilter()
  assert f.feed(COORDINATOR_FATAL) and f.reported and f.feed(b"Fatal Python error: Aborted\n") == b""


def test_a_traceback_that_is_not_about_the_peer_is_kept_before_the_line():
  out = filtered(BEFORE + BUG_TRACEBACK + HEARTBEAT_FATAL, 5)
  assert out.startswith(BEFORE + BUG_TRACEBACK)
  assert out[len(BEFORE + BUG_TRACEBACK) :].decode().startswith("error: another process of this job died")


@pytest.mark.parametrize("chunk", [None, 1, 3, 64])
def test_everything_else_passes_unchanged(chunk):
  data = (
    BEFORE
    + BUG_TRACEBACK
    + GLOO_TRACEBACK  # a lost peer with no fatal block after it: kept
    + b"Found 3 checkpoints\nF-score 0.5\nF1203 10:00:00.0 1 x.cc:1] some other fatal error\n"
    + b"  0%|          | 0/48\r 50%|#####     | 24/48\r100%|##########| 48/48\n"
    + "caf\u00e9 ".encode()
    + b"\xff"
    + b"\nno newline at the end"
  )
  assert filtered(data, chunk) == data


def test_a_progress_bar_redraw_goes_out_at_once():
  f = supervise.StderrFilter()
  assert f.feed(b"\r 50%|#####     | 24/48") == b"\r 50%|#####     | 24/48"
  assert f.feed(b"\r100%|##########| 48/48") == b"\r100%|##########| 48/48"
  assert f.feed(b"\n") == b"\n"
  assert f.feed(b"Trace") == b"" and f.feed(b"s of a run\n") == b"Traces of a run\n"  # held until the line is known


WORKER = textwrap.dedent(
  """
  import os, signal, sys, time
  from lazarus_jax.cli import supervise
  print("before", flush=True)
  supervise.split_off_worker()
  what = sys.argv[1]
  print(f"worker {os.getpid()}", flush=True)
  if what == "fatal":
    sys.stderr.buffer.write(sys.stdin.buffer.read()); sys.stderr.flush()
    os.abort()
  if what == "exit":
    sys.stderr.write("last words\\n"); sys.exit(3)
  if what == "count":  # how many SIGINTs arrive in a second after the first
    got = []
    signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    while not got:
      time.sleep(0.01)
    time.sleep(1)
    sys.exit(100 + len(got))
  signal.signal(signal.SIGTERM, lambda s, f: (sys.stderr.write("worker got SIGTERM\\n"), sys.exit(143)))
  time.sleep(60)
  """
)


def start(what: str, stdin: bytes = b"", **popen):
  proc = subprocess.Popen(
    [sys.executable, "-c", WORKER, what],
    **popen,
    cwd=repo.ROOT,
    env=dict(os.environ, PYTHONPATH=repo.ROOT),
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )
  proc.stdin.write(stdin)
  proc.stdin.close()
  proc.stdin = None  # communicate() must not flush it
  assert proc.stdout.readline() == b"before\n"
  worker = int(proc.stdout.readline().split()[1])
  assert worker != proc.pid
  return proc, worker


def test_the_supervisor_passes_the_status_and_writes_everything_out():
  proc, _ = start("exit")
  out, err = proc.communicate(timeout=30)
  assert proc.returncode == 3 and err == b"last words\n", (proc.returncode, err)


def test_a_fatal_block_from_the_worker_is_one_line_and_a_non_zero_status():
  proc, _ = start("fatal", BEFORE + GLOO_TRACEBACK + HEARTBEAT_FATAL)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 128 + signal.SIGABRT, (proc.returncode, err)
  assert err.decode().splitlines()[2:] == [supervise.peer_died_line(HEARTBEAT_FATAL).strip()], err.decode()


def test_a_sigterm_to_the_supervisor_reaches_the_worker_once():
  proc, _ = start("sleep")
  time.sleep(0.3)  # the worker's handler is in place
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 143 and err == b"worker got SIGTERM\n", (proc.returncode, err)


def test_a_signal_to_the_whole_process_group_reaches_the_worker_once():
  """As a terminal's Ctrl-C does: the worker has a group of its own, so only the supervisor's copy reaches it."""
  proc, _ = start("count", start_new_session=True)
  time.sleep(0.3)
  os.killpg(proc.pid, signal.SIGINT)
  proc.communicate(timeout=30)
  assert proc.returncode == 101, proc.returncode


def test_a_sigkill_of_the_supervisor_takes_the_worker_with_it():
  proc, worker = start("sleep")
  proc.kill()
  proc.wait(timeout=30)
  deadline = time.monotonic() + 10
  while alive(worker):
    assert time.monotonic() < deadline, "the worker outlived its supervisor"
    time.sleep(0.05)


def alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False
