"""bench/bench_grpo.py --trl: the TRL side is told our run's settings, and maps each to TRL's name for it.

Pure dictionaries; TRL itself is not needed (CI does not install it). TRL's own GRPOConfig is built from the same
arguments by the benchmark itself (`bench_grpo.py --trl`), where a name TRL does not accept fails the run.
"""

import argparse
import os
import sys

import pytest

from repo import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_grpo  # noqa: E402
import trl_grpo_side  # noqa: E402


def _spec(monkeypatch, **over):
  flags = dict(
    rounds=3,
    prompts=4,
    group=6,
    new_tokens=5,
    mu=2,
    kl_beta=0.02,
    dtype="bfloat16",
    init_adapter="",
    trl_threads=2,
    trl_weights_dtype="",
  )
  flags.update(over)
  a = argparse.Namespace(**flags)
  monkeypatch.setattr(bench_grpo, "round_prompts", lambda c, tok, rounds: [[{"prompt": "1 + 2 = ", "answer": "3"}]] * rounds)
  c = bench_grpo.our_config(a)
  return a, c, bench_grpo.trl_spec(a, c, tokenizer=None)


def test_trl_gets_our_settings(monkeypatch):
  a, c, spec = _spec(monkeypatch)
  args = trl_grpo_side.trl_args(spec, "/tmp/unused")
  g, t = c.grpo, c.train
  assert (g.group_size, g.max_new_tokens, g.updates_per_batch, g.kl_beta) == (a.group, a.new_tokens, a.mu, a.kl_beta)
  expected = {
    "num_generations": g.group_size,
    "max_completion_length": g.max_new_tokens,
    "num_iterations": g.updates_per_batch,
    "beta": g.kl_beta,
    "temperature": g.temperature,
    "top_p": g.top_p,
    "epsilon": g.clip_low,
    "epsilon_high": g.clip_high,
    "loss_type": trl_grpo_side.LOSS_TYPES[g.aggregation],
    "scale_rewards": "group" if g.scale_rewards else "none",
    "per_device_train_batch_size": a.prompts * a.group,
    "generation_batch_size": a.prompts * a.group,
    "gradient_accumulation_steps": 1,
    "max_steps": a.rounds * a.mu,
    "learning_rate": t.lr,
    "warmup_steps": t.warmup_steps * a.mu,
    "weight_decay": t.weight_decay,
    "adam_beta1": t.b1,
    "adam_beta2": t.b2,
    "max_grad_norm": t.grad_clip,
    "seed": c.seed,
    "bf16": True,
    "gradient_checkpointing": False,
    "shuffle_dataset": False,
  }
  assert {k: args[k] for k in expected} == expected
  assert args["lr_scheduler_kwargs"] == {"min_lr_rate": t.end_lr_fraction}
  assert spec["threads"] == 2 and spec["weights_dtype"] == "bfloat16" and len(spec["rounds_prompts"]) == a.rounds
  assert g.aggregation == "token" and args["loss_type"] == "dapo"  # the shipped default: DAPO's token-level mean


def test_trl_refuses_a_reward_it_does_not_compute(monkeypatch):
  _, _, spec = _spec(monkeypatch)
  spec["format_weight"] = 0.5
  with pytest.raises(SystemExit, match="format_weight"):
    trl_grpo_side.trl_args(spec, "/tmp/unused")
