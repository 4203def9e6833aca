"""Helpers for the reliability tests: run the real CLIs in subprocesses, fast, and compare what they leave.

Process start (imports + tracing) dominates a tiny run, so every subprocess gets
- a persistent JAX compilation cache shared by all of them (cached executables are the same programs);
- torch hidden: the train path must not need it (DESIGN.md §6), and tensorboardX imports it when present,
  which costs seconds per start.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(tempfile.gettempdir(), f"lazarus_jax_test_jax_cache_{os.getuid()}")
_STUB_DIR = os.path.join(tempfile.gettempdir(), f"lazarus_jax_test_no_torch_{os.getuid()}")
# The persistent compilation cache every CLI test process shares (a tiny run is mostly compiles).
CACHE_ENV = {
  "JAX_COMPILATION_CACHE_DIR": CACHE_DIR,
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}

# The tiny run every reliability test starts from: long enough to kill in the middle, short to run.
BASE_OVERRIDES = (
  "--config.eval.enabled=False",
  "--config.train.steps=40",
  "--config.train.log_every=2",
  "--config.train.checkpoint_every=4",
  "--config.train.table_steps=(8,40)",
)


def env(devices: int | None = None, **extra) -> dict:
  os.makedirs(_STUB_DIR, exist_ok=True)
  stub = os.path.join(_STUB_DIR, "torch.py")
  if not os.path.exists(stub):
    with open(stub, "w") as f:
      f.write('raise ImportError("torch is hidden in the CLI tests")\n')
  e = dict(os.environ)
  e.update(
    PYTHONPATH=os.pathsep.join([_STUB_DIR, REPO]),
    JAX_PLATFORMS="cpu",
    **CACHE_ENV,
    TF_CPP_MIN_LOG_LEVEL="3",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}" if devices else "",
  )
  e.update(extra)
  return e


def train_args(workdir: str, *overrides: str, config: str = "configs/tiny.py") -> list[str]:
  return ["--config", config, "--workdir", str(workdir), *BASE_OVERRIDES, *overrides]


# ---- a fork server: the heavy imports once, then one forked child per command ----------------------------
# The child runs the module as `python -m` does (runpy, run_name="__main__", sys.argv, fds 1 and 2 to files)
# and leaves through the interpreter's normal exit, so exit status, stderr and atexit behave as for the CLI.
# It is a real process: the kill tests SIGKILL it by pid.
_SERVER = r"""
import json, os, runpy, sys
import lazarus_jax.training.loop, lazarus_jax.analysis.lens, lazarus_jax.reporting.evaluate  # noqa: F401  (what every start pays)
for name in ("lazarus_jax.train", "lazarus_jax.lens", "lazarus_jax.evaluate"):  # run fresh as __main__ (runpy)
  sys.modules.pop(name, None)
import gc; gc.freeze()  # children never scan (and so never copy-on-write) the imports' objects
print("ready", flush=True)
for line in sys.stdin:
  req = json.loads(line)
  pid = os.fork()
  if pid == 0:
    os.environ.update(req["env"])  # read by XLA when the child initialises its backend
    if req.get("umask") is not None:
      os.umask(req["umask"])
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = [req["module"], *(os.fsdecode(a.encode()) for a in req["args"])]  # as the interpreter decodes argv
    for name in req.get("hide", ()):  # an optional library this child must not find (import raises ImportError)
      sys.modules[name] = None
    runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
    sys.exit(0)
  print(f"pid {pid}", flush=True)
  _, status = os.waitpid(pid, 0)
  print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
