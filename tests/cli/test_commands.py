"""Every command the README documents exists and answers --help; the training path never imports torch."""

import os
import re
import subprocess
import sys

import cli_run
import repo

ROOT = repo.ROOT
# The reliability tests' persistent compilation cache (the same tiny programs): compiles are most of a tiny run.
CACHED = {**os.environ, **cli_run.CACHE_ENV}


def _documented_modules():
  with open(os.path.join(ROOT, "README.md")) as f:
    return sorted(set(re.findall(r"python -m (lazarus_jax\.\w+)", f.read())))


def test_readme_commands_exist():
  modules = _documented_modules()
  assert {"lazarus_jax.train", "lazarus_jax.evaluate", "lazarus_jax.sweep", "lazarus_jax.lens"} <= set(modules)
  procs = {  # concurrently: each one is an interpreter start and the imports
    m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for m in modules
  }
  for module, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, (module, stderr[-2000:])
    assert "--" in stdout + stderr, module


def test_train_and_evaluate_do_not_import_torch(tmp_path):
  code = (
    "import sys, runpy\n"
    "from lazarus_jax.cli.train import train_and_evaluate\n"
    "c = runpy.run_path('configs/tiny.py')['get_config']()\n"
    "c.train.steps = 2; c.train.log_every = 1; c.eval.max_examples_per_op = 4; c.eval.probes = False\n"
    f"train_and_evaluate(c, {str(tmp_path)!r})\n"
    "print('torch imported:', 'torch' in sys.modules)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600, env=CACHED)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "torch imported: False" in out.stdout
  assert os.path.exists(tmp_path / "eval" / "results.json")


def test_tinyllama_config_without_weights_names_the_model_path_flag(tmp_path):
  # The seed's run needs TinyLlama's weights: offline, it must say how to point at them, in one line.
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  out = subprocess.run(
    [sys.executable, "-m", "lazarus_jax.train", "--config", "configs/tinyllama.py", "--workdir", str(tmp_path / "run")],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith("error:") and "--config.model.path" in lines[-1], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "run").exists()


def test_shipped_config_runs_by_name_from_another_directory(tmp_path):
  """An installed package has no configs/ beside the caller: `--config tiny` (or configs/tiny.py) finds the
  shipped one. Run from an empty directory, as a user of a wheel would."""
  run = tmp_path / "run"
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "lazarus_jax.train",
      "--config",
      "configs/tiny.py",
      "--workdir",
      str(run),
      "--config.train.steps=2",
      "--config.eval.enabled=False",
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=600,
    env={**CACHED, "PYTHONPATH": os.path.abspath(ROOT)},
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert (run / "train_summary.json").exists()
  out = subprocess.run(
    [sys.executable, "-m", "lazarus_jax.train", "--config", "no_such_config", "--workdir", str(tmp_path / "x")],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": os.path.abspath(ROOT)},
  )
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "smollm2_135m" in last and "tiny" in last, out.stderr[-1000:]


def test_shipped_config_names_resolve():
  from lazarus_jax import configs

  assert {"smollm2_135m", "tiny", "tinyllama"} <= set(configs.names())
  for name in ("tiny", "tiny.py", "configs/tiny.py", "/nowhere/tiny.py"):
    assert configs.resolve(name) == os.path.join(configs.DIR, "tiny.py") or os.path.exists(name)
  assert configs.resolve("nope.py") == "nope.py"
