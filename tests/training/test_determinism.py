"""Issue 6 §5: the same config and seed give bit-identical adapters (and saved state) on CPU in two separate
runs; every result records its seed, versions and commit (train_summary.json provenance)."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np

import cli_run


def test_two_runs_bit_identical_with_provenance(tmp_path):
  ref = cli_run.reference_run()
  workdir = str(tmp_path / "again")
  proc = cli_run.run_train(workdir, out_dir=str(tmp_path / "logs"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  cli_run.assert_same_tensors(cli_run.adapter_tensors(workdir), cli_run.adapter_tensors(ref))
  a, b = cli_run.restore_checkpoint(workdir, 40), cli_run.restore_checkpoint(ref, 40)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y)
  losses = [[json.loads(r)["loss"] for r in open(os.path.join(w, "metrics.jsonl"))] for w in (workdir, ref)]
  assert losses[0] == losses[1]

  for w in (workdir, ref):
    summary = json.load(open(os.path.join(w, "train_summary.json")))
    prov = summary["provenance"]
    assert prov["seed"] == 0 and prov["config"]["seed"] == 0
    assert prov["config"]["train"]["steps"] == 40
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git"]["commit"]), prov["git"]
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "python"):
      assert prov["versions"][pkg], pkg
    assert prov["devices"]["platform"] == "cpu"
    assert summary["final_step"] == 40 and summary["skipped_updates"] == 0
    # The resolved config written at the start says the same.
    assert json.load(open(os.path.join(w, "config.json")))["seed"] == 0

  # A different seed is a different run (the seed reaches the adapters' init and the batch order).
  other = str(tmp_path / "seed1")
  proc = cli_run.run_train(other, "--config.seed=1", "--config.train.steps=2", out_dir=str(tmp_path / "logs1"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  short = str(tmp_path / "seed0")
  proc = cli_run.run_train(short, "--config.train.steps=2", out_dir=str(tmp_path / "logs0"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  t1, t0 = cli_run.adapter_tensors(other), cli_run.adapter_tensors(short)
  assert any(not np.array_equal(t1[k], t0[k]) for k in t0)
