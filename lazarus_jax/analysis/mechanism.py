"""Is the classifier used? The `mechanism` section of evaluate's results.json (`eval.mechanism.enabled`).

Per model (base, and the adapted one when an adapter is evaluated), on a seeded random subset of the held-out prompts
(`eval.mechanism.max_examples_per_op` per operation):
  - interventions (`interventions.py`): class-direction vs random ablation at each row, steering at L, activation
    patching at each row; answers are the model's own greedy decoding;
  - the tuned lens (`tuned_lens.py`) trained on training prompts, beside the logit lens;
  - attention from the readout to the prompt's token roles, per layer and head (`vo_analysis.py`): operands and
    operator; fewshot also its solved examples; word has no operator token, so no operator role.
Every format of `data_lib.MECHANISM_FORMATS` has counterpart prompts (interventions.counterpart_example) and token
roles (vo_analysis.role_spans).
For the adapted model also: the LoRA update norms per layer and head, and how much of each head's OV change writes
the class-word directions. Figures: `mechanism_*.png` beside report.md (report.py draws them).

Every function returns JSON-ready dicts; a notebook calls them (or the library modules) directly:

  import lazarus_jax as lj
  from lazarus_jax.data import arithmetic as data
  from lazarus_jax.analysis import lens
  from lazarus_jax.data import targets
  from lazarus_jax.analysis import interventions as iv
  m = lj.load("smollm2-135m", adapter="runs/smollm2/adapter", dtype="bfloat16")
  examples = [data.make_example(7, "multiply", 8, "symbolic"), data.make_example(23, "add", 45, "symbolic")]
  prep = iv.prepare(m.model, m.tokenizer, examples)          # the clean greedy run, readout rows, final logits
  ids = targets.resolve_targets(m.tokenizer, allow_target_in_prompt=True).token_ids
  iv.ablation(m.model, m.tokenizer, prep, ids, rows=[17])    # one row: the class directions vs controls
  iv.patching(m.model, m.tokenizer, prep, rows=range(31))    # the layer x effect curve
  lens.position_lens(m.model, m.tokenizer, "7 * 8 = ")       # the layer x position grid
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

from lazarus_jax.analysis import interventions, tuned_lens, vo_analysis
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.settings import mechanism_rows


def subset(examples, cap: int, seed: int) -> list:
  """A seeded random subset of at most `cap` examples per operation (and format), in the original order."""
  keep = []
  rng = np.random.default_rng([seed, 7927])
  for key in sorted({(e.fmt, e.operation) for e in examples}):
    idx = [i for i, e in enumerate(examples) if (e.fmt, e.operation) == key]
    keep += idx if len(idx) <= cap else list(rng.choice(idx, size=cap, replace=False))
  return [examples[i] for i in sorted(keep)]


def analyse_model(
  model, tok, examples, train_examples, targets, layer: int, c, timing: dict | None = None, tag: str = "model"
) -> dict:
  """Interventions, tuned lens and readout attention for one model (the one `model` is now)."""
  m = c.eval.mechanism
  timing = {} if timing is None else timing
  n_rows = model.cfg.num_layers + 1
  rows = mechanism_rows(m.rows, n_rows, layer)
  labels = list(targets.labels)
  class_ids = list(targets.token_ids)
  chosen = subset(examples, m.max_examples_per_op, c.seed)
  out = {"n": len(chosen), "rows": rows, "layer": layer, "row": layer + 1}

  t0 = time.perf_counter()
  train_pairs = interventions.train_pairs_by_operation(train_examples)  # fewshot counterparts' solved examples
  prep = interventions.prepare(model, tok, chosen, c.eval.max_new_tokens, train_pairs, c.seed)
  out["ablation"] = interventions.ablation(model, tok, prep, class_ids, rows, m.n_random, c.seed)
  timing[f"{tag}_ablation_s"] = time.perf_counter() - t0
  _say(tag, "ablation", timing[f"{tag}_ablation_s"])
  t0 = time.perf_counter()
  out["steering"] = interventions.steering(model, tok, prep, class_ids, labels, layer + 1, m.steer_alphas, c.seed)
  timing[f"{tag}_steering_s"] = time.perf_counter() - t0
  _say(tag, "steering", timing[f"{tag}_steering_s"])
  t0 = time.perf_counter()
  out["patching"] = interventions.patching(model, tok, prep, rows)
  timing[f"{tag}_patching_s"] = time.perf_counter() - t0
  _say(tag, "patching", timing[f"{tag}_patching_s"])

  if m.tuned_lens:
    t0 = time.perf_counter()
    out["tuned_lens"] = tuned_lens_section(model, tok, prep, train_examples, targets, c)
    timing[f"{tag}_tuned_lens_s"] = time.perf_counter() - t0
    _say(tag, "tuned_lens", timing[f"{tag}_tuned_lens_s"])

  t0 = time.perf_counter()
  out["attention"] = attention_section(model, tok, chosen, prep.prompt_ids)
  timing[f"{tag}_attention_s"] = time.perf_counter() - t0
  _say(tag, "attention", timing[f"{tag}_attention_s"])
  return out


def attention_section(model, tok, examples, prompt_ids) -> dict:
  """The readout's attention mass per token role (vo_analysis.role_masses), over all prompts and per format; a
  format's `roles` are the ones its prompts have (word: no operator token, so no `operator` role)."""
  masses = vo_analysis.role_masses(model, tok, examples, prompt_ids)

  def summary(ms):
    mean = vo_analysis.mean_role_mass(ms)
    return {"roles": list(mean), "mean_mass": {r: v.tolist() for r, v in mean.items()}, "n": len(ms)}

  out = summary(masses)
  out["by_format"] = {fmt: summary([m for m, e in zip(masses, examples) if e.fmt == fmt]) for fmt in sorted({e.fmt for e in examples})}
  return out


