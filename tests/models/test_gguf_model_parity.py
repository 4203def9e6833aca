"""The converted SmolLM2 GGUF against transformers' own GGUF loader (torch, float32): weights, logits and lens
in one test, so the slow reference load (transformers dequantises the file in Python) happens once."""

import os

import numpy as np
import pytest
import torch
import transformers

from lazarus_jax.models import gguf_loader
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.model import residual_stream

PROMPTS = ["7 * 8 = ", "What is 48 divided by 6?", "23 + 45 = ", "The capital of France is", "def f(x):\n  return"]


@pytest.mark.embedded
def test_smollm2_weights_logits_and_lens_match_transformers():
  path = gguf_loader.embedded_gguf_path()
  hf = transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  ).eval()
  # The dequantised tensors, in HF's layout, before any conversion of ours.
  state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  ours = gguf_loader.load_gguf(path).tensors
  # transformers lists the tied lm_head as its own entry; ours leaves it out when tied.
  assert set(ours) == set(state) - {"lm_head.weight"}
  for name, tensor in ours.items():
    assert tensor.shape == state[name].shape, name
    np.testing.assert_allclose(tensor, state[name], rtol=0, atol=1e-6, err_msg=name)
  del state, ours

  pre = load_pretrained("smollm2-135m")
  model = pre.build()
  for prompt in PROMPTS:
    ids = pre.tokenizer.encode(prompt)
    tokens = np.asarray([ids], np.int32)
    residual = residual_stream(model, tokens)
    ours_lens = np.asarray(model.lens(residual[:, 0, -1]))  # [n_layers+1, V] at the last position
    with torch.no_grad():
      out = hf(torch.tensor([ids]), output_hidden_states=True)
      hs = out.hidden_states
      # HF's last hidden state is already normed; the earlier rows get the final norm here (the lens).
      ref_lens = [hf.lm_head(hf.model.norm(h[0, -1])).numpy() for h in hs[:-1]] + [out.logits[0, -1].numpy()]
    np.testing.assert_allclose(ours_lens[-1], out.logits[0, -1].numpy(), atol=1e-3, rtol=0, err_msg=prompt)
    assert len(ref_lens) == ours_lens.shape[0] == pre.config.num_layers + 1
    top_ours, top_ref = ours_lens.argmax(-1), np.stack(ref_lens).argmax(-1)
    np.testing.assert_array_equal(top_ours, top_ref, err_msg=prompt)