"""


class Server:
  def __init__(self, **env_extra):
    """`env_extra`: what must hold from interpreter start (a locale, PYTHONUTF8), for every child of this server."""
    self.proc = subprocess.Popen(
      [sys.executable, "-c", _SERVER],
      cwd=REPO,
      env=env(**env_extra),
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      bufsize=1,
    )
    assert self.proc.stdout.readline().strip() == "ready"

  def start(
    self, module: str, args, out_dir: str, devices: int | None = None, umask: int | None = None, hide=(), **env_extra
  ) -> "Child":
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{module.rsplit('.', 1)[-1]}.{n}") for n in ("stdout", "stderr")]
    for path in paths:  # exist before the child runs, for those who watch them
      open(path, "w").close()
    e = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}" if devices else "", **env_extra}
    req = {"module": module, "args": [str(a) for a in args], "env": e, "stdout": paths[0], "stderr": paths[1], "umask": umask}
    req["hide"] = list(hide)
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    tag, pid = self.proc.stdout.readline().split()
    assert tag == "pid", tag
    self.child = Child(self, int(pid), *paths)
    return self.child

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=30)


class Child:
  def __init__(self, server: Server, pid: int, stdout_path: str, stderr_path: str):
    self.server, self.pid, self.stdout_path, self.stderr_path = server, pid, stdout_path, stderr_path
    self.returncode = None

  def kill(self, sig=signal.SIGKILL):
    try:
      os.kill(self.pid, sig)
    except ProcessLookupError:  # already gone
      pass

  def wait(self, timeout: float = 300) -> int:
    if self.returncode is None:
      timer = threading.Timer(timeout, self.kill)  # a hung child fails the test instead of hanging it
      timer.start()
      try:
        tag, code = self.server.proc.stdout.readline().split()
      finally:
        timer.cancel()
      assert tag == "exit", tag
      self.returncode = int(code)
    return self.returncode

  def stderr(self) -> str:
    with open(self.stderr_path, errors="replace") as f:
      return f.read()

  def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
    code = self.wait(timeout)
    with open(self.stdout_path, errors="replace") as f:
      out = f.read()
    return subprocess.CompletedProcess([], code, out, self.stderr())


_pool: "queue.Queue[Server]" = queue.Queue()
_servers: list = []
_lock = threading.Lock()


@contextlib.contextmanager
def server():
  """A free fork server (started on demand; shut down at exit)."""
  try:
    srv = _pool.get_nowait()
  except queue.Empty:
    srv = Server()
    with _lock:
      _servers.append(srv)
  try:
    yield srv
  finally:
    child = getattr(srv, "child", None)
    if child is not None and child.returncode is None:  # a test that failed mid-run: end its child, read its
      child.kill()  # exit line, so the next user of this server does not read it instead of its own "pid"
      child.wait(timeout=60)
    _pool.put(srv)


@atexit.register
def _shutdown():
  for srv in _servers:
    try:
      srv.close()
    except Exception:
      srv.proc.kill()


def run(
  module: str,
  args,
  timeout: float = 300,
  devices: int | None = None,
  out_dir: str | None = None,
  umask: int | None = None,
  hide=(),
  **env_extra,
) -> subprocess.CompletedProcess:
  """Runs `python -m module args...` (via a fork server) to the end; `hide`: modules it must fail to import."""
  if out_dir is not None:
    with server() as srv:
      return srv.start(module, args, out_dir, devices, umask=umask, hide=hide, **env_extra).result(timeout)
  with tempfile.TemporaryDirectory(prefix="lazarus_cli_") as tmp, server() as srv:  # read into the result: not kept
    return srv.start(module, args, tmp, devices, umask=umask, hide=hide, **env_extra).result(timeout)


@contextlib.contextmanager
def lock_held(workdir: str):
  """Another process holds `workdir`'s lock (lazarus_jax.workdir.WorkdirLock) while the block runs; yields it."""
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, lazarus_jax.workdir as w\nwith w.WorkdirLock(sys.argv[1], 'a test'):\n"
      "  print('held', flush=True); sys.stdin.read()",
      str(workdir),
    ],
    cwd=REPO,
    env=env(LAZARUS_JAX_HUGEPAGES="0"),
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    yield holder
  finally:
    if holder.poll() is None:
      holder.stdin.close()
      holder.wait(timeout=30)


def run_train(workdir: str, *overrides: str, **kw) -> subprocess.CompletedProcess:
  return run("lazarus_jax.train", train_args(workdir, *overrides), **kw)


@functools.lru_cache(maxsize=None)
def reference_run() -> str:
  """An uninterrupted tiny run (shared by the tests of one session): its workdir."""
  workdir = os.path.join(tempfile.mkdtemp(prefix="lazarus_ref_"), "run")
  proc = run_train(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def copy_run(src: str, dst: str) -> str:
  shutil.copytree(src, dst, symlinks=True)
  return dst


def snapshot(root: str) -> dict:
  """{relative path: (size, mtime_ns)} of every file and directory under `root` ({} if it does not exist)."""
  out = {}
  if not os.path.exists(root):
    return out
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      st = os.lstat(path)
      out[os.path.relpath(path, root)] = (st.st_size if name in filenames else 0, st.st_mtime_ns)
  return out


def adapter_tensors(workdir: str) -> dict:
  from safetensors.numpy import load_file

  return load_file(os.path.join(workdir, "adapter", "adapter_model.safetensors"))


def assert_same_tensors(a: dict, b: dict) -> None:
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), f"{k} differs (bitwise)"


def restore_checkpoint(workdir: str, step: int) -> dict:
  """The saved train state of `step` as numpy (no target: orbax restores what it wrote)."""
  import jax
  import orbax.checkpoint as ocp

  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(path)
  return jax.tree.map(np.asarray, state)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
  """Exit status 2, stderr's last line is `error: ...` naming `fragments`, and no traceback anywhere."""
  err = proc.stderr
  assert proc.returncode == 2, f"exit {proc.returncode}; stderr:\n{err[-3000:]}"
  assert "Traceback" not in err and "Traceback" not in proc.stdout, err[-3000:]
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, err[-3000:]
  assert err.rstrip().splitlines()[-1] == errors[0], err[-3000:]
  for frag in fragments:
    assert frag in errors[0], errors[0]
  return errors[0]
