"""TinyLlama-shaped training throughput on one accelerator: random weights, bf16, the real train step.

  python bench/gpu_tinyllama.py [--batch 64] [--seq-len 128] [--steps 20] [--peak-tflops 989] [--json out.json]
  python bench/gpu_tinyllama.py --tiny          # CPU smoke run (2-layer, small shapes), seconds

22 layers, hidden 2048, 32/4 heads, intermediate 5632, vocab 32000 (TinyLlama-1.1B), base weights stored in
bf16, LoRA r32/alpha 64 on v,o over all layers (float32 adapters + AdamW), the dual-reward loss at layer 12,
compute bf16 with float32 accumulation. Reports tokens/s and MFU = model FLOPs/s / --peak-tflops (dense bf16:
H100 SXM ~989, H200 ~989; see `common.model_flops_per_step` for what is counted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

TINYLLAMA = dict(model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                 num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-5,
                 rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=2048)
TINY = dict(TINYLLAMA, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=4)


def synthetic_batch(rng, batch: int, seq_len: int, vocab: int, answer_tokens: int = 8) -> dict:
  """Random tokens; prompt = first half, answer = the next `answer_tokens` tokens (shifted positions)."""
  import numpy as np
  prompt_len = seq_len // 2
  n_ans = min(answer_tokens, seq_len - prompt_len)
  tokens = rng.integers(3, vocab, (batch, seq_len)).astype(np.int32)
  pos = np.broadcast_to(prompt_len - 1 + np.arange(answer_tokens), (batch, answer_tokens)).astype(np.int32)
  weight = np.zeros((batch, answer_tokens), np.float32)
  weight[:, :n_ans] = 1.0
  return dict(tokens=tokens, mask=np.ones((batch, seq_len), np.int32),
              readout=np.full((batch,), prompt_len - 1, np.int32),
              label=rng.integers(0, 4, (batch,)).astype(np.int32),
              answer_pos=np.minimum(pos, seq_len - 1), answer_target=rng.integers(3, vocab, (batch, answer_tokens)).astype(np.int32),
              answer_weight=weight)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak")
  p.add_argument("--remat", default="none", help="none | full | dots")
  p.add_argument("--activation-dtype", default="float32", help="model.activation_dtype: float32 | bfloat16")
  p.add_argument("--tiny", action="store_true", help="CPU smoke run with tiny shapes")
  p.add_argument("--profile", default="", help="also trace 3 steps with jax.profiler into this directory")
  p.add_argument("--json", default="")
  a = p.parse_args()
  if a.tiny:
    a.batch, a.seq_len, a.steps = min(a.batch, 8), min(a.seq_len, 16), min(a.steps, 3)

  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  from flax import nnx

  from lazarus_jax.lora import LoRA, LoRAConfig, add_lora
  from lazarus_jax.model import LlamaConfig, LlamaModel, LoRAParam, pack_frozen_layers
  from lazarus_jax.train import make_optimizer, make_train_step

  print(f"devices: {jax.devices()}", flush=True)
  cfg = LlamaConfig.from_hf(TINY if a.tiny else TINYLLAMA, param_dtype="bfloat16", compute_dtype="bfloat16",
                            remat=a.remat, activation_dtype=a.activation_dtype)
  layer = int(cfg.num_layers * 0.55)
  t0 = time.perf_counter()
  model = LlamaModel(cfg, rngs=nnx.Rngs(0))  # random bf16 weights, created on the default device
  lora_cfg = LoRAConfig(rank=32, alpha=64.0, targets=("v", "o"))
  add_lora(model, lora_cfg, seed=0)
  graphdef, base, _, rest = nnx.split(model, nnx.Param, LoRAParam, ...)
  base, rest = pack_frozen_layers(nnx.to_pure_dict(base)), nnx.to_pure_dict(rest)  # as lazarus_jax.train does
  tc = ml_collections.ConfigDict(dict(lr=5e-4, warmup_steps=50, steps=1000, end_lr_fraction=0.1, grad_clip=1.0,
                                      b1=0.9, b2=0.999, weight_decay=0.0))
  tx, schedule = make_optimizer(tc)
  params = {"lora": nnx.to_pure_dict(nnx.state(LoRA(cfg, lora_cfg, nnx.Rngs(lora=0)), LoRAParam))}
  state = {"lora": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
           "nonfinite": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}
  batch_np = synthetic_batch(np.random.default_rng(0), a.batch, a.seq_len, cfg.vocab_size)
  batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
  weight, class_ids = jnp.asarray(0.7, jnp.float32), jnp.asarray([5, 6, 7, 8], jnp.int32)
  setup_s = time.perf_counter() - t0

  step = make_train_step(graphdef, tx, schedule, layer, False, 1)
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0,)).lower(state, base, rest, batch, weight, class_ids).compile()
  compile_s = time.perf_counter() - t0
  try:
    mem = compiled.memory_analysis()
    mem_s = f"args {mem.argument_size_in_bytes / 2**30:.2f} GiB, temps {mem.temp_size_in_bytes / 2**30:.2f} GiB"
  except Exception:
    mem_s = "n/a"
  print(f"setup {setup_s:.1f}s, compile {compile_s:.1f}s, memory {mem_s}", flush=True)

  for _ in range(3):  # warm-up
    state, metrics = compiled(state, base, rest, batch, weight, class_ids)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(a.steps):
    state, metrics = compiled(state, base, rest, batch, weight, class_ids)
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - t0) / a.steps

  if a.profile:  # a perfetto trace (*.trace.json.gz) to read op by op
    with jax.profiler.trace(a.profile, create_perfetto_trace=True):
      for _ in range(3):
        state, metrics = compiled(state, base, rest, batch, weight, class_ids)
      jax.block_until_ready(state)

  flops = common.model_flops_per_step(cfg, batch_np, lora_rank=32)
  tokens = a.batch * a.seq_len
  out = dict(device=str(jax.devices()[0].device_kind), batch=a.batch, seq_len=a.seq_len, step_s=step_s,
             tokens_per_s=tokens / step_s, examples_per_s=a.batch / step_s, model_tflops_per_step=flops / 1e12,
             model_tflops_per_s=flops / step_s / 1e12, mfu=flops / step_s / (a.peak_tflops * 1e12),
             peak_tflops=a.peak_tflops, compile_s=compile_s, remat=a.remat, activation_dtype=a.activation_dtype,
             loss=float(metrics["loss"]),
             tiny=a.tiny)
  print(json.dumps(out, indent=1))
  print(f"{out['device']}: {out['tokens_per_s']:.0f} tokens/s, {out['model_tflops_per_s']:.1f} TFLOP/s, "
        f"MFU {100 * out['mfu']:.1f}% of {a.peak_tflops:.0f} TFLOP/s (batch {a.batch}, seq {a.seq_len})")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
