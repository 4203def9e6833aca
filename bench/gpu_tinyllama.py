"""TinyLlama-shaped training throughput on one accelerator: random weights, bf16, the real train step.

  python bench/gpu_tinyllama.py [--shapes 64x128,16x1024] [--variants einsum,cudnn,einsum-unroll,cudnn-unroll]
                                [--steps 20] [--max-batch-seq 1024] [--profile DIR] [--json-dir DIR]
  python bench/gpu_tinyllama.py --tiny          # CPU smoke run (2-layer, small shapes, attention xla), seconds

22 layers, hidden 2048, 32/4 heads, intermediate 5632, vocab 32000 (TinyLlama-1.1B), base weights stored in
bf16, LoRA r32/alpha 64 on v,o over `--lora-start`..22 (float32 adapters + AdamW), the dual-reward loss at layer
12, bf16 matmuls with float32 accumulation, `--activation-dtype` residual stream (bfloat16 by default, as
`configs/tinyllama.py` resolves on a GPU). A variant is `<attention>[-unroll]`: `model.attention` (einsum | xla |
cudnn) and `model.scan_layers=False` for `-unroll`. Every variant at a shape starts from the same weights and
batch, so its first loss must equal the baseline's up to bf16 rounding (printed as `dloss`). Reports tokens/s,
MFU = model FLOPs/s / --peak-tflops (dense bf16: H100 SXM / H200 ~989; `common.model_flops_per_step` says what
is counted: frozen weights get no weight gradient), the compiled step's memory (arguments + temporaries +
outputs not aliased), and with --max-batch-seq the largest batch whose compiled step fits the device's memory.
One JSON line per measurement goes to --json-dir/ours.jsonl as it is made (a killed run keeps what it had).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from lazarus_jax.models.tiny import TINYLLAMA  # noqa: E402

TINY = dict(
  TINYLLAMA, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4
)
CLASS_IDS = (5, 6, 7, 8)
LORA_RANK = 32


def synthetic_batch(rng, batch: int, seq_len: int, vocab: int, answer_tokens: int = 8) -> dict:
  """Random tokens; prompt = first half, answer = the next `answer_tokens` tokens (shifted positions)."""
  import numpy as np

  prompt_len = seq_len // 2
  n_ans = min(answer_tokens, seq_len - prompt_len)
  tokens = rng.integers(3, vocab, (batch, seq_len)).astype(np.int32)
  pos = np.broadcast_to(prompt_len - 1 + np.arange(answer_tokens), (batch, answer_tokens)).astype(np.int32)
  weight = np.zeros((batch, answer_tokens), np.float32)
  weight[:, :n_ans] = 1.0
  return dict(
    tokens=tokens,
    mask=np.ones((batch, seq_len), np.int32),
    readout=np.full((batch,), prompt_len - 1, np.int32),
    label=rng.integers(0, 4, (batch,)).astype(np.int32),
    answer_pos=np.minimum(pos, seq_len - 1),
    answer_target=rng.integers(3, vocab, (batch, answer_tokens)).astype(np.int32),
    answer_weight=weight,
  )


def parse_shapes(text: str) -> list[tuple[int, int]]:
  return [tuple(int(x) for x in s.split("x")) for s in text.split(",") if s]


class Bench:
  """One model's weights (built once) and the compiled step per (variant, shape)."""

  def __init__(self, hf: dict, activation_dtype: str, remat: str, lora_start: int):
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from lazarus_jax.models.lora import LoRA, LoRAConfig, add_lora
    from lazarus_jax.models.model import LlamaConfig, LlamaModel, LoRAParam, pack_frozen_layers
    from lazarus_jax.training.loop import make_optimizer

    self.cfg = LlamaConfig.from_hf(
      hf, param_dtype="bfloat16", compute_dtype="bfloat16", remat=remat, activation_dtype=activation_dtype
    )
    self.layer = int(self.cfg.num_layers * 0.55)
    self.model = LlamaModel(self.cfg, rngs=nnx.Rngs(0))  # random bf16 weights, on the default device
    self.lora_cfg = LoRAConfig(rank=LORA_RANK, alpha=64.0, targets=("v", "o"), layer_start=lora_start)
    add_lora(self.model, self.lora_cfg, seed=0)
    _, base, _, rest = nnx.split(self.model, nnx.Param, LoRAParam, ...)
    self.base, self.rest = pack_frozen_layers(nnx.to_pure_dict(base)), nnx.to_pure_dict(rest)  # as train does
    tc = ml_collections.ConfigDict(
      dict(lr=5e-4, warmup_steps=50, steps=1000, end_lr_fraction=0.1, grad_clip=1.0, b1=0.9, b2=0.999, weight_decay=0.0)
    )
    self.tx, self.schedule = make_optimizer(tc)
    self.lora_params = nnx.to_pure_dict(nnx.state(LoRA(self.cfg, self.lora_cfg, nnx.Rngs(lora=0)), LoRAParam))
    self.weight, self.class_ids = jnp.asarray(0.7, jnp.float32), jnp.asarray(CLASS_IDS, jnp.int32)

  def fresh_state(self):
    import jax
    import jax.numpy as jnp

    params = {"lora": jax.tree.map(jnp.copy, self.lora_params)}
    return {
      "lora": params,
      "opt_state": self.tx.init(params),
      "step": jnp.zeros((), jnp.int32),
      "nonfinite": jnp.zeros((), jnp.int32),
      "skipped": jnp.zeros((), jnp.int32),
    }

  def lower(self, variant: str, batch_np: dict):
    """The jitted step for `variant` (same weights; the config is static, so it lives in the graph) and the
    device batch."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lazarus_jax.models.model import LoRAParam
    from lazarus_jax.training.loop import make_train_step

    attention, _, unroll = variant.partition("-")
    self.model.cfg = dataclasses.replace(self.cfg, attention=attention, scan_layers=unroll != "unroll")
    graphdef = nnx.split(self.model, nnx.Param, LoRAParam, ...)[0]
    step = make_train_step(graphdef, self.tx, self.schedule, self.layer, False, 1)
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    lowered = jax.jit(step, donate_argnums=(0,)).lower(self.fresh_state(), self.base, self.rest, batch, self.weight, self.class_ids)
    return lowered, batch


def memory(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
    args, temps, outs, alias = (m.argument_size_in_bytes, m.temp_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes)
    return dict(args_gib=args / 2**30, temps_gib=temps / 2**30, total_gib=(args + temps + outs - alias) / 2**30)
  except Exception as e:  # not every backend reports it
    return dict(mem_error=str(e)[:200])


def device_memory_gib() -> float | None:
  import jax

  try:
    return jax.devices()[0].memory_stats()["bytes_limit"] / 2**30
  except Exception:
    return None


def emit(out: dict, json_dir: str):
  out = dict(out, part=os.environ.get("BENCH_PART", ""))
  print(json.dumps(out), flush=True)
  if json_dir:
    os.makedirs(json_dir, exist_ok=True)
    with open(os.path.join(json_dir, "results.jsonl"), "a") as f:
      f.write(json.dumps(out) + "\n")


def measure(bench: Bench, variant: str, batch_size: int, seq_len: int, steps: int, peak_tflops: float, profile: str = "") -> dict:
  import jax
  import numpy as np

  batch_np = synthetic_batch(np.random.default_rng(0), batch_size, seq_len, bench.cfg.vocab_size)
  t0 = time.perf_counter()
  lowered, batch = bench.lower(variant, batch_np)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  args = (bench.base, bench.rest, batch, bench.weight, bench.class_ids)
  state = bench.fresh_state()
  state, metrics = compiled(state, *args)
  first_loss = float(metrics["loss"])
  for _ in range(2):  # warm-up
    state, metrics = compiled(state, *args)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, *args)
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - t0) / steps
  if profile:  # a perfetto trace (*.trace.json.gz) to read op by op
    with jax.profiler.trace(profile, create_perfetto_trace=True):
      for _ in range(3):
        state, metrics = compiled(state, *args)
      jax.block_until_ready(state)
  flops = common.model_flops_per_step(bench.cfg, batch_np, lora_rank=LORA_RANK, layer_start=bench.lora_cfg.layer_start)
  tokens = batch_size * seq_len
  return dict(
    kind="step",
    side="ours",
    variant=variant,
    device=str(jax.devices()[0].device_kind),
    jax=jax.__version__,
    batch=batch_size,
    seq_len=seq_len,
    lora_start=bench.lora_cfg.layer_start,
    step_s=step_s,
    tokens_per_s=tokens / step_s,
    model_tflops_per_s=flops / step_s / 1e12,
    mfu=flops / step_s / (peak_tflops * 1e12),
    compile_s=compile_s,
    first_loss=first_loss,
    loss=float(metrics["loss"]),
    remat=bench.cfg.remat,
    activation_dtype=bench.cfg.activation_dtype,
    finite=bool(np.isfinite(first_loss)),
    xla_flags=os.environ.get("XLA_FLAGS", ""),
    **memory(compiled),
  )


def max_batch(bench: Bench, variant: str, seq_len: int, limit_gib: float, start: int = 16) -> dict:
  """The largest batch (a multiple of 8) whose compiled step's memory fits `limit_gib`: compile-only, doubling
  then bisecting. The step's memory is what XLA allocates; the allocator's own reserve is not counted."""
  import numpy as np

  def total(b):
    try:
      lowered, _ = bench.lower(variant, synthetic_batch(np.random.default_rng(0), b, seq_len, bench.cfg.vocab_size))
      return memory(lowered.compile()).get("total_gib", float("inf"))
    except Exception:  # XLA refuses to compile what cannot fit
      return float("inf")

  sizes = {}

  def fits(b):
    sizes[b] = total(b)
    return sizes[b] <= limit_gib

  lo, _ = common.largest_fitting(fits, start)
  return dict(
    kind="max_batch",
    side="ours",
    variant=variant,
    seq_len=seq_len,
    limit_gib=limit_gib,
    max_batch=lo,
    tried={str(k): round(v, 2) for k, v in sorted(sizes.items())},
  )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shapes", default="64x128", help="batch x seq_len, comma separated")
  p.add_argument("--variants", default="einsum", help="<einsum|xla|cudnn>[-unroll], comma separated")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak")
  p.add_argument("--remat", default="none", help="none | full | dots")
  p.add_argument("--activation-dtype", default="bfloat16", help="model.activation_dtype: float32 | bfloat16")
  p.add_argument("--lora-start", default="0", help="first adapted layer(s), comma separated (backward depth)")
  p.add_argument("--max-batch-seq", type=int, default=0, help="also find the largest batch at this seq_len")
  p.add_argument("--max-batch-variants", default="", help="variants for --max-batch-seq (default: --variants)")
  p.add_argument("--tiny", action="store_true", help="CPU smoke run with tiny shapes")
  p.add_argument("--profile", default="", help="trace 3 steps of the fastest variant at the first shape here")
  p.add_argument("--json-dir", default="")
  a = p.parse_args()
  shapes, variants = parse_shapes(a.shapes), a.variants.split(",")
  if a.tiny:
    shapes, a.steps = [(min(b, 8), min(t, 16)) for b, t in shapes], min(a.steps, 3)

  import jax

  print(f"devices: {jax.devices()}", flush=True)
  hf = TINY if a.tiny else TINYLLAMA
  for lora_start in (min(int(x), hf["num_hidden_layers"] - 1) for x in a.lora_start.split(",")):
    bench = Bench(hf, a.activation_dtype, a.remat, lora_start)
    for b, t in shapes:
      results = []
      for v in variants:
        try:
          r = measure(bench, v, b, t, a.steps, a.peak_tflops)
        except Exception as e:  # one failing variant (no cuDNN, out of memory) must not lose the others
          r = dict(kind="step", side="ours", variant=v, batch=b, seq_len=t, error=f"{type(e).__name__}: {e}"[:400])
        if results and "first_loss" in r and "first_loss" in results[0]:
          r["dloss_vs_first_variant"] = r["first_loss"] - results[0]["first_loss"]
        results.append(r)
        emit(r, a.json_dir)
        gc.collect()
      if a.profile and (b, t) == shapes[0]:
        best = min((r for r in results if "step_s" in r), key=lambda r: r["step_s"], default=None)
        if best:
          measure(bench, best["variant"], b, t, 2, a.peak_tflops, profile=a.profile)
          emit(dict(kind="profile", variant=best["variant"], batch=b, seq_len=t, dir=a.profile), a.json_dir)
    if a.max_batch_seq:
      limit = device_memory_gib() or 1.0
      for v in (a.max_batch_variants or a.variants).split(","):
        emit(max_batch(bench, v, a.max_batch_seq, limit, start=8 if a.tiny else 16), a.json_dir)
    del bench
    gc.collect()


if __name__ == "__main__":
  main()
