"""The PyTorch + PEFT side of the training benchmark: what a user would otherwise write.

HF `LlamaForCausalLM` built from the same GGUF weights (our loader's HF-layout float32 tensors), peft LoRA
r32/alpha 64 on v_proj,o_proj (all layers), the same batch and the same dual-reward loss:
  classifier CE of lm_head(norm(hidden_states[L+1])) at the readout position (full vocabulary) and the shifted
  answer CE at the answer positions, total = w * cls + (1 - w) * answer; AdamW (same hyper-parameters as ours,
  global-norm clipping 1.0); torch threads = cores.
bfloat16: base weights stored in bf16 (frozen, no master copy needed), adapters and AdamW state in float32,
forward under `torch.autocast("cpu", bfloat16)` -- the usual PEFT mixed-precision recipe on CPU.

  python bench/torch_side.py --dtype float32 --batch bench_batch.npz --steps 10 [--lora-layer-start 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def build_base(dtype: str):
  """HF `LlamaForCausalLM` from the embedded GGUF (our loader's dequantised HF-layout float32 tensors), in `dtype`,
  in train mode, no adapters (bench/trl_grpo_side.py gives it to TRL, which adds them)."""
  import torch
  import transformers

  from lazarus_jax.models.gguf_loader import embedded_gguf_path, load_gguf

  ckpt = load_gguf(embedded_gguf_path())
  cfg = dict(ckpt.config)
  cfg.pop("model_type", None)
  hf_cfg = transformers.LlamaConfig(**cfg)
  with torch.device("meta"):
    model = transformers.LlamaForCausalLM(hf_cfg)
  state = {k: torch.from_numpy(v) for k, v in ckpt.tensors.items()}
  model.load_state_dict(state, strict=False, assign=True)
  model.tie_weights()
  model.model.rotary_emb = type(model.model.rotary_emb)(hf_cfg)  # rebuild the meta-device rope buffers
  if dtype == "bfloat16":
    model = model.to(torch.bfloat16)
  model.train()
  return model


def lora_config(layer_start: int = 0, n_layers: int = 30):
  """layer_start > 0: adapters on layers [layer_start, n_layers) only (PEFT's layers_to_transform); autograd then
  stops at the lowest adapted layer, as ours does."""
  from peft import LoraConfig

  layers = list(range(layer_start, n_layers)) if layer_start else None
  return LoraConfig(
    r=32,
    lora_alpha=64,
    target_modules=["v_proj", "o_proj"],
    lora_dropout=0.0,
    bias="none",
    layers_to_transform=layers,
  )


def build(dtype: str, layer_start: int = 0):
  import torch
  from peft import get_peft_model

  torch.set_num_threads(os.cpu_count())
  model = build_base(dtype)
  lora = lora_config(layer_start, model.config.num_hidden_layers)
  model = get_peft_model(model, lora)
  for p in model.parameters():  # adapters in float32 (PEFT's autocast_adapter_dtype does this too)
    if p.requires_grad:
      p.data = p.data.float()
  return model


def dual_reward_loss(model, batch, class_ids, layer: int, w: float):
  import torch
  import torch.nn.functional as F

  out = model(input_ids=batch["tokens"], attention_mask=batch["mask"], output_hidden_states=True)
  base = model.base_model.model
  b = batch["tokens"].shape[0]
  rows = torch.arange(b)
  h_l = out.hidden_states[layer + 1][rows, batch["readout"]]  # after block L, at the readout position
  cls_logits = base.lm_head(base.model.norm(h_l)).float()
  cls_loss = F.cross_entropy(cls_logits, class_ids[batch["label"]])
  logits = out.logits.float()  # [B, T, V]: HF computes the head at every position
  ans_logits = logits[rows[:, None], batch["answer_pos"]]  # position t predicts token t+1
  nll = F.cross_entropy(ans_logits.reshape(-1, logits.shape[-1]), batch["answer_target"].reshape(-1), reduction="none")
  wts = batch["answer_weight"].reshape(-1)
  ans_loss = (nll * wts).sum() / wts.sum().clamp(min=1.0)
  return w * cls_loss + (1 - w) * ans_loss


def run(dtype: str, batch_np: dict, steps: int, layer_start: int = 0, warmup: int = 1) -> dict:
  import torch

  t_start = time.perf_counter()
  model = build(dtype, layer_start)
  layer = int(batch_np["classifier_layer"])
  class_ids = torch.from_numpy(batch_np["class_ids"]).long()
  batch = {k: torch.from_numpy(v) for k, v in batch_np.items() if k not in ("class_ids", "classifier_layer")}
  batch = {k: (v.long() if v.dtype == torch.int32 else v) for k, v in batch.items()}
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.999), weight_decay=0.0)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / 50, 1.0))  # our linear warm-up from 0
  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
  losses = []

  def one():
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = dual_reward_loss(model, batch, class_ids, layer, 0.7)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    losses.append(float(loss.detach()))

  t0 = time.perf_counter()
  one()  # first step: torch's "compile" (allocator warm-up, oneDNN primitive creation)
  first_s = time.perf_counter() - t0
  times = common.time_calls(one, steps, warmup=warmup)
  b = batch_np["tokens"].shape[0]
  med = sorted(times)[len(times) // 2]
  return dict(
    side="torch",
    dtype=dtype,
    batch=b,
    seq_len=int(batch_np["tokens"].shape[1]),
    lora_layer_start=layer_start,
    n_trainable=sum(p.numel() for p in params),
    step_s_median=med,
    step_s_min=min(times),
    examples_per_s=b / med,
    compile_s=first_s,
    peak_rss_mib=common.peak_rss_mib(),
    first_losses=losses[:3],
    setup_s=time.perf_counter() - t_start,
    threads=torch.get_num_threads(),
    load=common.load_avg(),
  )


if __name__ == "__main__":
  p = argparse.ArgumentParser()
  p.add_argument("--dtype", default="float32")
  p.add_argument("--batch", required=True)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--lora-layer-start", type=int, default=0, help="adapters on layers [start, n_layers)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first one")
  p.add_argument("--json", default="")
  a = p.parse_args()
  import numpy as np

  out = run(a.dtype, dict(np.load(a.batch)), a.steps, a.lora_layer_start, a.warmup)
  print(json.dumps(out))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f)
