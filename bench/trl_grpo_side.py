"""The TRL side of the GRPO benchmark: TRL's `GRPOTrainer` doing the round `bench/bench_grpo.py` times on ours.

  python bench/trl_grpo_side.py --spec spec.json [--json out.json]

`spec.json` (written by bench_grpo.py): the settings of our run and the prompts of each round, in our order
(`data.batch_indices` over the balanced training set, as `lazarus_jax.train` draws them). TRL gets:
- the model: HF `LlamaForCausalLM` from the same embedded GGUF, dequantised by our loader (bench/torch_side.py
  `build_base`), base weights in the run's dtype; LoRA r32/alpha 64 on v_proj,o_proj through `peft_config`, so
  TRL wraps it and its KL reference is the same model with the adapter disabled (ours: adapters off), adapters in
  float32 (PEFT's autocast_adapter_dtype);
- the tokenizer: our GGUF tokenizer's backend as a `PreTrainedTokenizerFast` (checked: the same ids for every prompt);
- one optimizer step per generation batch of `prompts` x G completions (per_device_train_batch_size =
  generation_batch_size = prompts * G, no accumulation), `num_iterations` = mu, and the settings `trl_args` maps
  from ours (beta, epsilon, loss_type dapo = our token-level aggregation, scale_rewards group, temperature, top_p,
  max_completion_length, AdamW hyper-parameters, warm-up + cosine schedule, grad clip); gradient checkpointing off
  (TRL's default is on; ours does no rematerialisation); bf16 autocast for bfloat16;
- the reward: `generate.exact_match` on the decoded completion (what our rollout scores);
- torch threads: `--threads` (the spec's, default 2).

Timed: wall time per optimizer step from a callback (on_step_begin -> on_step_end), and inside it the rollout
(`_generate_and_score_completions`: generation, reference log-probs, rewards), like our rollout/update split, and
inside that the generation alone (`_generate`). A
round is mu optimizer steps; the first round warms up and is left out of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

# grpo.aggregation -> TRL's loss_type: token = the mean over every completion token of the batch (DAPO), sequence =
# the mean of per-sequence means (GRPO), constant = the sum over max_new_tokens x completions (Dr. GRPO).
LOSS_TYPES = {"token": "dapo", "sequence": "grpo", "constant": "dr_grpo"}


def trl_args(spec: dict, output_dir: str) -> dict:
  """GRPOConfig keyword arguments for the spec's settings (our config key in the comment). Pure: tested without TRL."""
  if spec["format_weight"]:
    raise SystemExit("the TRL side scores the exact answer only: run with grpo.format_weight = 0")
  completions = spec["prompts"] * spec["group"]
  return dict(
    output_dir=output_dir,
    use_cpu=True,
    seed=spec["seed"],
    bf16=spec["dtype"] == "bfloat16",
    fp16=False,
    max_steps=spec["rounds"] * spec["mu"],  # TRL counts optimizer steps; ours counts rounds of mu steps
    per_device_train_batch_size=completions,  # TRL's batch is in completions: prompts x G
    gradient_accumulation_steps=1,
    generation_batch_size=completions,  # one generation batch per optimizer step: our round
    num_generations=spec["group"],  # grpo.group_size
    max_completion_length=spec["new_tokens"],  # grpo.max_new_tokens
    temperature=spec["temperature"],  # grpo.temperature
    top_p=spec["top_p"],  # grpo.top_p
    top_k=0,  # ours has no top-k
    beta=spec["kl_beta"],  # grpo.kl_beta (both: the k3 estimator against the adapters-off model)
    num_iterations=spec["mu"],  # grpo.updates_per_batch
    epsilon=spec["clip_low"],  # grpo.clip_low
    epsilon_high=spec["clip_high"],  # grpo.clip_high
    loss_type=LOSS_TYPES[spec["aggregation"]],  # grpo.aggregation
    scale_rewards="group" if spec["scale_rewards"] else "none",  # grpo.scale_rewards
    learning_rate=spec["lr"],  # train.lr
    warmup_steps=spec["warmup_steps"] * spec["mu"],  # train.warmup_steps (ours runs its schedule over steps x mu)
    lr_scheduler_type="cosine_with_min_lr",
    lr_scheduler_kwargs={"min_lr_rate": spec["end_lr_fraction"]},  # train.end_lr_fraction
    weight_decay=spec["weight_decay"],
    adam_beta1=spec["b1"],
    adam_beta2=spec["b2"],
    max_grad_norm=spec["grad_clip"],
    gradient_checkpointing=False,  # TRL's default is True; ours does no rematerialisation (model.remat = none)
    disable_dropout=True,
    shuffle_dataset=False,  # the spec's prompts are already in our order
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    dataloader_num_workers=0,
    log_completions=False,
  )


def hf_tokenizer(tok):
  import transformers

  name = tok.backend.id_to_token
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok.backend,
    bos_token=name(tok.bos_id) if tok.bos_id is not None else None,
    eos_token=name(tok.eos_id),
    pad_token=name(tok.pad_id),
  )


