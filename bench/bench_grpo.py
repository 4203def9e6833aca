"""One GRPO round (`train.objective=grpo`) on the embedded default against its FLOP floor.

  python bench/bench_grpo.py [--rounds 6] [--prompts 8] [--group 8] [--new-tokens 8] [--mu 1] [--kl-beta 0.04]
                             [--init-adapter <an SFT run>/adapter] [--trl] [--trl-threads 2] [--json out.json]

Ours: `python -m lazarus_jax.train` (the CLI, as a user runs it) for --rounds GRPO rounds, eval off; the median
round time after the first, split into rollout (sampling with the KV cache + reference log-probs + decoding and
rewards on the host) and update (mu optimizer steps), from metrics.jsonl.

The floor: the round's model FLOPs at this machine's measured bf16 matmul peak (bench/peak.py, same invocation):
generation (prefill of every row's padded prompt, then one token per row per step for every step up to
max_new_tokens, attention over the cache, the head at each step), the reference forward (and the old-policy forward
when mu > 1) over prompt + completion, and mu forward + backward passes of the update (common.model_flops_per_step:
activation gradients down to the lowest adapted layer, adapter gradients; the head at the completion positions and
the lens readout). Every row is counted at its full padded length: the work a batched implementation does.

--trl: TRL's GRPOTrainer in the same invocation (bench/trl_grpo_side.py, a subprocess, after ours), on the same
weights, LoRA, prompts (each round's, in our order), G, lengths, sampling, KL, mu, reward and optimizer settings
(`trl_spec`); its median round after the first beside ours, as a ratio. Needs the [bench] extra
(`pip install -c constraints.txt -e ".[bench]"`, see bench/RESULTS.md). TRL runs on torch with --trl-threads threads.
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
    "round_seconds": [r["round_seconds"] for r in rows],
  }


def round_prompts(c, tokenizer, rounds: int) -> list[list[dict]]:
  """Each round's prompts and answers, as `lazarus_jax.train` draws them (training/loop.py `local_indices`): the
  balanced batch order of the training split, round r = step r."""
  from lazarus_jax import experiment, settings
  from lazarus_jax.data import arithmetic as data_lib

  ds = experiment.build_data(settings.parse(c), tokenizer)
  labels = experiment.balance_ids(ds.train_labels)
  out = []
  for step in range(rounds):
    idx = data_lib.batch_indices(len(ds.train_encoded), c.train.batch_size, step, c.seed, labels=labels)
    out.append([{"prompt": ds.train[i].prompt, "answer": ds.train[i].answer} for i in idx])
  return out


def trl_spec(a, c, tokenizer) -> dict:
  """What the TRL side is told: our run's settings (the CLI flags above over the shipped config) and its prompts."""
  g, t = c.grpo, c.train
  return {
    "rounds": a.rounds,
    "prompts": a.prompts,
    "group": a.group,
    "new_tokens": a.new_tokens,
    "mu": a.mu,
    "kl_beta": a.kl_beta,
    "temperature": g.temperature,
    "top_p": g.top_p,
    "clip_low": g.clip_low,
    "clip_high": g.clip_high,
    "aggregation": g.aggregation,
    "scale_rewards": g.scale_rewards,
    "format_weight": g.format_weight,
    "lr": t.lr,
    "warmup_steps": t.warmup_steps,
    "end_lr_fraction": t.end_lr_fraction,
    "weight_decay": t.weight_decay,
    "b1": t.b1,
    "b2": t.b2,
    "grad_clip": t.grad_clip,
    "seed": c.seed,
    "dtype": a.dtype,
    "threads": a.trl_threads,
    "weights_dtype": a.trl_weights_dtype or a.dtype,
    "init_adapter": a.init_adapter,
    "rounds_prompts": round_prompts(c, tokenizer, a.rounds),
  }


def our_config(a):
  """The shipped config with the flags run_ours passes that trl_spec reads (the rest stay at their defaults)."""
  c = common.smollm2_config(a.dtype, a.prompts)
  c.grpo.group_size, c.grpo.max_new_tokens, c.grpo.updates_per_batch, c.grpo.kl_beta = a.group, a.new_tokens, a.mu, a.kl_beta
  return c


def run_trl(spec: dict, workdir: str) -> dict:
  spec_path, out_path = os.path.join(workdir, "trl_spec.json"), os.path.join(workdir, "trl_out.json")
  with open(spec_path, "w") as f:
    json.dump(spec, f)
  cmd = [sys.executable, os.path.join(common.HERE, "trl_grpo_side.py"), "--spec", spec_path, "--json", out_path]
  proc = subprocess.run(
    cmd, capture_output=True, text=True, cwd=common.ROOT, env=common.side_env("lazarus_jax.train")
  )  # the env ours runs in
  if proc.returncode:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"the TRL side failed (exit {proc.returncode})")
  with open(out_path) as f:
    return json.load(f)


def prompt_width(tokenizer) -> int:
  """The rollout's padded prompt width: the longest training prompt (what train.py pads to)."""
  from lazarus_jax import experiment, settings

  ds = experiment.build_data(settings.parse(common.smollm2_config()), tokenizer)
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
  p.add_argument("--trl", action="store_true", help="also run TRL's GRPOTrainer (bench/trl_grpo_side.py)")
  p.add_argument("--trl-threads", type=int, default=2)
  p.add_argument(
    "--trl-weights-dtype", default="", help="TRL's base weights (default: --dtype); float32 with --dtype bfloat16 = autocast only"
  )
  p.add_argument("--json", default="")
  a = p.parse_args()
  if a.trl:
    import importlib.util

    if importlib.util.find_spec("trl") is None:
      raise SystemExit('--trl needs TRL: pip install -c constraints.txt -e ".[bench]"')

  from peak import matmul_peak

  from lazarus_jax.models.gguf_loader import embedded_gguf_path, load_gguf
  from lazarus_jax.models.model import LlamaConfig

  peak = {dt: matmul_peak(dt) for dt in ("float32", "bfloat16")}
  gguf = load_gguf(embedded_gguf_path())
  cfg = LlamaConfig.from_hf(gguf.config)
  width = prompt_width(gguf.tokenizer)
  spec = trl_spec(a, our_config(a), gguf.tokenizer) if a.trl else None
  del gguf
  flops = round_flops(cfg, a.prompts, a.group, width, a.new_tokens, a.mu, a.kl_beta > 0)
  load_before = common.load_avg()
  workdir = tempfile.mkdtemp(prefix="bench_grpo_")
  try:
    ours = run_ours(a, workdir)
    load_between = common.load_avg()
    theirs = run_trl(spec, workdir) if a.trl else None
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
  if theirs:
    out["load_avg_between"] = load_between
    out["trl_spec"] = {k: v for k, v in spec.items() if k != "rounds_prompts"}
    out["trl"] = theirs
    out["trl_over_floor"] = theirs["round_s"] / floor_s
    out["trl_over_ours"] = theirs["round_s"] / ours["round_s"]
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
  if theirs:
    print(
      f"  TRL {theirs['trl']} GRPOTrainer ({theirs['threads']} torch threads): {theirs['round_s']:.2f} s/round "
      f"(rollout {theirs['rollout_s']:.2f} s of which generation {theirs['generation_s']:.2f} s, update "
      f"{theirs['update_s']:.2f} s), {theirs['completions_per_s']:.2f} "
      f"completions/s = {out['trl_over_floor']:.1f}x the floor; mean response {theirs['response_length']:.1f} tokens"
    )
    print(f"  ours is {out['trl_over_ours']:.1f}x TRL's completions/s (load before TRL {load_between}, after {out['load_avg_after']})")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
