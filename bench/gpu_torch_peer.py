"""The PyTorch + PEFT peer of `gpu_tinyllama.py`: the same TinyLlama-shaped model, LoRA, loss and batches.

  python bench/gpu_torch_peer.py [--shapes 64x128,16x1024] [--modes eager,compile] [--steps 20]
                                 [--max-batch-seq 1024] [--json-dir DIR]
  python bench/gpu_torch_peer.py --tiny    # CPU smoke run

HF `LlamaForCausalLM` (attn_implementation="sdpa") with random weights stored in bf16, PEFT LoRA r32/alpha 64 on
v_proj,o_proj from `--lora-start` up (float32 adapters), the forward under `torch.autocast(bfloat16)`, the
dual-reward loss at layer 12 written as a PEFT user would (`bench/torch_side.py`: lm_head(norm(hidden_states[L+1]))
at the readout + answer CE from the model's logits), AdamW with global-norm clipping. `compile` wraps the loss's
forward in `torch.compile` (default mode). Peak memory: `torch.cuda.max_memory_allocated` over the measured steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from gpu_tinyllama import CLASS_IDS, LORA_RANK, TINY, TINYLLAMA, emit, parse_shapes, synthetic_batch  # noqa: E402
from torch_side import dual_reward_loss  # noqa: E402


def build(hf: dict, device: str, lora_start: int):
  import torch
  import transformers
  from peft import LoraConfig, get_peft_model

  cfg = {k: v for k, v in hf.items() if k != "model_type"}
  hf_cfg = transformers.LlamaConfig(**cfg, attn_implementation="sdpa")
  torch.manual_seed(0)
  with torch.device(device):
    model = transformers.LlamaForCausalLM(hf_cfg).to(torch.bfloat16)
  model.train()
  layers = list(range(lora_start, hf["num_hidden_layers"]))
  lora = LoraConfig(
    r=LORA_RANK, lora_alpha=64, target_modules=["v_proj", "o_proj"], lora_dropout=0.0, bias="none", layers_to_transform=layers
  )
  model = get_peft_model(model, lora)
  for p in model.parameters():  # adapters in float32
    if p.requires_grad:
      p.data = p.data.float()
  return model


class Peer:
  def __init__(self, hf, device, lora_start, mode):
    import torch

    self.device, self.mode, self.hf = device, mode, hf
    self.model = build(hf, device, lora_start)
    self.lora_start = lora_start
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = torch.optim.AdamW(self.params, lr=5e-4, betas=(0.9, 0.999), weight_decay=0.0)
    self.class_ids = torch.tensor(CLASS_IDS, device=device)
    self.layer = int(hf["num_hidden_layers"] * 0.55)
    fn = lambda batch: dual_reward_loss(self.model, batch, self.class_ids, self.layer, 0.7)  # noqa: E731
    self.loss_fn = torch.compile(fn) if mode == "compile" else fn

  def batch(self, b, t):
    import numpy as np
    import torch

    arrays = synthetic_batch(np.random.default_rng(0), b, t, self.hf["vocab_size"])
    out = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
    return {k: (v.long() if v.dtype == torch.int32 else v) for k, v in out.items()}, arrays

  def step(self, batch):
    import torch

    self.opt.zero_grad(set_to_none=True)
    with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16):
      loss = self.loss_fn(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
    self.opt.step()
    return loss


def sync(device):
  import torch

  if device.startswith("cuda"):
    torch.cuda.synchronize()


def measure(peer: Peer, b: int, t: int, steps: int, peak_tflops: float) -> dict:
  import torch

  batch, arrays = peer.batch(b, t)
  t0 = time.perf_counter()
  first_loss = float(peer.step(batch))  # torch.compile compiles here
  sync(peer.device)
  first_s = time.perf_counter() - t0
  for _ in range(2):
    peer.step(batch)
  sync(peer.device)
  if peer.device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = peer.step(batch)
  sync(peer.device)
  step_s = (time.perf_counter() - t0) / steps
  from lazarus_jax.models.model import LlamaConfig

  flops = common.model_flops_per_step(LlamaConfig.from_hf(peer.hf), arrays, lora_rank=LORA_RANK, layer_start=peer.lora_start)
  peak = torch.cuda.max_memory_allocated() / 2**30 if peer.device.startswith("cuda") else None
  return dict(
    kind="step",
    side="torch",
    variant=peer.mode,
    device=_device_name(peer.device),
    torch=torch.__version__,
    batch=b,
    seq_len=t,
    lora_start=peer.lora_start,
    step_s=step_s,
    tokens_per_s=b * t / step_s,
    model_tflops_per_s=flops / step_s / 1e12,
    mfu=flops / step_s / (peak_tflops * 1e12),
    compile_s=first_s,
    first_loss=first_loss,
    loss=float(loss),
    peak_gib=peak,
  )


def max_batch(peer: Peer, t: int, start: int) -> dict:
  """The largest batch (to within 12.5%) whose training step runs without running out of device memory."""
  import torch

  def fits(b):
    try:
      batch, _ = peer.batch(b, t)
      peer.step(batch)
      sync(peer.device)
      return True
    except torch.cuda.OutOfMemoryError:
      return False
    finally:
      peer.opt.zero_grad(set_to_none=True)
      torch.cuda.empty_cache()

  lo, tried = common.largest_fitting(fits, start)
  total = torch.cuda.get_device_properties(0).total_memory / 2**30
  return dict(
    kind="max_batch",
    side="torch",
    variant=peer.mode,
    seq_len=t,
    limit_gib=total,
    max_batch=lo,
    tried={str(k): v for k, v in sorted(tried.items())},
  )


def _device_name(device):
  import torch

  return torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shapes", default="64x128")
  p.add_argument("--modes", default="eager", help="eager,compile")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--peak-tflops", type=float, default=989.0)
  p.add_argument("--lora-start", type=int, default=0)
  p.add_argument("--max-batch-seq", type=int, default=0, help="eager mode: also find the largest batch here")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--json-dir", default="")
  a = p.parse_args()
  import torch

  device = "cuda" if torch.cuda.is_available() else "cpu"
  shapes = parse_shapes(a.shapes)
  if a.tiny:
    shapes, a.steps = [(min(b, 8), min(t, 16)) for b, t in shapes], min(a.steps, 3)
  hf = TINY if a.tiny else TINYLLAMA
  for mode in a.modes.split(","):
    peer = Peer(hf, device, a.lora_start, mode)
    for b, t in shapes:
      try:
        r = measure(peer, b, t, a.steps, a.peak_tflops)
      except Exception as e:
        r = dict(kind="step", side="torch", variant=mode, batch=b, seq_len=t, error=f"{type(e).__name__}: {e}"[:400])
      emit(r, a.json_dir)
    if a.max_batch_seq and mode == "eager" and device.startswith("cuda"):
      emit(max_batch(peer, a.max_batch_seq, 16), a.json_dir)
    del peer
    if device.startswith("cuda"):
      torch.cuda.empty_cache()


if __name__ == "__main__":
  main()
