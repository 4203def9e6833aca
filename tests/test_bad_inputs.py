"""Issue 6 §1: every user mistake stops with one `error:` line (what is wrong, how to fix it), exit status 2,
no traceback, and nothing written or overwritten.

Each case runs the real CLI against a copy of a finished run (its files and mtimes snapshotted), mostly with
`--config.overwrite=True`: even a run the user asked to replace must survive a bad input. A fresh workdir
must not be created either. The cases run concurrently (process start dominates); each is its own test.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import time

import cli_run
import numpy as np
import pytest

OW = "--config.overwrite=True"


def _fixtures(root: str) -> dict:
  """Bad files on disk: checkpoints, datasets, adapters."""
  from hf_tiny import save_tiny_hf
  p = {}
  # A real tiny HF checkpoint, then its weights file cut in half.
  p["hf_cut"] = os.path.join(root, "hf_cut")
  save_tiny_hf(p["hf_cut"])
  st = os.path.join(p["hf_cut"], "model.safetensors")
  data = open(st, "rb").read()
  open(st, "wb").write(data[:len(data) // 2])
  # ... and one whose header is garbage.
  p["hf_junk"] = os.path.join(root, "hf_junk")
  shutil.copytree(p["hf_cut"], p["hf_junk"])
  open(os.path.join(p["hf_junk"], "model.safetensors"), "wb").write(b"\xff" * 64)
  # The tokenizer (343 tokens) does not fit a 200-row embedding.
  p["hf_vocab"] = os.path.join(root, "hf_vocab")
  save_tiny_hf(p["hf_vocab"], vocab_size=200)
  # Not a Llama.
  p["gpt2"] = os.path.join(root, "gpt2")
  os.makedirs(p["gpt2"])
  json.dump({"model_type": "gpt2", "n_layer": 2}, open(os.path.join(p["gpt2"], "config.json"), "w"))
  # GGUF: truncated, and one with an integer (unsupported) storage type.
  from test_gguf import tiny_hf_tensors, write_tiny_gguf
  good = os.path.join(root, "tiny.gguf")
  write_tiny_gguf(good)
  data = open(good, "rb").read()
  p["gguf_cut"] = os.path.join(root, "cut.gguf")
  open(p["gguf_cut"], "wb").write(data[:int(len(data) * 0.6)])
  ref = tiny_hf_tensors()
  ref["model.layers.1.mlp.down_proj.weight"] = (np.ones((64, 128), np.int8), None)
  p["gguf_i8"] = os.path.join(root, "i8.gguf")
  write_tiny_gguf(p["gguf_i8"], tensors=ref)
  # Datasets.
  p["empty"] = os.path.join(root, "empty.jsonl")
  open(p["empty"], "w").write("\n\n")
  p["malformed"] = os.path.join(root, "malformed.jsonl")
  open(p["malformed"], "w").write('{"prompt": "1 + 2 = ", "response": "3", "operation": "add"}\n{"prompt": "1 *\n')
  p["badlabel"] = os.path.join(root, "badlabel.jsonl")
  open(p["badlabel"], "w").write('{"prompt": "2 ^ 3 = ", "response": "8", "operation": "power"}\n')
  return p


def _adapters(root: str, ref_run: str) -> dict:
  """Adapters of the reference run, altered to belong to another model."""
  from lazarus_jax.adapters import FINGERPRINT_FILE
  p = {}
  src = os.path.join(ref_run, "adapter")
  # Its fingerprint says: another base model.
  p["other_model"] = shutil.copytree(src, os.path.join(root, "adapter_other_model"))
  fp_file = os.path.join(p["other_model"], FINGERPRINT_FILE)
  fp = json.load(open(fp_file))
  fp["model"]["hidden_size"] = 128
  json.dump(fp, open(fp_file, "w"))
  # No fingerprint (a plain PEFT adapter) and a rank the tensors do not have: shapes disagree.
  p["shapes"] = shutil.copytree(src, os.path.join(root, "adapter_shapes"))
  os.remove(os.path.join(p["shapes"], FINGERPRINT_FILE))
  cfg_file = os.path.join(p["shapes"], "adapter_config.json")
  cfg = json.load(open(cfg_file))
  cfg["r"] = 8
  json.dump(cfg, open(cfg_file, "w"))
  return p


# name -> (extra args, fragments the error line must contain, options)
# options: fresh=True runs into a workdir that does not exist; cmd="lens" runs the lens tool; devices=N.
CASES = {
    "unknown_key": (["--config.eval.enabld=False", OW], ["unknown config key eval.enabld", "eval.enabled"], {}),
    "unknown_section": (["--config.trian.steps=3", OW], ["unknown config key trian.steps", "train.steps"], {}),
    "bad_value_type": (["--config.train.steps=ten", OW], ["--config.train.steps=ten", "ten"], {}),
    "missing_config_file": (["--config", "configs/nope.py"], ["configs/nope.py", "does not exist"], {}),
    "classifier_layer_high": (["--config.classifier.layer=4", OW], ["classifier.layer 4", "0..3"], {}),
    "classifier_layer_far": (["--config.classifier.layer=99", OW], ["classifier.layer 99", "0..3"], {}),
    "weight_above_1": (["--config.classifier.weight=1.5", OW], ["classifier.weight", "[0, 1]", "1.5"], {}),
    "weight_negative": (["--config.classifier.weight=-0.1", OW], ["classifier.weight", "-0.1"], {}),
    "rank_zero": (["--config.lora.rank=0", OW], ["lora.rank", "positive", "0"], {}),
    "rank_negative": (["--config.lora.rank=-4", OW], ["lora.rank", "-4"], {}),
    "unknown_lora_target": (["--config.lora.targets=v,x", OW], ["unknown LoRA target", "'x'", "q,k,v,o"], {}),
    "empty_layer_range": (["--config.lora.layer_start=2", "--config.lora.layer_end=2", OW],
                          ["layer range [2, 2)", "adapts nothing"], {}),
    "layer_range_past_model": (["--config.lora.layer_start=4", OW], ["[4, 4)", "adapts nothing", "4-layer"], {}),
    "batch_not_divisible": (["--config.train.batch_size=3", "--config.mesh.shape=(2,1,1)", OW],
                            ["batch_size 3", "data-parallel size 2"], {"devices": 2}),
    "mesh_needs_more_devices": (["--config.mesh.shape=(8,1,1)", OW], ["mesh.shape", "8", "1 are available"], {}),
    "model_path_missing": (["--config.model.path=/nonexistent/model", OW], ["/nonexistent/model", "does not exist"],
                           {}),
    "not_llama": (["--config.model.path={gpt2}", OW], ["'gpt2'", "not a Llama"], {}),
    "safetensors_truncated": (["--config.model.path={hf_cut}", OW], ["model.safetensors", "truncated or corrupt"],
                              {}),
    "safetensors_garbage": (["--config.model.path={hf_junk}", OW], ["model.safetensors", "corrupt"], {}),
    "gguf_truncated": (["--config.model.path={gguf_cut}", OW], ["cut.gguf"], {}),
    "gguf_unsupported_quant": (["--config.model.path={gguf_i8}", OW], ["blk.1.ffn_down.weight", "I8",
                                                                        "not supported"], {}),
    "vocab_mismatch": (["--config.model.path={hf_vocab}", OW], ["343 tokens", "200 rows"], {}),
    "class_word_collision": (["--config.classifier.targets.add=multiply", OW], ["'add' and 'multiply'",
                                                                                "same token"], {}),
    "class_word_in_prompt": (["--config.classifier.targets.multiply=*", OW], ["'multiply'", "appears in the prompt",
                                                                               "allow_target_in_prompt"], {}),
    "dataset_missing": (["--config.data.jsonl=/nonexistent/train.jsonl", OW], ["/nonexistent/train.jsonl",
                                                                             "does not exist"], {}),
    "dataset_empty": (["--config.data.jsonl={empty}", OW], ["empty.jsonl", "no rows"], {}),
    "dataset_malformed": (["--config.data.jsonl={malformed}", OW], ["malformed.jsonl:2", "malformed JSON"], {}),
    "dataset_unknown_label": (["--config.data.jsonl={badlabel}", OW], ["badlabel.jsonl:1", "'power'"], {}),
    # The workdir holds a run: a different config is refused even when resuming; the same config needs
    # --config.resume=True or --config.overwrite=True.
    "workdir_other_config": (["--config.lora.rank=8"], ["different config", "lora.rank", "overwrite"], {}),
    "workdir_other_config_resume": (["--config.lora.rank=8", "--config.resume=True"], ["different config",
                                                                                      "lora.rank"], {}),
    "workdir_same_config_no_resume": ([], ["already holds checkpoints", "resume=True", "overwrite=True"], {}),
    "workdir_is_a_file": (["--workdir", "{empty}"], ["is a file, not a directory"], {"fresh": True}),
    # Fresh workdirs are not created by a failing run.
    "fresh_workdir_bad_weight": (["--config.classifier.weight=2"], ["classifier.weight"], {"fresh": True}),
    "fresh_workdir_bad_model": (["--config.model.path={gpt2}"], ["not a Llama"], {"fresh": True}),
    # Adapters for another model, in the lens tool and in evaluate.
    "adapter_other_model": (["--adapter", "{other_model}"], ["different base model"], {"cmd": "lens"}),
    "adapter_shapes": (["--adapter", "{shapes}"], ["shapes", "another base model"], {"cmd": "lens"}),
    "adapter_missing": (["--adapter", "/nonexistent/adapter"], ["/nonexistent/adapter", "does not exist"],
                        {"cmd": "lens"}),
    "eval_adapter_other_model": (["--config.eval.adapter={other_model}"], ["different base model"],
                                 {"cmd": "evaluate"}),
    "eval_adapter_shapes": (["--config.eval.adapter={shapes}"], ["shapes", "another base model"],
                            {"cmd": "evaluate"}),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  """Runs every case (concurrently); returns name -> (proc, snapshot before, snapshot after, workdir)."""
  root = str(tmp_path_factory.mktemp("bad_inputs"))
  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the reference run overlaps building the fixtures
    ref_future = pool.submit(cli_run.reference_run)
    paths = _fixtures(root)
    print(f"fixtures: {time.perf_counter() - t0:.1f}s")
    ref = ref_future.result()
    print(f"reference run: {time.perf_counter() - t0:.1f}s")
  paths.update(_adapters(root, ref))

  def one(name):
    args, _, opts = CASES[name]
    args = [a.format(**paths) for a in args]
    workdir = os.path.join(root, "runs", name)
    if not opts.get("fresh"):
      cli_run.copy_run(ref, workdir)
    if opts.get("cmd") == "lens":
      module = "lazarus_jax.lens"
      args = ["--model", "tiny-random", "--prompts", "7 * 8 = |1 + 2 = ", "--json",
              os.path.join(workdir, "lens.json"), *args]
    elif opts.get("cmd") == "evaluate":
      module, args = "lazarus_jax.evaluate", cli_run.train_args(workdir, *args)
    else:
      module = "lazarus_jax.train"
      if "--config" in args:  # a case that names its own config file: it replaces the default one
        at = args.index("--config")
        args = cli_run.train_args(workdir, *(args[:at] + args[at + 2:]), config=args[at + 1])
      else:
        args = cli_run.train_args(workdir, *args)
    before = cli_run.snapshot(workdir)
    t0 = time.perf_counter()
    proc = cli_run.run(module, args, devices=opts.get("devices"), out_dir=os.path.join(root, "logs", name))
    print(f"{name}: {time.perf_counter() - t0:.1f}s")
    return proc, before, cli_run.snapshot(workdir), workdir

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    return dict(zip(CASES, pool.map(one, CASES)))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(outcomes, name):
  proc, before, after, workdir = outcomes[name]
  line = cli_run.assert_one_line_error(proc, *CASES[name][1])
  assert len(line) < 400, line
  assert after == before, f"{name} touched {workdir}: {set(after.items()) ^ set(before.items())}"
  if CASES[name][2].get("fresh"):
    assert not os.path.exists(workdir)


def test_catalogue_size():
  # Recorded in the closing note.
  assert len(CASES) >= 30
