"""Adapters peft itself saved: the options our loader applies load and give peft's logits; every other one is
refused in one line naming it (models/peft_options.py), instead of loading and computing something else."""

import jax
import numpy as np
import peft
import pytest
import torch
from flax import nnx

from lazarus_jax.errors import UserError
from lazarus_jax.models.adapters import load_adapter
from lazarus_jax.models.loading import load_pretrained

from hf_tiny import save_tiny_hf

TOKENS = np.random.default_rng(1).integers(3, 384, size=(2, 9)).astype(np.int32)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf")
  save_tiny_hf(path, tie_word_embeddings=False)
  return path


def peft_adapter(hf_dir, out, **options):
  """A LoRA adapter saved by peft from the tiny HF model (random weights, so it changes the logits), and peft's
  logits with it."""
  import transformers

  base = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), torch_dtype=torch.float32)
  cfg = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "o_proj"], "init_lora_weights": False, **options})
  torch.manual_seed(0)
  model = peft.get_peft_model(base, cfg).eval()
  with torch.no_grad():  # whatever the init (gaussian's B is 0): weights that change the logits
    for name, p in model.named_parameters():
      if "lora_" in name:
        p.copy_(0.3 * torch.randn_like(p))
  model.save_pretrained(str(out))
  with torch.no_grad():
    return model(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()


def our_logits(model):
  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, TOKENS))


@pytest.mark.parametrize(
  "options",
  [
    {},
    {"layers_to_transform": [1, 2, 3], "layers_pattern": "layers"},
    {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "lora_dropout": 0.1},
    {"init_lora_weights": "gaussian", "fan_in_fan_out": False},
  ],
  ids=["defaults", "layers", "all_projections", "gaussian_init"],
)
def test_the_options_we_apply_load_as_peft_computes_them(hf, tmp_path, options):
  theirs = peft_adapter(hf, tmp_path / "a", **options)
  pre = load_pretrained(str(hf))
  base = our_logits(pre.build())
  model = pre.build()
  load_adapter(model, str(tmp_path / "a"))
  ours = our_logits(model)
  assert np.abs(theirs - base).max() > 1e-2  # the adapter matters: agreeing with peft means something
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


# options peft saves -> what the one error line must name
REFUSED = {
  "rslora": ({"use_rslora": True}, ["use_rslora=True", "alpha/sqrt(r)"]),
  "dora": ({"use_dora": True}, ["use_dora=True", "DoRA"]),
  "rank_pattern": ({"rank_pattern": {"v_proj": 8}}, ["rank_pattern", "per-module ranks"]),
  "alpha_pattern": ({"alpha_pattern": {"o_proj": 32}}, ["alpha_pattern", "per-module alphas"]),
  "modules_to_save": ({"modules_to_save": ["lm_head"]}, ["modules_to_save", "lm_head"]),
  "bias": ({"bias": "all"}, ["bias='all'", "biases"]),
  "lora_bias": ({"lora_bias": True}, ["lora_bias=True"]),
  "pissa": ({"init_lora_weights": "pissa"}, ["init_lora_weights='pissa'", "rewrites the base weights"]),
  "regex_targets": ({"target_modules": r".*\.(v|o)_proj"}, ["target_modules=", "regular expression"]),
  "exclude_modules": ({"exclude_modules": ["o_proj"], "target_modules": ["v_proj", "o_proj"]}, ["exclude_modules"]),
  "trainable_tokens": ({"trainable_token_indices": [5, 6]}, ["trainable_token_indices=[5, 6]"]),
  "lm_head": ({"target_modules": ["v_proj", "lm_head"]}, ["target_modules=['lm_head']", "q_proj"]),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_options_we_cannot_apply_are_refused_in_one_line(hf, tmp_path, name):
  options, fragments = REFUSED[name]
  peft_adapter(hf, tmp_path / "a", **options)
  model = load_pretrained(str(hf)).build()
  with pytest.raises(UserError) as e:
    load_adapter(model, str(tmp_path / "a"))
  line = str(e.value)
  assert "\n" not in line and all(f in line for f in fragments), line


def test_layers_to_transform_must_match_the_weights(hf, tmp_path):
  import json

  peft_adapter(hf, tmp_path / "a", layers_to_transform=[1, 2])
  cfg_file = tmp_path / "a" / "adapter_config.json"
  cfg = json.loads(cfg_file.read_text())
  cfg["layers_to_transform"] = [0, 1, 2]  # a config that claims a layer its weights do not hold
  cfg_file.write_text(json.dumps(cfg))
  with pytest.raises(UserError, match=r"layers_to_transform=\[0, 1, 2\] but its weights adapt layers \[1, 2\]"):
    load_adapter(load_pretrained(str(hf)).build(), str(tmp_path / "a"))
  cfg["layers_to_transform"], cfg["layers_pattern"] = [1, 2], "h"
  cfg_file.write_text(json.dumps(cfg))
  with pytest.raises(UserError, match="layers_pattern='h'"):
    load_adapter(load_pretrained(str(hf)).build(), str(tmp_path / "a"))
