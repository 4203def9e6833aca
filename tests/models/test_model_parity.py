"""Logit and per-layer hidden-state parity with transformers' LlamaForCausalLM (torch, CPU, float32)."""

import numpy as np
import pytest
import torch

from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.model import residual_stream

from hf_tiny import save_tiny_hf

CASES = {
  "tied_gqa": dict(tie_word_embeddings=True, num_key_value_heads=4),
  "untied_mha": dict(tie_word_embeddings=False, num_key_value_heads=8),
  "llama3_rope": dict(
    num_key_value_heads=2,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16),
    max_position_embeddings=256,
    rope_theta=500000.0,
  ),
  "sharded": dict(tie_word_embeddings=False, _shard="60KB"),
  "bf16": dict(_dtype=torch.bfloat16),
  "f16": dict(_dtype=torch.float16),
}


def _tokens(batch=2, length=11, seed=0):
  return np.random.default_rng(seed).integers(3, 384, size=(batch, length)).astype(np.int32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_hidden_states_match_hf(tmp_path, case):
  overrides = dict(CASES[case])
  dtype = overrides.pop("_dtype", torch.float32)
  shard = overrides.pop("_shard", None)
  hf_model = save_tiny_hf(tmp_path, torch_dtype=dtype, max_shard_size=shard, **overrides)
  if shard:
    assert (tmp_path / "model.safetensors.index.json").exists()
  if dtype != torch.float32:  # the reference is the stored half-precision weights, compared in float32
    hf_model = type(hf_model).from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
  pre = load_pretrained(str(tmp_path))
  model = pre.build()
  tokens = _tokens()
  residual = np.asarray(residual_stream(model, tokens))
  logits = np.asarray(model.lens(residual[-1]))
  with torch.no_grad():
    out = hf_model(torch.tensor(tokens, dtype=torch.long), output_hidden_states=True)
  np.testing.assert_allclose(logits, out.logits.numpy(), atol=1e-4, rtol=0)
  n = pre.config.num_layers
  assert residual.shape[0] == n + 1 == len(out.hidden_states)
  # HF's last hidden state is after the final norm; every earlier row is the raw residual stream.
  for row in range(n):
    np.testing.assert_allclose(residual[row], out.hidden_states[row].numpy(), atol=1e-4, rtol=0)
  final_normed = hf_model.model.norm(torch.tensor(residual[n])).detach().numpy()
  np.testing.assert_allclose(final_normed, out.hidden_states[n].numpy(), atol=1e-4, rtol=0)


def test_causal_mask_future_tokens_do_not_change_past(tmp_path):
  model = load_pretrained("tiny-random").build()
  tokens = _tokens(batch=1, length=12)
  changed = tokens.copy()
  changed[0, 7:] = (changed[0, 7:] + 5) % 384
  a, b = np.asarray(model(tokens)), np.asarray(model(changed))
  np.testing.assert_allclose(a[0, :7], b[0, :7], atol=1e-6)
  assert np.abs(a[0, 7:] - b[0, 7:]).max() > 1e-3


def test_right_padding_does_not_change_real_positions():
  model = load_pretrained("tiny-random").build()
  tokens = _tokens(batch=1, length=9)
  padded = np.concatenate([tokens, np.full((1, 5), 2, np.int32)], axis=1)
  mask = np.concatenate([np.ones((1, 9), np.int32), np.zeros((1, 5), np.int32)], axis=1)
  np.testing.assert_allclose(np.asarray(model(padded, mask))[:, :9], np.asarray(model(tokens)), atol=1e-5)
