"""Shared set-up for the benchmarks: one fixed batch of real training data, our jitted step, timing helpers.

Both sides of every comparison read the same batch (written to an .npz by the parent process) so the
examples, positions and targets are identical.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def load_avg() -> str:
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine() -> str:
  model = "unknown cpu"
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
      if line.startswith("Model name:"):
        model = line.split(":", 1)[1].strip()
  except OSError:
    pass
  return f"{model}, {os.cpu_count()} cores"


def side_env(cli_module: str | None) -> dict:
  """The environment both sides of a comparison run in: the one `python -m <cli_module>` runs with (the
  training CLI re-executes with glibc's huge-page tunable, see lazarus_jax/cli/hugepages.py), given to torch too;
  None: the tunable removed."""
  env = {k: v for k, v in os.environ.items() if cli_module or k != "GLIBC_TUNABLES"}
  if cli_module:
    from lazarus_jax.cli.hugepages import reexec_env

    env = reexec_env(env, [sys.executable, "-m", cli_module]) or env
  return env


def smollm2_config(compute_dtype: str = "float32", batch_size: int = 8):
  """The embedded default's training config with eval off (what `lazarus_jax.train` runs)."""
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  from smollm2_135m import get_config

  c = get_config()
  c.model.compute_dtype = compute_dtype
  c.model.activation_dtype = "float32"  # the shipped config says auto: a benchmark names its dtypes
  c.train.batch_size = batch_size
  c.eval.enabled = False
  return c


def write_batch(path: str, batch_size: int = 8, seed_step: int = 0, seq_len: int | None = None) -> dict:
  """The first training batch of the embedded default, plus the class token ids and classifier layer.
  seq_len: pad the examples to this length (data.seq_len) instead of the data's own (16 for the default)."""
  from lazarus_jax import experiment, settings
  from lazarus_jax.data import arithmetic as data_lib
  from lazarus_jax.models.gguf_loader import embedded_gguf_path, load_gguf

  c = smollm2_config(batch_size=batch_size)
  if seq_len:
    c.data.seq_len = seq_len
  tok = load_gguf(embedded_gguf_path()).tokenizer
  s = settings.parse(c)
  ds = experiment.build_data(s, tok)
  targets = experiment.class_targets(s.classifier, tok, prompts=sorted({e.prompt for e in ds.train[:2000]}))
  labels = np.asarray([data_lib.label_index(lab, targets.labels) for lab in ds.train_labels])
  idx = data_lib.batch_indices(len(ds.train_encoded), batch_size, seed_step, c.seed, labels=labels)
  arrays = data_lib.collate(
    [ds.train_encoded[i] for i in idx],
    [ds.train_labels[i] for i in idx],
    ds.seq_len,
    c.data.max_answer_tokens,
    tok.pad_id,
    label_names=targets.labels,
  )
  arrays["class_ids"] = np.asarray(targets.token_ids, np.int32)
  arrays["classifier_layer"] = np.asarray(experiment.classifier_layer(s.classifier, 30), np.int32)
  np.savez(path, **arrays)
  return arrays


def model_flops_per_step(cfg, batch: dict, lora_rank: int, lora_targets=("v", "o"), layer_start: int = 0) -> float:
  """Useful FLOPs of one training step (2 per multiply-add), forward + backward.

  Forward: every projection at every token, attention scores/values, and the unembedding at the readout
  (classifier) and answer positions only. Backward: activation gradients (one matmul per forward matmul) from
  the top down to the lowest adapted layer, plus the adapters' weight gradients; frozen weights get none.
  """
  b, t = batch["tokens"].shape
  d, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  tokens = b * t
  proj = {"q": d * q, "k": d * kv, "v": d * kv, "o": q * d, "gate": d * f, "up": d * f, "down": f * d}
  lora_in_out = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
  per_layer = 2 * tokens * sum(proj.values()) + 2 * 2 * b * t * t * q  # matmuls + QK^T and PV
  lora = sum(2 * tokens * lora_rank * (lora_in_out[p][0] + lora_in_out[p][1]) for p in lora_targets)
  n_head_rows = b + int(batch["answer_weight"].size)
  head = 2 * n_head_rows * d * cfg.vocab_size
  forward = n * per_layer + (n - layer_start) * lora + head
  backward_layers = n - layer_start
  backward = backward_layers * (per_layer + lora) + head + backward_layers * lora  # activations + adapter grads
  return float(forward + backward)


def time_calls(fn, n: int, warmup: int = 2) -> list[float]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def largest_fitting(fits, start: int, cap: int = 4096) -> tuple[int, dict]:
  """The largest batch (a multiple of 8, to within 12.5%) for which `fits(batch)` holds: doubling from `start`,
  then bisecting. Returns (batch, {tried batch: fits}); 0 when even `start` does not fit."""
  tried = {}
  lo, hi = 0, start
  while True:
    tried[hi] = fits(hi)
    if not tried[hi] or hi >= cap:
      break
    lo, hi = hi, hi * 2
  while hi - lo > max(8, lo // 8):  # each try is a compile or a step: stop at 12.5%
    mid = (lo + hi) // 16 * 8
    tried[mid] = fits(mid)
    lo, hi = (mid, hi) if tried[mid] else (lo, mid)
  return lo, tried