def _say(tag: str, what: str, seconds: float) -> None:
  print(f"mechanism ({tag}): {what} done in {seconds:.0f}s", file=sys.stderr)


def tuned_lens_section(model, tok, prep, train_examples, targets, c) -> dict:
  """Translators trained on training prompts (a seeded random `tuned_lens_train` of them), scored on `prep`'s
  held-out prompts beside the logit lens (over the answer vocabulary, see tuned_lens.py)."""
  m = c.eval.mechanism
  rng = np.random.default_rng([c.seed, 7933])
  pick = rng.choice(len(train_examples), size=min(m.tuned_lens_train, len(train_examples)), replace=False)
  train_ids = [data_lib.encode_prompt(tok, train_examples[i].prompt) for i in sorted(pick)]
  train_run = interventions.run_edited(model, tok, train_ids, None, max_new_tokens=1)
  vocab = tuned_lens.answer_vocabulary(train_run.logits, m.tuned_lens_top_k, targets.token_ids)
  unembed = np.asarray(jax.device_get(model.unembed_matrix().astype("float32")))
  final_norm = np.asarray(jax.device_get(model.final_norm[...].astype("float32")))
  eps = model.cfg.rms_norm_eps
  params, losses = tuned_lens.fit(
    train_run.readout,
    train_run.logits[:, vocab],
    final_norm,
    unembed[vocab],
    eps,
    steps=m.tuned_lens_steps,
    learning_rate=m.tuned_lens_lr,
  )
  labels = np.asarray([data_lib.label_index(e.operation, list(targets.labels)) for e in prep.examples])
  train_labels = np.asarray([data_lib.label_index(train_examples[i].operation, list(targets.labels)) for i in sorted(pick)])
  held = tuned_lens.evaluate(params, prep.clean.readout, prep.clean.logits, vocab, final_norm, unembed, eps, targets.token_ids, labels)
  train = tuned_lens.evaluate(
    params, train_run.readout, train_run.logits, vocab, final_norm, unembed, eps, targets.token_ids, train_labels
  )
  return {
    "n_train": len(train_ids),
    "n_heldout": len(prep.examples),
    "vocab_size": int(len(vocab)),
    "top_k": m.tuned_lens_top_k,
    "coverage_heldout": tuned_lens.coverage(prep.clean.logits, vocab),
    "steps": m.tuned_lens_steps,
    "learning_rate": m.tuned_lens_lr,
    "loss_first": float(losses[0]),
    "loss_last": float(losses[-1]),
    "rows": held,
    "train_rows": [{"row": r["row"], "tuned_kl": r["tuned"]["kl"]} for r in train],
  }


def vo_summary(model, targets) -> dict | None:
  """The adapter's per-layer, per-head update norms and ΔOV class-word fractions (None without an adapter)."""
  if model.lora is None:
    return None
  from lazarus_jax.analysis.interventions import class_directions, orthonormal_basis

  basis = orthonormal_basis(class_directions(model, targets.token_ids))
  norms = vo_analysis.update_norms(model)
  ov = vo_analysis.delta_ov_class_fraction(model, basis)
  lora = model.lora
  return {
    "layer_range": [int(lora.layer_start), int(lora.layer_end)],
    "targets": list(lora.targets),
    "num_heads": model.cfg.num_heads,
    "num_kv_heads": model.cfg.num_kv_heads,
    "update_norms": {t: {k: v.tolist() for k, v in d.items()} for t, d in norms.items()},
    "delta_ov": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ov.items()},
  }
