"""The Python API (also as `lazarus_jax.<name>`): the model, its residual stream, the all-layer logit lens,
probes, generation and plots, as arrays a notebook can use (the CLIs write files; this returns values).

  import lazarus_jax as lj
  m = lj.load("smollm2-135m")                            # adapter="runs/smollm2/adapter" to add trained LoRA
  lens = lj.logit_lens(m, ["7 * 8 = ", "23 + 45 = "])    # targets: the operation words by default
  lens.target_probs[:, 17]                               # [prompts, targets] after block 16
  lens.top_tokens(0, 17)                                 # the lens's top-5 tokens for prompt 0 at that row
  lj.plot_lens(lens)                                     # a matplotlib Figure (path= to save a PNG)
  lj.generate_text(m, ["7 * 8 = "], max_new_tokens=4)    # greedy continuations (text), with the KV cache
  lj.intervene(m, ["7 * 8 = "], row=17, ablate=lj.class_directions(m)).texts  # answers without the class words

(`lazarus_jax.models.generate` is the decoding module, hence `generate_text`.) Rows: row 0 is the embeddings, row
r > 0 the stream after block r - 1 (DESIGN.md §2), read at each prompt's last token (the readout position used
in training and evaluation).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from lazarus_jax.errors import UserError


@dataclasses.dataclass
class Loaded:
  """A model ready to use: `model` (a Flax NNX `LlamaModel`, adapters attached when given), its tokenizer."""

  model: object
  tokenizer: object
  name: str
  adapter: object | None = None  # the adapter's LoRAConfig

  @property
  def n_layers(self) -> int:
    return self.model.cfg.num_layers


def load(source: str = "smollm2-135m", adapter: str | None = None, dtype: str = "float32") -> Loaded:
  """A model by name (`smollm2-135m`, `tiny-random`), HF directory, .gguf file or hub id; `adapter`: a PEFT
  adapter directory (a run's `<workdir>/adapter`). `dtype`: float32 | bfloat16 weights and matmuls."""
  from lazarus_jax.models import adapters
  from lazarus_jax.models.loading import load_pretrained

  pre = load_pretrained(source, param_dtype=dtype, compute_dtype=dtype)
  model = pre.build()
  lora = adapters.load_adapter(model, adapter) if adapter else None
  return Loaded(model, pre.tokenizer, pre.name, lora)


def encode(m: Loaded, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Right-padded tokens [B, T], mask [B, T] (1 = real) and readout index [B] (each prompt's last token)."""
  from lazarus_jax.data.arithmetic import encode_prompt

  if isinstance(prompts, str):
    prompts = [prompts]
  if not prompts:
    raise UserError("no prompts given")
  from lazarus_jax.models.padding import pad_prompts

  ids = [encode_prompt(m.tokenizer, p) for p in prompts]
  if not all(ids):
    raise UserError(f"prompt {prompts[[bool(x) for x in ids].index(False)]!r} encodes to no tokens")
  return pad_prompts(ids, max(len(x) for x in ids), m.tokenizer.pad_id)


def residual_stream(m: Loaded, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """The whole residual stream [rows, B, T, D] (float32) and the mask [B, T]."""
  from lazarus_jax.models import model as model_lib

  tokens, mask, _ = encode(m, prompts)
  return np.asarray(model_lib.residual_stream(m.model, tokens, mask), np.float32), mask


def readout_features(m: Loaded, prompts: Sequence[str]) -> np.ndarray:
  """The residual stream at each prompt's readout position, every row: [rows, B, D] (what probes fit)."""
  from lazarus_jax.analysis import lens as lens_lib

  tokens, mask, readout = encode(m, prompts)
  h, _ = lens_lib.readout_lens(m.model, tokens, mask, readout)
  return np.asarray(h, np.float32)


@dataclasses.dataclass
class Lens:
  """The all-layer logit lens at each prompt's readout position. Arrays are [prompts, rows, ...]."""

  prompts: list[str]
  labels: list[str]  # the target labels, in the order of the last axis of target_probs / target_ranks
  target_probs: np.ndarray  # [B, R, K]
  target_ranks: np.ndarray  # [B, R, K], 1 = the lens's top token
  top_ids: np.ndarray  # [B, R, top_k]
  top_probs: np.ndarray  # [B, R, top_k]
  tokenizer: object = dataclasses.field(repr=False, default=None)

  @property
  def predicted(self) -> np.ndarray:
    """[B, R] the index of the most probable target label at each row."""
    return np.argmax(self.target_probs, axis=-1)

  def top_tokens(self, prompt: int, row: int) -> list[tuple[str, float]]:
    return [(self.tokenizer.token_str(int(t)), float(p)) for t, p in zip(self.top_ids[prompt, row], self.top_probs[prompt, row])]


def logit_lens(m: Loaded, prompts: Sequence[str], targets: Mapping[str, str] | Sequence[str] | None = None, top_k: int = 5) -> Lens:
  """The logit lens (unembed(final_norm(h))) at every row, read at each prompt's last token, in one jitted call.

  targets: label -> word, or a list of words (each its own label); default: add, subtract, multiply, divide."""
  from lazarus_jax.analysis import lens as lens_lib
  from lazarus_jax.data.targets import resolve_targets

  if isinstance(prompts, str):
    prompts = [prompts]
  if targets is not None and not isinstance(targets, Mapping):
    targets = {w.strip(): w for w in targets}
  resolved = resolve_targets(m.tokenizer, targets, list(prompts), allow_target_in_prompt=True)
  tokens, mask, readout = encode(m, prompts)
  out = lens_lib.all_layer_lens(m.model, tokens, mask, readout, resolved.token_ids, top_k=top_k)
  out = {k: np.asarray(v) for k, v in out.items()}
  return Lens(
    list(prompts), list(resolved.labels), out["target_probs"], out["target_ranks"], out["top_ids"], out["top_probs"], m.tokenizer
  )


def fit_probes(features: np.ndarray, labels: Sequence, test_fraction: float = 0.3, seed: int = 0, **kwargs):
  """Linear probes, one per row, on `features` [rows, N, D] (e.g. `readout_features`) with a stratified
  train/test split; returns `probes.ProbeResults` (accuracy per row for real and control labels)."""
  from lazarus_jax.analysis import probes

  labels = list(labels)
  train_idx, test_idx = probes.split_indices(len(labels), test_fraction, seed, stratify_labels=labels)
  return probes.fit_probes(features, labels, train_idx, test_idx, seed=seed, **kwargs)


def generate_text(m: Loaded, prompts: Sequence[str], max_new_tokens: int = 8) -> list[str]:
  """Greedy continuations (text), batched, with the KV cache; stops at the tokenizer's EOS."""
  from lazarus_jax.data.arithmetic import encode_prompt
  from lazarus_jax.models.generate import greedy_generate

  if isinstance(prompts, str):
    prompts = [prompts]
  ids = [encode_prompt(m.tokenizer, p) for p in prompts]
  out = greedy_generate(m.model, ids, max_new_tokens, m.tokenizer.eos_id, m.tokenizer.pad_id)
  return [m.tokenizer.decode(x) for x in out]


def class_directions(m: Loaded, words: Sequence[str] = ("add", "subtract", "multiply", "divide")) -> np.ndarray:
  """[K, D]: the residual-stream direction the logit lens reads for each word's token (g * W_U[token]; the
  interventions' "class directions", analysis/interventions.py)."""
  from lazarus_jax.analysis import interventions
  from lazarus_jax.data.targets import resolve_targets

  resolved = resolve_targets(m.tokenizer, {w: w for w in words}, [], allow_target_in_prompt=True)
  return interventions.class_directions(m.model, resolved.token_ids)


@dataclasses.dataclass
class Intervention:
  """The model's greedy answers with the residual stream edited at the readout (each prompt's last token)."""

  texts: list[str]  # greedy continuations
  logits: np.ndarray  # [B, V] the final-layer logits at the readout (the first answer token's distribution)
  readout: np.ndarray  # [rows, B, D] the residual rows at the readout, after the edit


def intervene(
  m: Loaded,
  prompts: Sequence[str],
  row: int,
  ablate: np.ndarray | None = None,
  add: np.ndarray | None = None,
  max_new_tokens: int = 8,
) -> Intervention:
  """Edits residual row `row` (0 = embeddings, r = after block r-1; the classifier layer L is row L+1) at the
  readout, then decodes: `ablate` [k, D] directions are projected out (e.g. `class_directions(m)`), then `add`
  ([D], or [B, D] per prompt) is added. Neither: the plain model. Later rows and the answer see the edit."""
  from lazarus_jax.analysis import interventions
  from lazarus_jax.data.arithmetic import encode_prompt

  if isinstance(prompts, str):
    prompts = [prompts]
  n_rows, dim = m.n_layers + 1, m.model.cfg.hidden_size
  if not 0 <= row < n_rows:
    raise UserError(f"row {row} is outside 0..{n_rows - 1} (row r = after block r-1)")
  basis = None if ablate is None else interventions.orthonormal_basis(np.atleast_2d(ablate))
  if add is not None:
    add = np.broadcast_to(np.asarray(add, np.float32), (len(prompts), dim))
  edit = interventions.make_edit(n_rows, len(prompts), dim, rows=[row], basis=basis, add=add)
  ids = [encode_prompt(m.tokenizer, p) for p in prompts]
  run = interventions.run_edited(m.model, m.tokenizer, ids, edit, max_new_tokens=max_new_tokens)
  return Intervention(run.texts, np.asarray(run.logits), np.asarray(run.readout))


def position_lens(m: Loaded, prompt: str, top_k: int = 1) -> dict:
  """The logit lens at every row and every position of one prompt (the top_k tokens of each cell): what the
  mechanism report draws as its layer x position figure."""
  from lazarus_jax.analysis import lens as lens_lib

  return lens_lib.position_lens(m.model, m.tokenizer, prompt, top_k=top_k)


def plot_lens(lens: Lens, path: str | None = None, prompt: int = 0):
  """A rows x targets heatmap of log10 p(target) for one prompt, with the lens's top token at each row;
  returns the matplotlib Figure (saved as PNG to `path` when given)."""
  import matplotlib

  if path:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  probs = lens.target_probs[prompt]  # [R, K]
  rows = probs.shape[0]
  fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(lens.labels), 1.0 + 0.22 * rows), constrained_layout=True)
  image = ax.imshow(
    np.log10(np.maximum(probs, 1e-10)), aspect="auto", origin="lower", cmap="viridis", vmin=-10, vmax=0, interpolation="nearest"
  )
  ax.set_xticks(range(len(lens.labels)), lens.labels, rotation=45, ha="right")
  ax.set_yticks(
    range(rows), [("emb" if r == 0 else f"b{r - 1}") + f" {lens.top_tokens(prompt, r)[0][0]!r}" for r in range(rows)], fontsize=7
  )
  ax.set_title(repr(lens.prompts[prompt]))
  fig.colorbar(image, ax=ax, label="log10 p(target)")
  if path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
  return fig
