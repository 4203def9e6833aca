"""One GRPO round (`train.objective=grpo`) on the embedded default against its FLOP floor.

  python bench/bench_grpo.py [--rounds 6] [--prompts 8] [--group 8] [--new-tokens 8] [--mu 1] [--kl-beta 0.04]
                             [--init-adapter <an SFT run>/adapter] [--json out.json]

Ours: `python -m lazarus_jax.train` (the CLI, as a user runs it) for --rounds GRPO rounds, eval off; the median
round time after the first, split into rollout (sampling with the KV cache + reference log-probs + decoding and
rewards on the host) and update (mu optimizer steps), from metrics.jsonl.

The floor: the round's model FLOPs at this machine's measured bf16 matmul peak (bench/peak.py, same invocation):
generation (prefill of every row's padded prompt, then one token per row per step for every step up to
max_new_tokens, attention over the cache, the head at each step), the reference forward (and the old-policy forward
when mu > 1) over prompt + completion, and mu forward + backward passes of the update (common.model_flops_per_step:
activation gradients down to the lowest adapted layer, adapter gradients; the head at the completion positions and
the lens readout). Every row is counted at its full padded length: the work a batched implementation does.

TRL's GRPOTrainer is not run here (see bench/RESULTS.md: no TRL side was measured on this machine yet).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def forward_flops(cfg, rows: int, seq: int, head_rows: int, lora_rank: int, targets=("v", "o"), ctx=None) -> float:
  """FLOPs of a forward pass: `rows` x `seq` tokens through every block, each attending over `ctx` keys (default
  `seq`: the masked attention computes every score), the head at `head_rows` rows."""
  d, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  proj = d * q + 2 * d * kv + q * d + 3 * d * f
  dims = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
  lora = sum(lora_rank * (dims[t][0] + dims[t][1]) for t in targets)
  tokens = rows * seq
  ctx = seq if ctx is None else ctx
  return float(n * (2 * tokens * (proj + lora) + 2 * 2 * tokens * ctx * q) + 2 * head_rows * d * cfg.vocab_size)


def round_flops(cfg, prompts: int, group: int, prompt_width: int, new_tokens: int, mu: int, kl: bool, lora_rank: int = 32) -> dict:
  import numpy as np

  n, p, t = prompts * group, prompt_width, new_tokens
  s = p + t
  generation = forward_flops(cfg, n, p, n, lora_rank) + (t - 1) * forward_flops(cfg, n, 1, n, lora_rank, ctx=s)
  scoring = forward_flops(cfg, n, s, n * t, lora_rank)  # reference or old policy: head at the completion positions
  update = common.model_flops_per_step(cfg, {"tokens": np.zeros((n, s)), "answer_weight": np.zeros((n, t))}, lora_rank)
  out = {
    "generation": generation,
    "reference": scoring if kl else 0.0,
    "old_policy": scoring if mu > 1 else 0.0,
    "update": mu * update,
  }
  out["total"] = sum(out.values())
  return out


def run_ours(a, workdir: str) -> dict:
  cmd = [
    sys.executable,
    "-m",
    "lazarus_jax.train",
    "--config",
    "configs/smollm2_135m.py",
    "--workdir",
    workdir,
    "--config.train.objective=grpo",
    f"--config.train.steps={a.rounds}",
    "--config.train.log_every=1",
    f"--config.train.batch_size={a.prompts}",
    f"--config.grpo.group_size={a.group}",
    f"--config.grpo.max_new_tokens={a.new_tokens}",
    f"--config.grpo.updates_per_batch={a.mu}",
    f"--config.grpo.kl_beta={a.kl_beta}",
    "--config.classifier.weight=0",
    "--config.eval.enabled=False",
    f"--config.train.checkpoint_every={a.rounds}",
    "--config.overwrite=True",
    f"--config.model.param_dtype={a.dtype}",
    f"--config.model.compute_dtype={a.dtype}",
    "--config.model.activation_dtype=float32",
  ] + ([f"--config.train.init_adapter={a.init_adapter}"] if a.init_adapter else [])
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT)
  if proc.returncode:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"our GRPO run failed (exit {proc.returncode})")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()][1:]  # the first round warms up
  compile_line = next((line for line in proc.stderr.splitlines() if line.startswith("compiled GRPO")), "")

  def median(key):
    vals = sorted(r[key] for r in rows)
    return vals[len(vals) // 2]

  return {
    "round_s": median("round_seconds"),
    "rollout_s": median("rollout_seconds"),
    "update_s": median("update_seconds"),
    "completions_per_s": a.prompts * a.group / median("round_seconds"),
    "response_length": sum(r["response_length"] for r in rows) / len(rows),
    "reward_mean": sum(r["reward_mean"] for r in rows) / len(rows),
    "compile": compile_line,
    "rounds_timed": len(rows),
  }


def prompt_width(tokenizer) -> int:
  """The rollout's padded prompt width: the longest training prompt (what train.py pads to)."""
  from lazarus_jax import experiment

  ds = experiment.build_data(common.smollm2_config(), tokenizer)
  return max(e.prompt_len for e in ds.train_encoded)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--new-tokens", type=int, default=8)
  p.add_argument("--mu", type=int, default=1)
  p.add_argument("--kl-beta", type=float, default=0.04)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--init-adapter", default="", help="warm start (an SFT run's adapter): realistic response lengths")
  p.add_argument("--json", default="")
  a = p.parse_args()

  from peak import matmul_peak

  from lazarus_jax.models.gguf_loader import embedded_gguf_path, load_gguf
  from lazarus_jax.models.model import LlamaConfig

  peak = {dt: matmul_peak(dt) for dt in ("float32", "bfloat16")}
  gguf = load_gguf(embedded_gguf_path())
  cfg = LlamaConfig.from_hf(gguf.config)
  width = prompt_width(gguf.tokenizer)
  del gguf
  flops = round_flops(cfg, a.prompts, a.group, width, a.new_tokens, a.mu, a.kl_beta > 0)
  load_before = common.load_avg()
  workdir = tempfile.mkdtemp(prefix="bench_grpo_")
  try:
    ours = run_ours(a, workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  floor_s = flops["total"] / peak[a.dtype]
  out = {
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "machine": common.machine(),
    "load_avg_before": load_before,
    "load_avg_after": common.load_avg(),
    "peak_flops": peak,
    "setting": vars(a),
    "prompt_width": width,
    "round_flops": flops,
    "floor_s": floor_s,
    "ours": ours,
    "ours_over_floor": ours["round_s"] / floor_s,
  }
  print(f"{out['machine']}; load {load_before} -> {out['load_avg_after']}")
  print(f"matmul peak: float32 {peak['float32'] / 1e9:.0f} GFLOP/s, bfloat16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s")
  print(
    f"GRPO round: {a.prompts} prompts x G={a.group}, <= {a.new_tokens} new tokens, prompt width {width}, "
    f"mu={a.mu}, KL beta {a.kl_beta}, {a.dtype}"
  )
  print("  FLOPs: " + ", ".join(f"{k} {v / 1e9:.0f} G" for k, v in flops.items()) + f" -> floor {floor_s:.2f} s at the {a.dtype} peak")
  print(
    f"  ours: {ours['round_s']:.2f} s/round (rollout {ours['rollout_s']:.2f} s, update {ours['update_s']:.2f} s), "
    f"{ours['completions_per_s']:.1f} completions/s = {out['ours_over_floor']:.1f}x the floor; mean response "
    f"{ours['response_length']:.1f} tokens"
  )
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
