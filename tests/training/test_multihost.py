"""Two local processes x 2 CPU devices (gloo collectives) train like one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

import repo

HERE = repo.TESTS
TINY = os.path.join(HERE, "..", "configs", "tiny.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(n_processes, devices_per_process, workdir):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="")
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        os.path.join(HERE, "multihost_worker.py"),
        str(port),
        str(i),
        str(n_processes),
        str(devices_per_process),
        str(workdir),
        TINY,
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(n_processes)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return np.array([[r["loss"], r["classifier_loss"], r["answer_loss"]] for r in map(json.loads, f)])


def test_two_processes_match_one(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _launch(1, 4, one)
  outs = _launch(2, 2, two)
  assert "process 1 of 2 finished on 4 devices" in "".join(outs)
  np.testing.assert_allclose(_losses(two), _losses(one), atol=1e-5, rtol=0)
  a = load_file(str(one / "adapter" / "adapter_model.safetensors"))
  b = load_file(str(two / "adapter" / "adapter_model.safetensors"))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], atol=1e-6, rtol=0)
  # Only process 0 writes logs and exports; both take part in the (coordinated) checkpoints.
  assert sorted(os.listdir(two / "checkpoints")) == sorted(os.listdir(one / "checkpoints"))
