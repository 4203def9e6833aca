"""All-layer logit lens throughput: ours (`lens.all_layer_lens`, jitted) vs a PyTorch implementation.

  python bench/bench_lens.py [--prompts 128] [--batch 32] [--json out.json]

The torch side is what a user would write with transformers: `output_hidden_states=True`, then the final norm
and lm_head at the readout position of every row (the last row is the model's own logits, already normed), full
softmax, the targets' probabilities and ranks, and the top-5 -- the same outputs ours returns. Same prompts, same
padded batches (right-padded, [batch, 16]), float32, each side in its own subprocess, torch threads = cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

TOP_K = 5


def make_batches(n_prompts: int, batch: int):
  """Padded token batches of the embedded default's evaluation prompts, and the class token ids."""
  import numpy as np

  from lazarus_jax import experiment, settings
  from lazarus_jax.data import arithmetic as data_lib
  from lazarus_jax.models.gguf_loader import embedded_gguf_path, load_gguf

  s = settings.parse(common.smollm2_config())
  tok = load_gguf(embedded_gguf_path()).tokenizer
  ds = experiment.build_data(s, tok)
  prompts = [e.prompt for e in ds.eval[:n_prompts]]
  targets = experiment.class_targets(s.classifier, tok, prompts=prompts)
  encoded = [data_lib.encode_prompt(tok, p) for p in prompts]
  seq_len = 16
  out = []
  for s in range(0, len(encoded), batch):
    chunk = encoded[s : s + batch]
    tokens = np.full((batch, seq_len), tok.pad_id, np.int32)
    mask = np.zeros((batch, seq_len), np.int32)
    mask[:, 0] = 1
    readout = np.zeros((batch,), np.int32)
    for i, ids in enumerate(chunk):
      tokens[i, : len(ids)], mask[i, : len(ids)], readout[i] = ids, 1, len(ids) - 1
    out.append((tokens, mask, readout))
  return out, np.asarray(targets.token_ids, np.int32)


def run_ours(batches, target_ids) -> dict:
  import jax

  from lazarus_jax import experiment, settings
  from lazarus_jax.analysis.lens import all_layer_lens

  c = common.smollm2_config()
  c.model.param_dtype = "float32"  # as the torch side's weights
  model = experiment.load_model(settings.parse(c).model).build()
  t0 = time.perf_counter()
  jax.block_until_ready(all_layer_lens(model, *batches[0], target_ids, top_k=TOP_K))
  compile_s = time.perf_counter() - t0

  def once():
    for b in batches:
      jax.block_until_ready(all_layer_lens(model, *b, target_ids, top_k=TOP_K))

  return dict(side="jax", compile_s=compile_s, times=common.time_calls(once, 3, warmup=1))


def run_torch(batches, target_ids) -> dict:
  import torch

  sys.path.insert(0, common.HERE)
  from torch_side import build

  model = build("float32").eval()
  base = model.base_model.model
  tids = torch.from_numpy(target_ids).long()

  @torch.no_grad()
  def lens(tokens, mask, readout):
    tokens, mask, readout = (torch.from_numpy(x).long() for x in (tokens, mask, readout))
    out = model(input_ids=tokens, attention_mask=mask, output_hidden_states=True)
    rows = torch.arange(tokens.shape[0])
    hs = torch.stack([h[rows, readout] for h in out.hidden_states[:-1]])  # [R-1, B, D], raw residual rows
    logits = torch.cat([base.lm_head(base.model.norm(hs)), out.logits[rows, readout][None]])  # [R, B, V]
    probs = torch.softmax(logits.float(), dim=-1)
    target_logits = logits[..., tids]
    ranks = 1 + (logits[..., None, :] > target_logits[..., None]).sum(-1)
    top = torch.topk(probs, TOP_K, dim=-1)
    return probs[..., tids], ranks, top.values, top.indices

  t0 = time.perf_counter()
  lens(*batches[0])
  compile_s = time.perf_counter() - t0

  def once():
    for b in batches:
      lens(*b)

  return dict(side="torch", compile_s=compile_s, times=common.time_calls(once, 3, warmup=1))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--prompts", type=int, default=128)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--side", default="", help="internal: run one side and write --json")
  p.add_argument("--hugepages", action="store_true", help="run both sides with glibc's huge-page tunable")
  p.add_argument("--json", default="")
  a = p.parse_args()
  if a.side:
    batches, target_ids = make_batches(a.prompts, a.batch)
    r = (run_ours if a.side == "jax" else run_torch)(batches, target_ids)
    med = sorted(r["times"])[len(r["times"]) // 2]
    r.update(
      prompts=a.prompts, prompts_per_s=a.prompts / med, sweep_s_median=med, peak_rss_mib=common.peak_rss_mib(), load=common.load_avg()
    )
    with open(a.json, "w") as f:
      json.dump(r, f)
    return

  print(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {common.machine()}  load {common.load_avg()}")
  env = common.side_env("lazarus_jax.train" if a.hugepages else "lazarus_jax.lens")  # default: as the lens CLI
  print(f"both sides run with GLIBC_TUNABLES={env.get('GLIBC_TUNABLES')}")
  res = {}
  for side in ("jax", "torch"):
    out = os.path.join(tempfile.mkdtemp(), f"{side}.json")
    cmd = [sys.executable, __file__, "--side", side, "--prompts", str(a.prompts), "--batch", str(a.batch), "--json", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT, env=env)
    if proc.returncode:
      sys.stderr.write(proc.stderr[-4000:])
      raise SystemExit(f"lens benchmark side {side} failed")
    with open(out) as f:
      res[side] = json.load(f)
  print(f"all-layer lens (31 rows, top-{TOP_K}, 4 targets), {a.prompts} prompts in batches of {a.batch}, float32")
  for side, r in res.items():
    print(
      f"  {side:6s} {r['prompts_per_s']:9.1f} prompts/s  first call {r['compile_s']:.1f}s  "
      f"peak RSS {r['peak_rss_mib']:.0f} MiB  load {r['load']}"
    )
  print(f"  ratio ours/torch: prompts/s x{res['jax']['prompts_per_s'] / res['torch']['prompts_per_s']:.2f}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  main()
