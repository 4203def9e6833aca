"""Every command the README documents exists and answers --help; the training path never imports torch."""

import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _documented_modules():
  with open(os.path.join(ROOT, "README.md")) as f:
    return sorted(set(re.findall(r"python -m (lazarus_jax\.\w+)", f.read())))


def test_readme_commands_exist():
  modules = _documented_modules()
  assert {"lazarus_jax.train", "lazarus_jax.evaluate", "lazarus_jax.sweep", "lazarus_jax.lens"} <= set(modules)
  for module in modules:
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, (module, out.stderr[-2000:])
    assert "--" in out.stdout + out.stderr, module


def test_train_and_evaluate_do_not_import_torch(tmp_path):
  code = (
      "import sys, runpy\n"
      "from lazarus_jax import train\n"
      "c = runpy.run_path('configs/tiny.py')['get_config']()\n"
      "c.train.steps = 2; c.train.log_every = 1; c.eval.max_examples_per_op = 4; c.eval.probes = False\n"
      f"train.run(c, {str(tmp_path)!r})\n"
      "print('torch imported:', 'torch' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "torch imported: False" in out.stdout
  assert os.path.exists(tmp_path / "eval" / "results.json")


def test_tinyllama_config_without_weights_names_the_model_path_flag(tmp_path):
  # The seed's run needs TinyLlama's weights: offline, it must say how to point at them, in one line.
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  out = subprocess.run([sys.executable, "-m", "lazarus_jax.train", "--config", "configs/tinyllama.py",
                        "--workdir", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith("error:") and "--config.model.path" in lines[-1], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "run").exists()