def run(spec: dict) -> dict:
  import datasets
  import torch
  import torch_side
  import transformers
  import trl
  from peft import set_peft_model_state_dict

  from lazarus_jax.models import generate
  from lazarus_jax.models.gguf_loader import embedded_gguf_path, load_gguf

  torch.set_num_threads(spec["threads"])
  t_start = time.perf_counter()
  tok = load_gguf(embedded_gguf_path()).tokenizer
  hf_tok = hf_tokenizer(tok)
  rows = [r for rnd in spec["rounds_prompts"] for r in rnd]
  for r in rows:
    ours, theirs = tok.encode(r["prompt"]), hf_tok(text=r["prompt"])["input_ids"]
    if ours != theirs:
      raise SystemExit(f"tokenizers differ on {r['prompt']!r}: ours {ours}, TRL's {theirs}")
  model = torch_side.build_base(spec.get("weights_dtype") or spec["dtype"])  # float32 + bf16: autocast over f32 weights

  def exact_answer(completions, answer, **_):
    return [float(generate.exact_match(c, a)) for c, a in zip(completions, answer)]

  with tempfile.TemporaryDirectory(prefix="trl_grpo_") as out_dir:
    args = trl.GRPOConfig(**trl_args(spec, out_dir))
    if args.steps_per_generation != 1 or args.num_generations != spec["group"]:  # ours: one update per round
      raise SystemExit(f"TRL derived {args.steps_per_generation} steps per generation batch, G={args.num_generations}")
    trainer = trl.GRPOTrainer(
      model=model,
      reward_funcs=exact_answer,
      args=args,
      train_dataset=datasets.Dataset.from_list(rows),
      processing_class=hf_tok,
      peft_config=torch_side.lora_config(),
    )
    if spec.get("init_adapter"):  # warm start: the SFT adapter's weights into TRL's fresh adapter (reference stays off)
      from safetensors.torch import load_file

      weights = load_file(os.path.join(spec["init_adapter"], "adapter_model.safetensors"))
      result = set_peft_model_state_dict(trainer.model, weights)
      if result.unexpected_keys:
        raise SystemExit(f"adapter keys TRL's model lacks: {result.unexpected_keys[:3]}")

    steps, rollouts, generations, logs_seen = [], [], [], []
    inner = trainer._generate_and_score_completions

    def timed(*a, **k):
      t0 = time.perf_counter()
      out = inner(*a, **k)
      rollouts.append((len(steps), time.perf_counter() - t0))
      return out

    trainer._generate_and_score_completions = timed
    generate_inner = trainer._generate  # inside the rollout: sampling alone (HF generate with its KV cache)

    def timed_generate(*a, **k):
      t0 = time.perf_counter()
      out = generate_inner(*a, **k)
      generations.append((len(steps), time.perf_counter() - t0))
      return out

    trainer._generate = timed_generate

    class Clock(transformers.TrainerCallback):
      def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

      def on_step_end(self, args, state, control, **kw):
        steps.append(time.perf_counter() - self.t0)

      def on_log(self, args, state, control, logs=None, **kw):
        logs_seen.append(dict(logs or {}))

    trainer.add_callback(Clock())
    setup_s = time.perf_counter() - t_start
    trainer.train()

  mu = spec["mu"]
  rounds = [sum(steps[i : i + mu]) for i in range(0, len(steps), mu)]

  def by_round(timed_calls):
    out = {}
    for step_index, secs in timed_calls:
      out[step_index // mu] = out.get(step_index // mu, 0.0) + secs
    return out

  rollout_by_round, generation_by_round = by_round(rollouts), by_round(generations)
  timed_rounds = list(range(1, len(rounds)))  # the first round warms up

  def median(vals):
    vals = sorted(vals)
    return vals[len(vals) // 2] if vals else float("nan")

  round_s = median([rounds[i] for i in timed_rounds])
  rollout_s = median([rollout_by_round.get(i, 0.0) for i in timed_rounds])
  train_logs = [r for r in logs_seen if "reward" in r]
  n = spec["prompts"] * spec["group"]
  return dict(
    side="trl",
    trl=trl.__version__,
    transformers=transformers.__version__,
    torch=torch.__version__,
    threads=torch.get_num_threads(),
    setup_s=setup_s,
    round_seconds=rounds,
    rollout_seconds=[rollout_by_round.get(i, 0.0) for i in range(len(rounds))],
    round_s=round_s,
    rollout_s=rollout_s,
    generation_seconds=[generation_by_round.get(i, 0.0) for i in range(len(rounds))],
    generation_s=median([generation_by_round.get(i, 0.0) for i in timed_rounds]),
    update_s=median([rounds[i] - rollout_by_round.get(i, 0.0) for i in timed_rounds]),
    completions_per_s=n / round_s,
    rounds_timed=len(timed_rounds),
    response_length=sum(r.get("completions/mean_length", 0.0) for r in train_logs) / max(len(train_logs), 1),
    reward_mean=sum(r["reward"] for r in train_logs) / max(len(train_logs), 1),
    kl=[r.get("kl") for r in train_logs],
    load=common.load_avg(),
    peak_rss_mib=common.peak_rss_mib(),
  )


if __name__ == "__main__":
  p = argparse.ArgumentParser()
  p.add_argument("--spec", required=True)
  p.add_argument("--json", default="")
  a = p.parse_args()
  with open(a.spec) as f:
    spec = json.load(f)
  out = run(spec)
  print(json.dumps(out))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f)
