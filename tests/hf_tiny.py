"""Writes random tiny HF Llama checkpoints (torch, test-only) for the parity tests."""

from __future__ import annotations

import torch
import transformers

from lazarus_jax.models.tiny import tiny_backend, tiny_hf_config


def save_tiny_hf(path, *, seed=0, torch_dtype=torch.float32, max_shard_size=None, **overrides):
  """Saves a random `LlamaForCausalLM` + the tiny tokenizer into `path`; returns the float32 model."""
  cfg_dict = tiny_hf_config(**overrides)
  cfg_dict.pop("model_type")
  config = transformers.LlamaConfig(**cfg_dict)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # non-trivial norms so a norm mix-up shows
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.to(torch_dtype).save_pretrained(path, **kwargs)
  tok = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tiny_backend(), bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
  )
  tok.save_pretrained(path)
  return model.to(torch.float32)
