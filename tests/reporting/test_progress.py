"""Progress bars (training/logging_utils.progress_wanted): on for a terminal, off in logs, pipes and tests,
LAZARUS_JAX_PROGRESS=0/1 to say otherwise; evaluate's stage bar and the sweep's arm bar follow training's rule."""

import os
import pty
import subprocess
import sys

import pytest

from lazarus_jax import settings
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data.targets import resolve_targets
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.reporting import evaluate
from lazarus_jax.training.logging_utils import PROGRESS_ENV

import repo


def load_config(path):
  import importlib.util

  spec = importlib.util.spec_from_file_location("tiny_config", os.path.join(repo.ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


CHECK = "import sys; from lazarus_jax.training.logging_utils import progress_wanted; print(progress_wanted())"


def wanted(stderr_is_a_terminal: bool, setting: str | None) -> bool:
  env = {k: v for k, v in os.environ.items() if k != PROGRESS_ENV}
  if setting is not None:
    env[PROGRESS_ENV] = setting
  leader, follower = pty.openpty() if stderr_is_a_terminal else (None, subprocess.PIPE)
  try:
    out = subprocess.run([sys.executable, "-c", CHECK], stdout=subprocess.PIPE, stderr=follower, env=env, cwd=repo.ROOT, text=True)
  finally:
    if leader is not None:
      os.close(leader)
      os.close(follower)
  assert out.returncode == 0
  return out.stdout.strip() == "True"


def test_progress_is_for_a_terminal_unless_told():
  assert wanted(True, None) is True
  assert wanted(False, None) is False  # a log file, a pipe, pytest
  assert wanted(True, "0") is False
  assert wanted(False, "1") is True


@pytest.mark.parametrize("setting", ["1", "0"])
def test_evaluate_shows_its_stages(monkeypatch, capsys, setting):
  pre = load_pretrained("tiny-random")
  model, tok = pre.build(), pre.tokenizer
  targets = resolve_targets(tok)
  examples = [
    data_lib.Example(prompt=f"{a} {op} {b} = ", answer=" 1", operation=name, a=a, b=b, fmt="symbolic")
    for a, b in ((3, 4), (5, 6))
    for op, name in (("*", "multiply"), ("+", "add"), ("-", "subtract"), ("/", "divide"))
  ]
  c = load_config("configs/tiny.py")
  c.eval.probes, c.eval.generate = False, False
  monkeypatch.setenv(PROGRESS_ENV, setting)
  evaluate.evaluate_model(model, tok, examples, targets, 2, settings.parse(c), {}, "shown")
  err = capsys.readouterr().err
  if setting == "1":
    assert "evaluate shown" in err and "4/4" in err, err
  else:
    assert "evaluate shown" not in err, err
