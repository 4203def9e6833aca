"""Our side of the training benchmark: the exact step `lazarus_jax.train` compiles, on a fixed batch.

python bench/ours.py --dtype float32 --batch bench_batch.npz --steps 20 [--lora-layer-start 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def build(
  compute_dtype: str,
  batch_np: dict,
  param_dtype: str = "float32",
  activation_dtype: str = "float32",
  layer_start: int = 0,
  attention: str = "",
  layer_loop: str = "",
):
  """Returns (compiled step, args tuple, compile seconds, model config)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from lazarus_jax import experiment, settings
  from lazarus_jax.models.lora import LoRA, add_lora
  from lazarus_jax.models.model import LoRAParam, pack_frozen_layers
  from lazarus_jax.training.loop import make_optimizer, make_train_step

  c = common.smollm2_config(compute_dtype, batch_size=batch_np["tokens"].shape[0])
  c.model.param_dtype = param_dtype
  c.model.activation_dtype = activation_dtype
  c.lora.layer_start = layer_start  # adapters on [layer_start, n): the backward stops there
  if attention:
    c.model.attention = attention  # model.attention (lazarus_jax/models/kernels.py); default: the config's
  if layer_loop:
    c.model.layer_loop = layer_loop  # scan | unroll
  s = settings.parse(c)
  pretrained = experiment.load_model(s.model)
  model = pretrained.build()
  lora_cfg = s.lora
  add_lora(model, lora_cfg, seed=s.seed)
  graphdef, base, _, rest = nnx.split(model, nnx.Param, LoRAParam, ...)
  base = pack_frozen_layers(jax.device_put(nnx.to_pure_dict(base)))  # as lazarus_jax.train does
  rest = nnx.to_pure_dict(rest)
  tx, schedule = make_optimizer(c.train)
  fresh = LoRA(pretrained.config, lora_cfg, nnx.Rngs(lora=c.seed))
  params = {"lora": nnx.to_pure_dict(nnx.state(fresh, LoRAParam))}
  state = {
    "lora": params,
    "opt_state": tx.init(params),
    "step": jnp.zeros((), jnp.int32),
    "nonfinite": jnp.zeros((), jnp.int32),
    "skipped": jnp.zeros((), jnp.int32),
  }
  layer = int(batch_np["classifier_layer"])
  step_fn = make_train_step(graphdef, tx, schedule, layer, c.classifier.restrict_to_classes, 1)
  batch = {k: jnp.asarray(v) for k, v in batch_np.items() if k not in ("class_ids", "classifier_layer")}
  weight = jnp.asarray(c.classifier.weight, jnp.float32)
  class_ids = jnp.asarray(batch_np["class_ids"])
  t0 = time.perf_counter()
  compiled = jax.jit(step_fn, donate_argnums=(0,)).lower(state, base, rest, batch, weight, class_ids).compile()
  compile_s = time.perf_counter() - t0
  return compiled, (state, base, rest, batch, weight, class_ids), compile_s, pretrained.config


def run(
  compute_dtype: str,
  batch_np: dict,
  steps: int,
  param_dtype: str = "float32",
  activation_dtype: str = "float32",
  layer_start: int = 0,
  warmup: int = 2,
  attention: str = "",
) -> dict:
  import jax

  t_start = time.perf_counter()
  compiled, args, compile_s, cfg = build(compute_dtype, batch_np, param_dtype, activation_dtype, layer_start, attention)
  state, rest_args = args[0], args[1:]
  losses = []

  def one():
    nonlocal state
    state, metrics = compiled(state, *rest_args)
    losses.append(metrics["loss"])
    jax.block_until_ready(state)

  times = common.time_calls(one, steps, warmup=warmup)
  b = batch_np["tokens"].shape[0]
  flops = common.model_flops_per_step(cfg, batch_np, lora_rank=32, layer_start=layer_start)
  med = sorted(times)[len(times) // 2]
  return dict(
    side="jax",
    dtype=compute_dtype,
    param_dtype=param_dtype,
    activation_dtype=activation_dtype,
    batch=b,
    seq_len=int(batch_np["tokens"].shape[1]),
    lora_layer_start=layer_start,
    attention=cfg.attention,
    resolved={"param": cfg.param_dtype, "compute": cfg.compute_dtype, "activation": cfg.activation_dtype},
    step_s_median=med,
    step_s_min=min(times),
    examples_per_s=b / med,
    compile_s=compile_s,
    peak_rss_mib=common.peak_rss_mib(),
    model_flops_per_step=flops,
    flops_per_s=flops / med,
    first_losses=[float(x) for x in losses[:3]],
    setup_s=time.perf_counter() - t_start,
    load=common.load_avg(),
  )


if __name__ == "__main__":
  p = argparse.ArgumentParser()
  p.add_argument("--dtype", default="float32", help="model.compute_dtype (auto: lazarus_jax/models/dtypes.py)")
  p.add_argument("--batch", required=True)
  p.add_argument("--param-dtype", default="float32", help="frozen base weights' storage dtype")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--activation-dtype", default="float32", help="model.activation_dtype")
  p.add_argument("--lora-layer-start", type=int, default=0, help="lora.layer_start (adapters on [start, n_layers))")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after the compile")
  p.add_argument("--attention", default="", help="model.attention: einsum | xla | cudnn | auto (default: the config's)")
  p.add_argument("--json", default="")
  a = p.parse_args()
  import numpy as np

  out = run(a.dtype, dict(np.load(a.batch)), a.steps, a.param_dtype, a.activation_dtype, a.lora_layer_start, a.warmup, a.attention)
  print(json.dumps(out))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f)
