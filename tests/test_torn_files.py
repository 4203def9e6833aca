"""Issue 16 §4-§6: torn and corrupt files, the user's umask and locale, and evaluating what was trained.

- A corrupt newest checkpoint: the resume falls back to the previous complete one with one line, moves the
  damaged one aside, and still ends bit-identical to an uninterrupted run. When none restores: one `error:` line.
- The PEFT export is built beside the adapter and renamed: a failing export leaves the old adapter as it was.
- Under the C locale and umask 027, a run with a non-ASCII workdir writes UTF-8 files with mode 0640 / 0750
  (results.json and the adapter weights were 0600), and results.json says which step the adapter comes from.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import shutil
import stat

import numpy as np
import pytest

from lazarus_jax import files
from lazarus_jax.models import adapters
from lazarus_jax.models.lora import LoRAConfig

import cli_run


def _damage(ckpt: str, how: str) -> None:
  if how == "state_metadata_garbage":
    open(os.path.join(ckpt, "state", "_METADATA"), "wb").write(b"\x00garbage")
  elif how == "array_data_cut":  # the largest data file, cut in half (a copy or a disk that stopped mid-way)
    data = max(glob.glob(os.path.join(ckpt, "state", "ocdbt.process_0", "d", "*")), key=os.path.getsize)
    content = open(data, "rb").read()
    open(data, "wb").write(content[: len(content) // 2])
  elif how == "manifest_missing":
    os.remove(os.path.join(ckpt, "state", "manifest.ocdbt"))
  elif how == "meta_malformed":
    open(os.path.join(ckpt, "meta", "metadata"), "wb").write(b'{"step": 4')
  else:
    raise KeyError(how)


DAMAGE = ("state_metadata_garbage", "array_data_cut", "manifest_missing", "meta_malformed")


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  ref = cli_run.reference_run()  # checkpoints 32, 36, 40

  def one(how):
    workdir = cli_run.copy_run(ref, str(tmp_path / how))
    shutil.rmtree(os.path.join(workdir, "adapter"))
    _damage(os.path.join(workdir, "checkpoints", "40"), how)
    proc = cli_run.run_train(workdir, "--config.resume=True", out_dir=str(tmp_path / f"{how}_logs"))
    return workdir, proc

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    outcomes = dict(zip(DAMAGE, pool.map(one, DAMAGE)))
  for how, (workdir, proc) in outcomes.items():
    assert proc.returncode == 0, (how, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, (how, proc.stderr[-3000:])
    said = [line for line in proc.stderr.splitlines() if line.startswith("checkpoint step 40 is unreadable")]
    assert len(said) == 1 and "resumed from step 36, the previous complete checkpoint" in said[0], (how, said)
    assert len(said[0]) < 400, said[0]
    ckpts = os.path.join(workdir, "checkpoints")
    assert os.path.isdir(os.path.join(ckpts, "corrupt-40")), how  # kept aside, not deleted
    assert "resumed from" in proc.stderr and "at step 36" in proc.stderr, how
    assert sorted(n for n in os.listdir(ckpts) if n.isdigit()) == ["32", "36", "40"], how  # 40 saved anew
    cli_run.assert_same_tensors(cli_run.adapter_tensors(workdir), cli_run.adapter_tensors(ref))


def test_no_restorable_checkpoint_is_one_line_and_moves_nothing(tmp_path):
  workdir = cli_run.copy_run(cli_run.reference_run(), str(tmp_path / "run"))
  for step in ("32", "36", "40"):
    _damage(os.path.join(workdir, "checkpoints", step), "state_metadata_garbage")
  before = cli_run.snapshot(os.path.join(workdir, "checkpoints"))
  proc = cli_run.run_train(workdir, "--config.resume=True", out_dir=str(tmp_path / "logs"))
  cli_run.assert_one_line_error(
    proc, "checkpoints/40 is unreadable", "nor do the 2 before it", "no earlier checkpoint restores", "overwrite=True"
  )
  assert cli_run.snapshot(os.path.join(workdir, "checkpoints")) == before


# ---- the PEFT export, atomic as a directory --------------------------------------------------------------


def _export(out_dir: str, value: float, record=None) -> None:
  lcfg = LoRAConfig(rank=2, alpha=4.0, targets=("v", "o"), layer_start=0, layer_end=2)
  params = {f"{t}_{w}": np.full((2, 8, 2) if w == "a" else (2, 2, 8), value, np.float32) for t in ("v", "o") for w in ("a", "b")}
  adapters.export_peft(params, lcfg, (0, 2), out_dir, "tiny-random", {"num_layers": 2}, record=record)


def _tree(path: str) -> dict:
  return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))}


def test_a_failing_export_leaves_the_previous_adapter_whole(tmp_path, monkeypatch):
  out = str(tmp_path / "adapter")
  _export(out, 1.0, {"final_step": 4})
  before = _tree(out)
  real = adapters.write_json

  def fail_on_record(path, doc, **kw):  # the last file of the export: everything else is already written
    if path.endswith(adapters.FINGERPRINT_FILE):
      raise OSError(28, "No space left on device", path)
    return real(path, doc, **kw)

  monkeypatch.setattr(adapters, "write_json", fail_on_record)
  with pytest.raises(OSError):
    _export(out, 2.0, {"final_step": 8})
  assert _tree(out) == before
  assert sorted(os.listdir(tmp_path)) == ["adapter"]  # the half-built one is gone too
  monkeypatch.setattr(adapters, "write_json", real)
  os.makedirs(tmp_path / ".adapter.tmp-deadbeef")  # what a SIGKILL mid-export leaves
  _export(out, 3.0, {"final_step": 12})
  assert sorted(os.listdir(tmp_path)) == ["adapter"]
  assert adapters.adapter_record(out)["final_step"] == 12


def test_outputs_have_the_users_umask(tmp_path):
  out = str(tmp_path / "adapter")
  old = os.umask(0o027)
  try:
    _export(out, 1.0)
    files.write_json(str(tmp_path / "doc.json"), {"x": "\u00d7"})
  finally:
    os.umask(old)
  modes = {n: stat.S_IMODE(os.stat(os.path.join(out, n)).st_mode) for n in os.listdir(out)}
  assert modes == {n: 0o640 for n in modes}, modes  # safetensors' own save_file makes 0600
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o750
  assert stat.S_IMODE(os.stat(tmp_path / "doc.json").st_mode) == 0o640
  assert json.loads(open(tmp_path / "doc.json", "rb").read().decode("utf-8")) == {"x": "\u00d7"}


# ---- a whole run under the C locale and umask 027 ---------------------------------------------------------


def test_a_run_in_the_c_locale_with_umask_027(tmp_path):
  """train + evaluate, as a user with LC_ALL=C and umask 027 would run them, on data with non-ASCII prompts: every
  file the user's umask (0640 / 0750), every text file UTF-8, and results.json names the adapter's step, checked
  against the run's. A non-ASCII workdir, which this locale cannot decode, is one line saying how to fix it."""
  workdir = str(tmp_path / "odd run name")
  jsonl = str(tmp_path / "rows.jsonl")
  with open(jsonl, "w", encoding="utf-8") as f:
    for a in range(60, 80):
      f.write(json.dumps({"prompt": f"{a} \u00d7 3 = ", "response": str(3 * a), "operation": "multiply"}) + "\n")
      f.write(json.dumps({"prompt": f"{a} \u2212 3 = ", "response": str(a - 3), "operation": "subtract"}) + "\n")
  srv = cli_run.Server(LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0")
  try:
    args = cli_run.train_args(
      workdir,
      "--config.eval.enabled=True",
      "--config.train.steps=8",
      "--config.eval.max_examples_per_op=4",
      "--config.eval.probe_steps=5",
      f"--config.data.jsonl={jsonl}",
    )
    proc = srv.start("lazarus_jax.train", args, str(tmp_path / "logs"), umask=0o027).result()
    odd = str(tmp_path / "r\u00e9sum\u00e9")
    refused = srv.start("lazarus_jax.train", cli_run.train_args(odd), str(tmp_path / "odd_logs")).result()
  finally:
    srv.close()
  cli_run.assert_one_line_error(refused, "not valid text in this locale", "PYTHONUTF8=1")
  assert not os.path.exists(odd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for dirpath, dirnames, filenames in os.walk(workdir):
    for name in dirnames:
      assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o750, os.path.join(dirpath, name)
    for name in filenames:
      path = os.path.join(dirpath, name)
      assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, (path, oct(os.stat(path).st_mode))
      if name.endswith((".json", ".md", ".jsonl")):
        open(path, "rb").read().decode("utf-8")
  results = json.load(open(os.path.join(workdir, "eval", "results.json"), encoding="utf-8"))
  origin = results["model"]["adapter_origin"]
  assert origin["step"] == 8 and origin["latest_checkpoint"] == 8 and origin["check"].startswith("verified")
  assert results["training"]["last"]["step"] == 8


def test_every_text_file_the_package_opens_names_its_encoding():
  """The locale must not decide the bytes: every text-mode `open(...)` in lazarus_jax passes `encoding=`."""
  import ast

  package = os.path.join(cli_run.REPO, "lazarus_jax")
  missing = []
  for path in sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True)):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
      if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"):
        continue
      mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
      binary = isinstance(mode, ast.Constant) and "b" in str(mode.value)
      if not binary and not any(k.arg == "encoding" for k in node.keywords):
        missing.append(f"{os.path.relpath(path, cli_run.REPO)}:{node.lineno}")
  assert missing == []
