"""Two local processes x 2 CPU devices (gloo collectives) train one run with `--config.distributed=True` like one
process with 4 devices (losses, adapter and checkpoints). Issue 16 §8, a coordinated stop: a SIGTERM to ONE of
them stops both at the same step (JAX's preemption sync point), both save that step and exit with the preemption
status, and the resumed run ends bit-identical to an uninterrupted two-process run. A SIGKILL of one process ends
the other within a bounded time (JAX's heartbeat) with one `error:` line (cli/supervise.py), and the resume from
the last complete checkpoint is exact.

The slowest test file of the reliability suite (each two-process start compiles or loads the step twice), so
one test holds every check that needs the uninterrupted two-process run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import time

import numpy as np

import cli_run

STEPS = 48
OVERRIDES = ("--config.distributed=True", f"--config.train.steps={STEPS}", "--config.train.table_steps=(8,48)")


def _port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _job(workdir: str, logs: str, *extra: str, heartbeat_s: int = 100):
  """Starts the two processes of one job (each from its own fork server); yields [process 0, process 1]."""
  port = _port()
  t0 = time.perf_counter()
  with cli_run.server() as srv0, cli_run.server() as srv1:
    children = [
      srv.start(
        "lazarus_jax.train",
        cli_run.train_args(workdir, *OVERRIDES, *extra),
        os.path.join(logs, f"p{i}"),
        devices=2,
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(i),
        LAZARUS_JAX_HEARTBEAT_S=str(heartbeat_s),
      )
      for i, srv in enumerate((srv0, srv1))
    ]
    try:
      yield children
    finally:
      for child in children:
        if child.returncode is None:
          child.wait(timeout=300)
      print(f"{os.path.basename(logs)}: {time.perf_counter() - t0:.1f}s")


def _wait_for_metrics(workdir: str, children, timeout: float = 300) -> None:
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + timeout
  while not (os.path.exists(path) and os.path.getsize(path) > 0):
    assert time.monotonic() < deadline, [c.stderr()[-2000:] for c in children]
    time.sleep(0.01)


def _complete_steps(workdir: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def _reference(tmp_path) -> str:
  workdir = str(tmp_path / "reference")
  with _job(workdir, str(tmp_path / "reference_logs")) as (p0, p1):
    codes = [p0.wait(), p1.wait()]
  assert codes == [0, 0], [p0.stderr()[-3000:], p1.stderr()[-3000:]]
  return workdir


def _losses(workdir: str) -> np.ndarray:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return np.array([[r["loss"], r["classifier_loss"], r["answer_loss"]] for r in map(json.loads, f)])


def test_two_processes_match_one_and_sigterm_to_one_process_stops_both_at_one_step_and_the_resumes_are_exact(tmp_path):
  """One run, interrupted twice: a SIGTERM to one process (both stop at one step, save it, exit 143), then a SIGKILL
  of one process in the resumed run (the other stops within the heartbeat bound, in one line), then a resume to the end: the
  adapter is the uninterrupted two-process run's, bit for bit."""
  ref = _reference(tmp_path)
  one = str(tmp_path / "one")  # the same run in one process with 4 devices: the same mesh, no collectives across processes
  r = cli_run.run("lazarus_jax.train", cli_run.train_args(one, *OVERRIDES[1:]), devices=4)
  assert r.returncode == 0, r.stderr[-3000:]
  np.testing.assert_allclose(_losses(ref), _losses(one), atol=1e-5, rtol=0)
  a, b = cli_run.adapter_tensors(ref), cli_run.adapter_tensors(one)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)
  assert _complete_steps(ref) == _complete_steps(one)  # both processes took part in every checkpoint

  workdir = str(tmp_path / "run")
  with _job(workdir, str(tmp_path / "first")) as (p0, p1):
    _wait_for_metrics(workdir, (p0, p1))
    p1.kill(signal.SIGTERM)  # the notice reaches one host only
    codes = [p0.wait(), p1.wait()]
  err0, err1 = p0.stderr(), p1.stderr()
  assert codes == [128 + signal.SIGTERM] * 2, [err0[-3000:], err1[-3000:]]
  m = re.search(r"stopped by SIGTERM \(preemption, all processes\) at step (\d+): checkpoint (\S+) saved", err0)
  assert m, err0[-3000:]
  step = int(m.group(1))
  assert 2 <= step < STEPS
  assert f"Reached preemption sync point, step={step}" in err1, err1[-3000:]  # the other process: the same step
  assert _complete_steps(workdir)[-1] == step
  assert "Traceback" not in err0 + err1

  # The resumed run loses a process without notice: the survivor stops within the heartbeat bound (no hang).
  with _job(workdir, str(tmp_path / "second"), "--config.resume=True", heartbeat_s=5) as (p0, p1):
    deadline = time.monotonic() + 300
    while not any(s > step for s in _complete_steps(workdir)):  # past the resume: a new checkpoint exists
      assert time.monotonic() < deadline, p0.stderr()[-2000:]
      time.sleep(0.01)
    t0 = time.monotonic()
    p1.kill(signal.SIGKILL)
    code = p0.wait(timeout=120)
    waited = time.monotonic() - t0
  err0 = p0.stderr()
  assert re.search(rf"resumed from \S+ at step {step}\b", err0)
  assert code != 0 and waited < 60, (code, waited, err0[-2000:])
  # one line about the dead peer (cli/supervise.py), in place of JAX's fatal block and the collective's traceback
  lines = err0.splitlines()
  died = [line for line in lines if "another process of this job died" in line]
  assert len(died) == 1 and died[0].startswith("error: ") and lines[-1] == died[0], err0[-3000:]
  assert "--config.resume=True" in died[0] and "task 1" in died[0], died[0]
  assert "Traceback" not in err0 and "Check failure" not in err0, err0[-3000:]
  assert not [line for line in lines if re.match(r"F\d{4} ", line) or line.lstrip().startswith("@ ")], err0[-3000:]
  print(f"SIGKILL: the survivor exited {code} after {waited:.1f}s: {died[0]}")

  with _job(workdir, str(tmp_path / "third"), "--config.resume=True") as (p0, p1):
    codes = [p0.wait(), p1.wait()]
  assert codes == [0, 0], [p0.stderr()[-3000:], p1.stderr()[-3000:]]
  cli_run.assert_same_tensors(cli_run.adapter_tensors(workdir), cli_run.adapter_tensors(ref))
