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
from lazarus_jax.models.adapters import adapter_record, export_peft, load_adapter, model_fingerprint
from lazarus_jax.models.loading import load_pretrained, peft_base_model
from lazarus_jax.models.lora import LoRAConfig
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


def test_the_export_names_a_base_peft_resolves(trained):
  """An HF directory without a hub id in its config: the adapter names the directory, and AutoPeftModel loads
  the base from there by itself (no base model passed in)."""
  hf_dir, _, adapter_dir = trained
  pc = json.loads((adapter_dir / "adapter_config.json").read_text())
  assert pc["base_model_name_or_path"] == str(hf_dir.resolve())
  assert peft.PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path == str(hf_dir.resolve())
  assert adapter_record(str(adapter_dir))["base_model"] == {
    "base_model_name_or_path": str(hf_dir.resolve()),
    "loaded": f"{hf_dir.name} (HF safetensors)",
    "kind": "hf_dir",
  }
  model = load_pretrained(str(hf_dir)).build()
  load_adapter(model, str(adapter_dir))
  auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir)).eval()
  with torch.no_grad():
    theirs = auto(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(our_logits(model), theirs, atol=1e-4, rtol=0)


def test_the_embedded_model_exports_its_hub_original(tmp_path):
  """The embedded GGUF is no hub checkpoint: the adapter names SmolLM2's hub id, and its own record says the
  weights it trained on were the Q4_1 GGUF's."""
  pre = load_pretrained("smollm2-135m")
  assert pre.base_model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
  lcfg = LoRAConfig(rank=2, alpha=4.0, targets=("v", "o"), layer_start=16, layer_end=17)
  cfg = pre.config
  rng = np.random.default_rng(0)
  params = {
    "v_a": rng.normal(size=(1, cfg.hidden_size, 2)),
    "v_b": rng.normal(size=(1, 2, cfg.num_kv_heads * cfg.head_dim)),
    "o_a": rng.normal(size=(1, cfg.num_heads * cfg.head_dim, 2)),
    "o_b": rng.normal(size=(1, 2, cfg.hidden_size)),
  }
  out = tmp_path / "adapter"
  export_peft(params, lcfg, (16, 17), str(out), pre.base_model_id, model_fingerprint(cfg), record={"base_model": pre.base_record()})
  loaded = peft.PeftConfig.from_pretrained(str(out))
  assert loaded.base_model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
  assert loaded.peft_type == peft.PeftType.LORA and loaded.layers_to_transform == [16]
  rec = adapter_record(str(out))["base_model"]
  assert rec["kind"] == "gguf" and rec["loaded"] == "SmolLM2-135M-Instruct (embedded Q4_1 GGUF)"
  assert "Q4_1" in rec["note"] and "HuggingFaceTB/SmolLM2-135M-Instruct" in rec["note"]


def test_peft_base_model_prefers_a_hub_id(tmp_path):
  local = tmp_path / "ckpt"
  local.mkdir()
  assert peft_base_model(str(local), str(local), {"_name_or_path": "TinyLlama/TinyLlama-1.1B-Chat-v1.0"}) == (
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
  )
  # a machine path in _name_or_path (a checkpoint saved from a local copy) is no hub id: the directory itself
  assert peft_base_model(str(local), str(local), {"_name_or_path": "/data/models/x"}) == str(local)
  snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-360M" / "snapshots" / "abc123"
  snapshot.mkdir(parents=True)
  assert peft_base_model(str(snapshot), str(snapshot), {}) == "HuggingFaceTB/SmolLM2-360M"
  assert peft_base_model("HuggingFaceTB/SmolLM2-360M", str(snapshot), {}) == "HuggingFaceTB/SmolLM2-360M"
  assert peft_base_model("smollm2-135m", "/somewhere/model.gguf", None) == "HuggingFaceTB/SmolLM2-135M-Instruct"
