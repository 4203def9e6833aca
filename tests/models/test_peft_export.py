"""The exported adapter is a real PEFT adapter: peft loads it onto the HF model and gets our logits."""

import json
import shutil

import jax
import numpy as np
import peft
import pytest
import torch
from flax import nnx

from lazarus_jax.errors import UserError
from lazarus_jax.models.adapters import load_adapter
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.model import LlamaConfig, LlamaModel
from lazarus_jax.models.tiny import tiny_hf_config
from lazarus_jax.training import loop as train

from hf_tiny import save_tiny_hf
from tiny_runs import tiny_config

TOKENS = np.random.default_rng(0).integers(3, 384, size=(2, 11)).astype(np.int32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A few high-lr steps on a saved HF tiny checkpoint, every projection adapted from layer 1 on."""
  hf_dir = tmp_path_factory.mktemp("hf")
  hf_model = save_tiny_hf(hf_dir, tie_word_embeddings=False)
  workdir = tmp_path_factory.mktemp("run")
  c = tiny_config(
    **{
      "model.path": str(hf_dir),
      "lora.targets": "q,k,v,o,gate,up,down",
      "lora.layer_start": 1,
      "train.lr": 5e-2,
      "train.warmup_steps": 1,
      "train.steps": 4,
      "train.checkpoint_every": 4,
    }
  )
  train.run(c, str(workdir))
  return hf_dir, hf_model, workdir / "adapter"


def our_logits(model):
  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, TOKENS))


def test_peft_loads_our_adapter_and_matches_our_logits(trained):
  hf_dir, hf_model, adapter_dir = trained
  with open(adapter_dir / "adapter_config.json") as f:
    pc = json.load(f)
  assert pc["layers_to_transform"] == [1, 2, 3] and pc["r"] == 4 and pc["lora_alpha"] == 8.0

  pre = load_pretrained(str(hf_dir))
  base = our_logits(pre.build())
  model = pre.build()
  lcfg = load_adapter(model, str(adapter_dir))
  assert sorted(lcfg.targets) == sorted(("q", "k", "v", "o", "gate", "up", "down"))
  assert (lcfg.layer_start, lcfg.layer_end) == (1, 4)
  ours = our_logits(model)
  assert np.abs(ours - base).max() > 1e-2  # the trained adapters change the model: the comparison means something

  peft_model = peft.PeftModel.from_pretrained(hf_model, str(adapter_dir)).eval()
  n_lora = sum(1 for name, _ in peft_model.named_modules() if name.endswith("lora_A"))
  assert n_lora == 7 * 3  # every target on layers 1..3, none on layer 0
  with torch.no_grad():
    theirs = peft_model(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def _other_model(**overrides):
  # Abstract weights suffice: load_adapter reads the config and attaches fresh adapters only.
  return nnx.eval_shape(lambda: LlamaModel(LlamaConfig.from_hf(tiny_hf_config(**overrides)), rngs=nnx.Rngs(0)))


def test_load_adapter_refuses_another_model(trained, tmp_path):
  _, _, adapter_dir = trained
  with pytest.raises(UserError, match="different base model"):
    load_adapter(_other_model(intermediate_size=256), str(adapter_dir))
  # Without our fingerprint (e.g. an adapter from elsewhere), the tensor shapes still give it away.
  bare = tmp_path / "bare"
  shutil.copytree(adapter_dir, bare)
  (bare / "lazarus_jax_model.json").unlink()
  with pytest.raises(UserError, match="another base model"):
    load_adapter(_other_model(hidden_size=32, head_dim=4), str(bare))
  with pytest.raises(UserError, match="layer 3"):
    load_adapter(_other_model(num_hidden_layers=2), str(bare))
