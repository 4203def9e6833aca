"""Issue 6 §1: every user mistake stops with one `error:` line (what is wrong, how to fix it), exit status 2,
no traceback, and nothing written or overwritten.

Each case runs the real CLI against a copy of a finished run (its files and mtimes snapshotted), mostly with
`--config.overwrite=True`: even a run the user asked to replace must survive a bad input. A fresh workdir
must not be created either. The cases run concurrently (process start dominates); each is its own test.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

import cli_run

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
  open(st, "wb").write(data[: len(data) // 2])
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
  from tiny_gguf import tiny_hf_tensors, write_tiny_gguf

  good = os.path.join(root, "tiny.gguf")
  write_tiny_gguf(good)
  data = open(good, "rb").read()
  p["gguf_cut"] = os.path.join(root, "cut.gguf")
  open(p["gguf_cut"], "wb").write(data[: int(len(data) * 0.6)])
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
  # Encodings: the same rows in Latin-1 (a byte that is not UTF-8) and in UTF-16.
  row = '{"prompt": "7 \u00d7 8 = ", "response": "56", "operation": "multiply"}\n'
  p["latin1"] = os.path.join(root, "latin1.jsonl")
  open(p["latin1"], "wb").write(('{"prompt": "1 + 2 = ", "response": "3", "operation": "add"}\n' + row).encode("latin-1"))
  p["utf16"] = os.path.join(root, "utf16.jsonl")
  open(p["utf16"], "wb").write(row.encode("utf-16"))
  p["prompts_latin1"] = os.path.join(root, "prompts_latin1.txt")
  open(p["prompts_latin1"], "wb").write("7 \u00d7 8 = \n".encode("latin-1"))
  p["hf_cfg_latin1"] = os.path.join(root, "hf_cfg_latin1")
  shutil.copytree(p["hf_vocab"], p["hf_cfg_latin1"])
  cfg_path = os.path.join(p["hf_cfg_latin1"], "config.json")
  text = open(cfg_path, "rb").read()
  open(cfg_path, "wb").write(text.replace(b'"llama"', b'"llama\xe9"'))
  p["long"] = "x" * 300
  p["ro"] = _read_only_dir(os.path.join(root, "ro"))
  return p


def _read_only_dir(path: str) -> str:
  """A directory no one can write: a read-only tmpfs as root (permissions do not stop root), else mode 0555."""
  os.makedirs(path)
  if os.geteuid() == 0:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", path], capture_output=True)
    assert done.returncode == 0, f"cannot mount a read-only tmpfs as root: {done.stderr}"
    atexit.register(subprocess.run, ["umount", "-l", path], capture_output=True)
  else:
    os.chmod(path, 0o555)
  return path


def _adapters(root: str, ref_run: str) -> dict:
  """Adapters of the reference run, altered to belong to another model."""
  from lazarus_jax.models.adapters import FINGERPRINT_FILE

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
  # Torn and corrupt adapters (issue 16 §4): each a copy of the good one with one file damaged.
  weights = "adapter_model.safetensors"

  def damaged(name, file, content):
    path = shutil.copytree(src, os.path.join(root, f"adapter_{name}"))
    if callable(content):
      content = content(open(os.path.join(path, file), "rb").read())
    open(os.path.join(path, file), "wb").write(content)
    p[name] = path

  damaged("cut", weights, lambda b: b[: len(b) // 2])
  damaged("garbage", weights, b"\xff" * 64)
  damaged("empty_weights", weights, b"")
  damaged("cfg_malformed", "adapter_config.json", b'{"r": 4, "lora_alpha"')
  damaged("cfg_latin1", "adapter_config.json", lambda b: b.replace(b'"LORA"', b'"LOR\xc0"'))
  damaged("cfg_no_rank", "adapter_config.json", lambda b: json.dumps({k: v for k, v in json.loads(b).items() if k != "r"}).encode())
  damaged("record_corrupt", FINGERPRINT_FILE, b"{not json")
  # PEFT options our loader cannot apply (issue 15): refused, not loaded mis-scaled.
  damaged("cfg_rslora", "adapter_config.json", lambda b: json.dumps({**json.loads(b), "use_rslora": True}).encode())
  damaged("cfg_rank_pattern", "adapter_config.json", lambda b: json.dumps({**json.loads(b), "rank_pattern": {"v_proj": 8}}).encode())
  from safetensors.numpy import load_file, save

  good = load_file(os.path.join(src, weights))
  damaged("nan", weights, save({k: np.full_like(v, np.nan) for k, v in good.items()}))
  damaged("foreign_tensor", weights, save({"lm_head.weight": np.zeros((2, 2), np.float32)}))
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
  "empty_layer_range": (
    ["--config.lora.layer_start=2", "--config.lora.layer_end=2", OW],
    ["layer range [2, 2)", "adapts nothing"],
    {},
  ),
  "layer_range_past_model": (["--config.lora.layer_start=4", OW], ["[4, 4)", "adapts nothing", "4-layer"], {}),
  "batch_not_divisible": (
    ["--config.train.batch_size=3", "--config.mesh.shape=(2,1,1)", OW],
    ["batch_size 3", "data-parallel size 2"],
    {"devices": 2},
  ),
  "mesh_needs_more_devices": (["--config.mesh.shape=(8,1,1)", OW], ["mesh.shape", "8", "1 are available"], {}),
  "model_path_missing": (["--config.model.path=/nonexistent/model", OW], ["/nonexistent/model", "does not exist"], {}),
  "not_llama": (["--config.model.path={gpt2}", OW], ["'gpt2'", "not a Llama"], {}),
  "safetensors_truncated": (["--config.model.path={hf_cut}", OW], ["model.safetensors", "truncated or corrupt"], {}),
  "safetensors_garbage": (["--config.model.path={hf_junk}", OW], ["model.safetensors", "corrupt"], {}),
  "gguf_truncated": (["--config.model.path={gguf_cut}", OW], ["cut.gguf"], {}),
  "gguf_unsupported_quant": (["--config.model.path={gguf_i8}", OW], ["blk.1.ffn_down.weight", "I8", "not supported"], {}),
  "vocab_mismatch": (["--config.model.path={hf_vocab}", OW], ["343 tokens", "200 rows"], {}),
  "class_word_collision": (["--config.classifier.targets.add=multiply", OW], ["'add' and 'multiply'", "same token"], {}),
  "class_word_in_prompt": (
    ["--config.classifier.targets.multiply=*", OW],
    ["'multiply'", "appears in the prompt", "allow_target_in_prompt"],
    {},
  ),
  "dataset_missing": (["--config.data.jsonl=/nonexistent/train.jsonl", OW], ["/nonexistent/train.jsonl", "does not exist"], {}),
  "dataset_empty": (["--config.data.jsonl={empty}", OW], ["empty.jsonl", "no rows"], {}),
  "dataset_malformed": (["--config.data.jsonl={malformed}", OW], ["malformed.jsonl:2", "malformed JSON"], {}),
  "dataset_unknown_label": (["--config.data.jsonl={badlabel}", OW], ["badlabel.jsonl:1", "'power'"], {}),
  # The workdir holds a run: a different config is refused even when resuming; the same config needs
  # --config.resume=True or --config.overwrite=True.
  "workdir_other_config": (["--config.lora.rank=8"], ["different config", "lora.rank", "overwrite"], {}),
  "workdir_other_config_resume": (["--config.lora.rank=8", "--config.resume=True"], ["different config", "lora.rank"], {}),
  "workdir_same_config_no_resume": ([], ["already holds checkpoints", "resume=True", "overwrite=True"], {}),
  "workdir_is_a_file": (["--workdir", "{empty}"], ["is a file, not a directory"], {"fresh": True}),
  # Fresh workdirs are not created by a failing run.
  "fresh_workdir_bad_weight": (["--config.classifier.weight=2"], ["classifier.weight"], {"fresh": True}),
  "fresh_workdir_bad_model": (["--config.model.path={gpt2}"], ["not a Llama"], {"fresh": True}),
  # Adapters for another model, in the lens tool and in evaluate.
  "adapter_other_model": (["--adapter", "{other_model}"], ["different base model"], {"cmd": "lens"}),
  "adapter_shapes": (["--adapter", "{shapes}"], ["shapes", "another base model"], {"cmd": "lens"}),
  "adapter_missing": (["--adapter", "/nonexistent/adapter"], ["/nonexistent/adapter", "does not exist"], {"cmd": "lens"}),
  "eval_adapter_other_model": (["--config.eval.adapter={other_model}"], ["different base model"], {"cmd": "evaluate"}),
  "eval_adapter_shapes": (["--config.eval.adapter={shapes}"], ["shapes", "another base model"], {"cmd": "evaluate"}),
  # ---- issue 16 §1: every check before the first write. evaluate's keys are checked when train starts (train
  # ran evaluate after training: a typo there cost the finished run that overwrite had deleted).
  "eval_probe_method_typo": (["--config.eval.probe_method=adma", OW], ["eval.probe_method", "'adma'"], {}),
  "eval_probe_fraction": (["--config.eval.probe_test_fraction=1.5", OW], ["eval.probe_test_fraction", "1.5"], {}),
  "eval_max_examples_zero": (["--config.eval.max_examples_per_op=0", OW], ["eval.max_examples_per_op", ">= 1"], {}),
  "remat_typo": (["--config.model.remat=ful", OW], ["model.remat", "'ful'"], {}),
  # evaluate's mechanism keys too (settings.parse): they were checked by evaluate only, after training.
  "mechanism_alphas_typo": (["--config.eval.mechanism.steer_alphas=1,two", OW], ["eval.mechanism.steer_alphas", "1,two"], {}),
  "mechanism_rows_typo": (["--config.eval.mechanism.rows=0,x", OW], ["eval.mechanism.rows", "0,x"], {}),
  "mechanism_no_supported_format": (
    ["--config.eval.mechanism.enabled=True", "--config.data.eval_format=symbolic_alt", OW],
    ["eval.mechanism", "evaluates only symbolic_alt", "data.eval_format"],
    {},
  ),
  "fresh_workdir_bad_eval_key": (["--config.eval.probe_method=x"], ["eval.probe_method"], {"fresh": True}),
  # overwrite deletes what a run of ours wrote, and refuses a directory holding anything else.
  "overwrite_foreign_file": ([OW], ["notes.txt", "no run writes", "another --workdir"], {"setup": "foreign_file"}),
  "overwrite_foreign_dir": ([OW], ["my_data", "no run writes"], {"setup": "foreign_dir"}),
  "outputs_without_config": ([], ["no config.json", "checkpoints"], {"setup": "no_config"}),
  "workdir_config_not_utf8": ([], ["run config", "not UTF-8"], {"setup": "config_latin1"}),
  # ---- §2: one writer per workdir (another process holds the lock; a crash cannot leave it held: see
  # tests/test_workdir_lock.py).
  "locked_resume": (["--config.resume=True"], ["in use by another run", "a test, pid"], {"locked": True}),
  "locked_overwrite": ([OW], ["in use by another run"], {"locked": True}),
  "locked_evaluate": ([], ["in use by another run"], {"locked": True, "cmd": "evaluate"}),
  "locked_sweep": (
    ["--config.sweep.weights=0", "--config.sweep.formats=symbolic", "--config.sweep.seeds=0", "--config.sweep.layer_fractions=0.55"],
    ["in use by another run"],
    {"locked": True, "cmd": "sweep"},
  ),
  # ---- §3: every numeric key has a range, NaN and infinity refused (before anything is written).
  "lr_nan": (["--config.train.lr=nan", OW], ["train.lr", "nan"], {}),
  "lr_inf": (["--config.train.lr=inf", OW], ["train.lr", "inf"], {}),
  "lr_negative": (["--config.train.lr=-1e-3", OW], ["train.lr", "positive"], {}),
  "max_to_keep_zero": (["--config.train.max_to_keep=0", OW], ["train.max_to_keep", ">= 1", "got 0"], {}),
  "max_to_keep_negative": (["--config.train.max_to_keep=-2", OW], ["train.max_to_keep", "-2"], {}),
  "warmup_negative": (["--config.train.warmup_steps=-5", OW], ["train.warmup_steps", ">= 0"], {}),
  "b1_one": (["--config.train.b1=1.0", OW], ["train.b1", "[0, 1)"], {}),
  "b2_above_one": (["--config.train.b2=1.5", OW], ["train.b2", "1.5"], {}),
  "grad_clip_zero": (["--config.train.grad_clip=0.0", OW], ["train.grad_clip", "> 0"], {}),
  "grad_clip_nan": (["--config.train.grad_clip=nan", OW], ["train.grad_clip", "nan"], {}),
  "weight_decay_negative": (["--config.train.weight_decay=-0.1", OW], ["train.weight_decay", ">= 0"], {}),
  "end_lr_fraction_two": (["--config.train.end_lr_fraction=2.0", OW], ["train.end_lr_fraction", "[0, 1]"], {}),
  "seed_negative": (["--config.seed=-1", OW], ["seed", "-1"], {}),
  "seed_too_large": (["--config.seed=4294967296", OW], ["seed", "4294967296"], {}),
  "log_every_zero": (["--config.train.log_every=0", OW], ["train.log_every", "0"], {}),
  "nonfinite_limit_zero": (["--config.train.max_consecutive_nonfinite=0", OW], ["train.max_consecutive_nonfinite", ">= 1"], {}),
  "table_steps_zero": (["--config.train.table_steps=(0,8)", OW], ["train.table_steps", ">= 1", "0"], {}),
  "n_eval_per_op_zero": (["--config.data.n_eval_per_op=0", OW], ["data.n_eval_per_op", ">= 1"], {}),
  "max_answer_tokens_zero": (["--config.data.max_answer_tokens=0", OW], ["data.max_answer_tokens"], {}),
  "seq_len_negative": (["--config.data.seq_len=-16", OW], ["data.seq_len", "-16"], {}),
  "eval_batch_zero": (["--config.eval.batch_size=0", OW], ["eval.batch_size", ">= 1"], {}),
  "max_new_tokens_zero": (["--config.eval.max_new_tokens=0", OW], ["eval.max_new_tokens"], {}),
  "probe_l2_negative": (["--config.eval.probe_l2=-1.0", OW], ["eval.probe_l2", ">= 0"], {}),
  "probe_lr_nan": (["--config.eval.probe_lr=nan", OW], ["eval.probe_lr", "nan"], {}),
  "alpha_inf": (["--config.lora.alpha=inf", OW], ["lora.alpha", "inf"], {}),
  "classifier_layer_minus_two": (["--config.classifier.layer=-2", OW], ["classifier.layer", "-1 ="], {}),
  "confidence_one": (["--config.sweep.confidence=1.0", OW], ["sweep.confidence", "(0, 1)"], {}),
  "mesh_zero": (["--config.mesh.shape=(0,1,1)", OW], ["mesh.shape", "(0, 1, 1)"], {}),
  "mesh_two_fills": (["--config.mesh.shape=(-1,-1,1)", OW], ["mesh.shape", "at most one -1"], {}),
  # ---- §4: torn and corrupt adapters are one line, in the lens tool and in evaluate.
  "lens_adapter_cut": (["--adapter", "{cut}"], ["adapter_model.safetensors", "unreadable"], {"cmd": "lens"}),
  "lens_adapter_garbage": (["--adapter", "{garbage}"], ["adapter_model.safetensors", "unreadable"], {"cmd": "lens"}),
  "lens_adapter_cfg_malformed": (["--adapter", "{cfg_malformed}"], ["adapter_config.json", "malformed JSON"], {"cmd": "lens"}),
  "lens_adapter_record_corrupt": (["--adapter", "{record_corrupt}"], ["lazarus_jax_model.json", "unreadable"], {"cmd": "lens"}),
  "lens_adapter_nan": (["--adapter", "{nan}"], ["non-finite"], {"cmd": "lens"}),
  "eval_adapter_empty_weights": (
    ["--config.eval.adapter={empty_weights}"],
    ["adapter_model.safetensors", "unreadable"],
    {"cmd": "evaluate"},
  ),
  "eval_adapter_no_rank": (["--config.eval.adapter={cfg_no_rank}"], ["adapter_config.json", "r, lora_alpha"], {"cmd": "evaluate"}),
  "eval_adapter_cfg_latin1": (["--config.eval.adapter={cfg_latin1}"], ["adapter_config.json", "not UTF-8"], {"cmd": "evaluate"}),
  "eval_adapter_foreign_tensor": (
    ["--config.eval.adapter={foreign_tensor}"],
    ["lm_head.weight", "not per-layer LoRA"],
    {"cmd": "evaluate"},
  ),
  "eval_adapter_cut": (["--config.eval.adapter={cut}"], ["unreadable"], {"cmd": "evaluate"}),
  "lens_adapter_rslora": (["--adapter", "{cfg_rslora}"], ["use_rslora=True", "alpha/sqrt(r)"], {"cmd": "lens"}),
  "eval_adapter_rank_pattern": (
    ["--config.eval.adapter={cfg_rank_pattern}"],
    ["rank_pattern=", "per-module ranks"],
    {"cmd": "evaluate"},
  ),
  # ---- §5: encodings, odd paths and unwritable outputs are one line too.
  "dataset_latin1": (["--config.data.jsonl={latin1}", OW], ["latin1.jsonl", "not UTF-8", "line 2"], {}),
  "dataset_utf16": (["--config.data.jsonl={utf16}", OW], ["utf16.jsonl", "not UTF-8"], {}),
  "prompts_file_latin1": (
    ["--prompts", "@{prompts_latin1}"],
    ["prompts_latin1.txt", "not UTF-8"],
    {"cmd": "lens", "own_prompts": True},
  ),
  "model_config_latin1": (["--config.model.path={hf_cfg_latin1}", OW], ["model config", "not UTF-8"], {}),
  "workdir_under_a_file": (["--workdir", "{empty}/run"], ["which is a file"], {"fresh": True}),
  "workdir_name_too_long": (["--workdir", "{root}/{long}"], ["300 bytes long", "255"], {"fresh": True}),
  "workdir_read_only": (["--workdir", "{ro}/run"], ["{ro}", "not writable"], {"fresh": True}),
  "lens_json_read_only": (["--json", "{ro}/out.json"], ["{ro}", "not writable"], {"cmd": "lens"}),
  "lens_png_under_a_file": (["--png", "{empty}/out.png"], ["does not exist"], {"cmd": "lens"}),
  "eval_dir_is_a_file": ([], ["eval", "is a file"], {"cmd": "evaluate", "setup": "eval_is_file"}),
  "sweep_workdir_under_a_file": (["--workdir", "{empty}/sweep"], ["which is a file"], {"fresh": True, "cmd": "sweep"}),
  # ---- §7: a gs:// workdir without its filesystem library (gcsfs hidden: it is not a test dependency).
  "gs_workdir_without_gcsfs": (
    ["--workdir", "gs://lazarus-test-bucket/run"],
    ["gs://lazarus-test-bucket/run", "need gcsfs", 'pip install "lazarus_jax[gcs]"'],
    {"fresh": True, "hide": ("gcsfs",)},
  ),
  "gs_eval_without_gcsfs": (
    ["--workdir", "gs://lazarus-test-bucket/run"],
    ["need gcsfs", "lazarus_jax[gcs]"],
    {"fresh": True, "hide": ("gcsfs",), "cmd": "evaluate"},
  ),
  "gs_sweep_without_gcsfs": (
    ["--workdir", "gs://lazarus-test-bucket/sweep"],
    ["gs://lazarus-test-bucket/sweep", "need gcsfs"],
    {"fresh": True, "hide": ("gcsfs",), "cmd": "sweep"},
  ),
  # ---- §6: evaluate what was trained: an adapter older than the run's newest checkpoint is refused.
  "eval_stale_adapter": (
    [],
    ["adapter", "from step 40", "newest checkpoint is step 44", "resume=True"],
    {"cmd": "evaluate", "setup": "newer_checkpoint"},
  ),
}


def _setup(name: str, workdir: str) -> None:
  """Alters a copied run before a case runs on it."""
  if name == "foreign_file":
    open(os.path.join(workdir, "notes.txt"), "w").write("my notes\n")
  elif name == "foreign_dir":
    os.makedirs(os.path.join(workdir, "my_data"))
    open(os.path.join(workdir, "my_data", "rows.jsonl"), "w").write("{}\n")
  elif name == "no_config":
    os.remove(os.path.join(workdir, "config.json"))
  elif name == "config_latin1":
    path = os.path.join(workdir, "config.json")
    text = open(path, "rb").read()
    open(path, "wb").write(text.replace(b'"tiny-random"', b'"tiny-r\xe9ndom"'))
  elif name == "eval_is_file":
    open(os.path.join(workdir, "eval"), "w").write("not a directory\n")
  elif name == "newer_checkpoint":  # as a resume that was interrupted after its first checkpoint leaves it
    shutil.copytree(os.path.join(workdir, "checkpoints", "40"), os.path.join(workdir, "checkpoints", "44"))
  else:
    raise KeyError(name)


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
  paths["root"] = root

  def one(name):
    args, _, opts = CASES[name]
    args = [a.format(**paths) for a in args]
    workdir = os.path.join(root, "runs", name)
    if not opts.get("fresh"):
      cli_run.copy_run(ref, workdir)
    if opts.get("setup"):
      _setup(opts["setup"], workdir)
    if opts.get("cmd") == "lens":
      module = "lazarus_jax.lens"
      prompts = [] if opts.get("own_prompts") else ["--prompts", "7 * 8 = |1 + 2 = "]
      out = [] if "--json" in args else ["--json", os.path.join(workdir, "lens.json")]
      args = ["--model", "tiny-random", *prompts, *out, *args]
    elif opts.get("cmd") in ("evaluate", "sweep"):
      module, args = f"lazarus_jax.{opts['cmd']}", cli_run.train_args(workdir, *args)
    else:
      module = "lazarus_jax.train"
      if "--config" in args:  # a case that names its own config file: it replaces the default one
        at = args.index("--config")
        args = cli_run.train_args(workdir, *(args[:at] + args[at + 2 :]), config=args[at + 1])
      else:
        args = cli_run.train_args(workdir, *args)
    before = cli_run.snapshot(workdir)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as held:
      if opts.get("locked"):
        held.enter_context(cli_run.lock_held(workdir))
        before = cli_run.snapshot(workdir)  # the holder wrote its .lock
      proc = cli_run.run(
        module, args, devices=opts.get("devices"), out_dir=os.path.join(root, "logs", name), hide=opts.get("hide", ())
      )
    print(f"{name}: {time.perf_counter() - t0:.1f}s")
    return proc, before, cli_run.snapshot(workdir), workdir

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    return {**dict(zip(CASES, pool.map(one, CASES))), "__paths__": paths}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(outcomes, name):
  proc, before, after, workdir = outcomes[name]
  fragments = [f.format(**outcomes["__paths__"]) for f in CASES[name][1]]
  line = cli_run.assert_one_line_error(proc, *fragments)
  assert len(line) < 400, line
  assert after == before, f"{name} touched {workdir}: {set(after.items()) ^ set(before.items())}"
  if CASES[name][2].get("fresh"):
    assert not os.path.exists(workdir)


def test_catalogue_size():
  # Recorded in the issues' closing notes (issue 16: at least 60).
  assert len(CASES) >= 60
