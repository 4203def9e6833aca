"""Evaluation from disk: classifier at layer L, all-layer lens, linear probes, answer accuracy, report.

  python -m lazarus_jax.evaluate --config configs/smollm2_135m.py --workdir runs/smollm2 [--config.key=value ...]

What is evaluated (`config.eval.adapter`):
- "workdir" (default): the PEFT adapter that train wrote to `<workdir>/adapter`;
- "none": the base model alone;
- any other value: a PEFT adapter directory.
With an adapter and `eval.compare_base=True` (default) the base model is measured in the same run, by the
same code on the same examples, so the report can say what training changed. Outputs always go to
`<workdir>/eval/` (base-only runs too; `results.json` says which model it holds in `evaluated`):
`results.json`, `report.md`, `lens_heatmap.png`, `lens_accuracy.png`, `probes_vs_lens.png` (and, with
`eval.mechanism.enabled`, the `mechanism` section -- is the classifier used? -- and its `mechanism_*.png` figures).

Definitions (DESIGN.md §2). Readout = the last prompt token, prompts encoded by `data.encode_prompt`.
Row r of the all-layer lens is the residual stream after block r-1 (row 0 = embeddings), so the classifier
layer L is row L+1. Lens accuracy: argmax over the class tokens of the lens at L equals the label's token.
Confidence: the full-vocabulary softmax probability of the predicted class token. Vocab top-1: the label's
token is the argmax over the whole vocabulary. Intervals: 95% Wilson (per-example binomial).

results.json schema (version 1; also in docs/results_schema.md):
  schema_version: 1
  model: {source, n_layers, adapter: path | null}
  evaluated: "adapted" | "base"            -- which model the top-level metrics describe
  classifier_layer: L, lens_row: L + 1
  class_targets: {targets: [{label, word, token_id, token}], warnings}
  formats: [..], n_eval: {format: n}
  classifier_eval, lens, probes, answer_accuracy  -- the evaluated model, see `evaluate_model`
  base: {classifier_eval, lens, probes, answer_accuracy} | null   -- the base model when an adapter was loaded
  training: {table_md, last: metrics row} | null   -- from <workdir>/metrics.jsonl when train ran there
  mechanism: {base, adapted, vo, position_lens, ...} | null   -- eval.mechanism.enabled (docs/results_schema.md)
  timing: {stage: seconds}
  provenance: provenance.collect(config) (config, seed, git commit, package versions, devices)
Per model:
  classifier_eval: {layer, row, accuracy, ci_low, ci_high, n, n_correct, vocab_top1_accuracy,
                    mean_confidence, confusion: {labels, matrix[true][pred]}, by_format: {fmt: same keys},
                    results: [{prompt, format, expected, predicted, confidence, correct}]  (the seed's prompts),
                    seed_prompts_accuracy: {accuracy, n, n_correct, ci_low, ci_high}}
  lens: [{row, layer (block, null for embeddings), name, accuracy, ci_low, ci_high, vocab_top1_accuracy,
          mean_correct_prob, class_probs: {label: mean p(label token) over examples of that label},
          by_format: {fmt: {accuracy, ci_low, ci_high, vocab_top1_accuracy, mean_correct_prob}}}]  (n_layers+1)
  probes: {by_format: {fmt: {summary, layers: [probes.ProbeResults.to_json rows, by row], lexical_baseline}}}
          | null when eval.probes is False
  answer_accuracy: {accuracy, ci_low, ci_high, n, n_correct, by_format: {fmt: {same, by_operation: {op: same}}},
                    examples: [{prompt, format, operation, expected, generated, correct}] (the seed's prompts)}
                   | null when eval.generate is False
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lazarus_jax import experiment, files, provenance, settings
from lazarus_jax.analysis.lens import readout_lens
from lazarus_jax.analysis.stats import accuracy_summary, bits
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data.arithmetic import example_key
from lazarus_jax.errors import UserError
from lazarus_jax.models.model import split_packed
from lazarus_jax.models.padding import pad_prompts
from lazarus_jax.training.logging_utils import progress_bar

SCHEMA_VERSION = 1


# ---- the examples ------------------------------------------------------------------------------------


def select_examples(eval_examples, seed_prompts, cap: int, seed: int = 0) -> list:
  """The held-out set capped at `cap` triples per operation: a seeded random subset (DESIGN.md §3), never the
  first N of a list, that always includes the seed's prompts. A chosen triple is kept in every format present,
  so formats are compared on the same problems."""
  if cap <= 0:
    raise UserError(f"eval.max_examples_per_op must be positive, got {cap}")
  seed_triples = {e.triple for e in seed_prompts}
  keep = set()
  for op_index, op in enumerate(data_lib.OPERATIONS):
    triples = list(dict.fromkeys(e.triple for e in eval_examples if e.operation == op))
    rest = [t for t in triples if t not in seed_triples]
    n_rest = max(0, cap - (len(triples) - len(rest)))
    if n_rest >= len(rest):
      chosen = rest
    else:
      rng = np.random.default_rng([seed, op_index, 7919])  # 7919: a stream apart from make_splits' draws
      chosen = [rest[i] for i in rng.choice(len(rest), size=n_rest, replace=False)]
    keep |= set(chosen) | (set(triples) & seed_triples)
  return [e for e in eval_examples if e.triple in keep]


# ---- one forward pass: readout hidden states + the all-layer lens ---------------------------------------


@functools.partial(jax.jit, static_argnums=(0,))
def _readout_fn(graphdef, state, tokens, mask, readout, class_ids):
  # The same readout as lens.all_layer_lens (tested equal), but it also returns the hidden states, so the
  # probes and the lens see the very same vectors from one forward pass.
  model = nnx.merge(graphdef, state)
  h, logits = readout_lens(model, tokens, mask, readout)  # [R, B, D], [R, B, V]
  probs = jax.nn.softmax(logits, axis=-1)
  class_probs = jnp.take(probs, class_ids, axis=-1)  # [R, B, K]
  top1 = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [R, B]
  return h.astype(jnp.float32), class_probs, top1


def readout_states(model, prompt_ids: list[list[int]], class_ids, batch_size: int, pad_id: int) -> dict:
  """hidden [R, N, D], class_probs [N, R, K] (full-vocab softmax of each class token), top1 [N, R]."""
  seq_len = -(-max(len(p) for p in prompt_ids) // 16) * 16  # one bucket: one compile
  batch_size = max(1, min(batch_size, len(prompt_ids)))
  graphdef, state = split_packed(model)  # packed once, not a whole-weight copy per batch
  class_ids = jnp.asarray(class_ids, jnp.int32)
  hidden, probs, top1 = [], [], []
  for start in range(0, len(prompt_ids), batch_size):
    chunk = prompt_ids[start : start + batch_size]
    tokens, mask, readout = pad_prompts(chunk, seq_len, pad_id, rows=batch_size)
    h, p, t = jax.device_get(_readout_fn(graphdef, state, tokens, mask, readout, class_ids))
    n = len(chunk)
    hidden.append(h[:, :n])
    probs.append(np.swapaxes(p, 0, 1)[:n])
    top1.append(np.swapaxes(t, 0, 1)[:n])
  return {"hidden": np.concatenate(hidden, axis=1), "class_probs": np.concatenate(probs), "top1": np.concatenate(top1)}


# ---- metrics (pure numpy; tests feed them batches whose answers are known) ------------------------------


def classifier_metrics(class_probs: np.ndarray, top1: np.ndarray, y: np.ndarray, class_ids, labels, confidence: float = 0.95) -> dict:
  """Lens metrics at one row. class_probs [N, K] full-vocab probs of the class tokens; top1 [N] vocab argmax."""
  class_ids = np.asarray(class_ids)
  pred = np.argmax(class_probs, axis=-1)
  correct = pred == y
  out = accuracy_summary(correct, confidence)
  out["vocab_top1_accuracy"] = float(np.mean(top1 == class_ids[y])) if len(y) else float("nan")
  out["mean_confidence"] = float(np.mean(class_probs[np.arange(len(y)), pred])) if len(y) else float("nan")
  out["mean_correct_prob"] = float(np.mean(class_probs[np.arange(len(y)), y])) if len(y) else float("nan")
  matrix = np.zeros((len(labels), len(labels)), np.int64)
  np.add.at(matrix, (y, pred), 1)
  out["confusion"] = {"labels": list(labels), "matrix": matrix.tolist()}
  return out


def lens_layers(
  class_probs: np.ndarray, top1: np.ndarray, y: np.ndarray, class_ids, labels, fmts: np.ndarray, confidence: float = 0.95
) -> list[dict]:
  """One entry per lens row (n_layers + 1): accuracy, vocab top-1, p(correct), per-class mean p, per format."""
  rows = []
  for r in range(class_probs.shape[1]):
    m = classifier_metrics(class_probs[:, r], top1[:, r], y, class_ids, labels, confidence)
    block = r - 1 if r > 0 else None
    by_format = {}
    for fmt in sorted(set(fmts.tolist())):
      sel = fmts == fmt
      f = classifier_metrics(class_probs[sel, r], top1[sel, r], y[sel], class_ids, labels, confidence)
      by_format[fmt] = {k: f[k] for k in ("accuracy", "ci_low", "ci_high", "n", "vocab_top1_accuracy", "mean_correct_prob")}
    rows.append(
      {
        "row": r,
        "layer": block,
        "name": "embeddings" if block is None else f"after block {block}",
        **{k: m[k] for k in ("accuracy", "ci_low", "ci_high", "n", "vocab_top1_accuracy", "mean_correct_prob")},
        "class_probs": {lab: float(np.mean(class_probs[y == k, r, k])) if np.any(y == k) else None for k, lab in enumerate(labels)},
        "by_format": by_format,
      }
    )
  return rows


def _strip(d: dict) -> dict:
  return {k: v for k, v in d.items() if k != "mean_correct_prob"}


# ---- one model ---------------------------------------------------------------------------------------


def evaluate_model(
  model, tok, examples, targets, layer: int, c: settings.Settings, timing: dict, tag: str, readers: dict | None = None
) -> dict:
  """Every metric for one model (base or adapted) on `examples`. See the module docstring for the keys.
  `readers`: `trained_reader`'s result (input-only, so one per evaluation), filed under each format's probes."""
  labels = list(targets.labels)
  y = np.asarray([data_lib.label_index(lab, labels) for lab in experiment.example_labels(c.classifier, tok, examples)])
  fmts = np.asarray([e.fmt for e in examples])
  prompt_ids = [data_lib.encode_prompt(tok, e.prompt) for e in examples]
  conf = c.sweep.confidence
  # stages: forward, probes, counterfactuals, answers (a terminal sees where a long evaluation is; see progress_wanted)
  bar = progress_bar(total=4, desc=f"evaluate {tag}")
  bar.set_postfix_str("forward + lens")

  t0 = time.perf_counter()
  states = readout_states(model, prompt_ids, targets.token_ids, c.eval.batch_size, tok.pad_id)
  timing[f"{tag}_forward_s"] = time.perf_counter() - t0
  bar.update(1)
  bar.set_postfix_str("probes")
  row = layer + 1
  probs_l, top1_l = states["class_probs"][:, row], states["top1"][:, row]

  # -- classifier at L --
  cls = classifier_metrics(probs_l, top1_l, y, targets.token_ids, labels, conf)
  cls.pop("mean_correct_prob")
  cls = {"layer": layer, "row": row, **cls, "by_format": {}}
  for fmt in sorted(set(fmts.tolist())):
    sel = fmts == fmt
    cls["by_format"][fmt] = _strip(classifier_metrics(probs_l[sel], top1_l[sel], y[sel], targets.token_ids, labels, conf))
  seed_keys = {(e.prompt, e.fmt) for e in experiment_seed_prompts(examples)}
  seed_idx = [i for i, e in enumerate(examples) if (e.prompt, e.fmt) in seed_keys]
  pred = np.argmax(probs_l, axis=-1)
  cls["results"] = [
    {
      "prompt": examples[i].prompt,
      "format": examples[i].fmt,
      "expected": labels[y[i]],
      "predicted": labels[pred[i]],
      "confidence": float(probs_l[i, pred[i]]),
      "correct": bool(pred[i] == y[i]),
    }
    for i in seed_idx
  ]
  cls["seed_prompts_accuracy"] = accuracy_summary(np.asarray([r["correct"] for r in cls["results"]], bool), conf)

  # -- all layers --
  lens = lens_layers(states["class_probs"], states["top1"], y, targets.token_ids, labels, fmts, conf)

  # -- probes (per format: the lexical baseline differs by format) --
  probes_out = None
  if c.eval.probes:
    t0 = time.perf_counter()
    probes_out = {"by_format": {}, "control_types": CONTROL_TYPES_TEXT}
    embed = np.asarray(jax.device_get(model.embed[...]), np.float32)  # layer-0 baseline: LoRA never touches it
    for fmt in sorted(set(fmts.tolist())):
      idx = np.flatnonzero(fmts == fmt)
      probes_out["by_format"][fmt] = probe_format(
        states["hidden"][:, idx],
        y[idx],
        [prompt_ids[i] for i in idx],
        c,
        labels,
        control_types=[control_type(examples[i]) for i in idx],
        embed=embed,
      )
    del embed
    for fmt, reader in (readers or {}).items():
      probes_out["by_format"][fmt]["bag_of_tokens_from_training"] = reader
    timing[f"{tag}_probes_s"] = time.perf_counter() - t0
  bar.update(1)
  bar.set_postfix_str("counterfactuals")

  # -- fewshot counterfactuals: does the lens at L follow the solved examples? --
  t0 = time.perf_counter()
  counterfactuals = counterfactual_metrics(model, tok, examples, targets, layer, c, conf)
  if counterfactuals is not None:
    timing[f"{tag}_counterfactuals_s"] = time.perf_counter() - t0
  bar.update(1)
  bar.set_postfix_str("answers")

  # -- answers --
  answers = None
  if c.eval.generate:
    t0 = time.perf_counter()
    answers = answer_metrics(model, tok, examples, prompt_ids, c.eval.max_new_tokens, seed_keys, conf)
    timing[f"{tag}_generate_s"] = time.perf_counter() - t0
  bar.update(1)
  bar.close()

  # -- per example: what the sweep pairs across arms (the same held-out prompts) --
  lens_correct = np.argmax(states["class_probs"], axis=-1) == y[:, None]  # [N, R]
  per_example = {
    "key": [example_key(e) for e in examples],
    "format": fmts.tolist(),
    "operation": [e.operation for e in examples],
    "label": [labels[k] for k in y],  # the class the lens targets (the operation, or a digit for answer targets)
    "answer_correct": None if answers is None else bits(answers.pop("_correct")),
    "first_token_correct": None if answers is None else bits(answers.pop("_first_token_correct")),
    "lens_correct": [bits(lens_correct[:, r]) for r in range(lens_correct.shape[1])],
  }
  del states
  out = {
    "classifier_eval": cls,
    "lens": lens,
    "probes": probes_out,
    "answer_accuracy": answers,
    "counterfactuals": counterfactuals,
    "per_example": per_example,
  }
  from lazarus_jax.analysis import compute_or_copy

  out["compute_or_copy"] = compute_or_copy.verdict(out)
  return out


def counterfactual_metrics(model, tok, examples, targets, layer: int, c: settings.Settings, conf: float) -> dict | None:
  """The fewshot counterfactuals (prompt_formats.py) read by the lens at L. None without fewshot held-out
  examples, or with answer targets (whose classes are digits, not operations).

  flip_rate: the lens names the operation of the *swapped-in* examples (it follows the examples);
  stay_rate: it still names the original operation (it reads the query or the symbol, not the examples);
  shuffled: lens accuracy against the original operation when the examples' results are shuffled across prompts
  (no example fits the label): a classifier that computes from the examples falls to the input-only baselines.
  """
  from lazarus_jax.data import prompt_formats

  fewshot = [e for e in examples if e.fmt == "fewshot"]
  if not fewshot or c.classifier.target_set == "answer":
    return None
  train_by_op = {op: tr for op, (_, tr) in data_lib.split_pairs(c.seed, c.data.n_eval_per_op).items()}
  cf = prompt_formats.counterfactual_examples(fewshot, train_by_op, c.seed)
  sh = prompt_formats.shuffled_examples(fewshot, c.seed)
  labels = list(targets.labels)
  ids = [data_lib.encode_prompt(tok, e.prompt) for e in cf + sh]
  states = readout_states(model, ids, targets.token_ids, c.eval.batch_size, tok.pad_id)
  pred = np.argmax(states["class_probs"][:, layer + 1], axis=-1)
  pred_cf, pred_sh = pred[: len(cf)], pred[len(cf) :]
  new = np.asarray([data_lib.label_index(e.operation, labels) for e in cf])
  old = np.asarray([data_lib.label_index(e.source, labels) for e in cf])
  y_sh = np.asarray([data_lib.label_index(e.operation, labels) for e in sh])
  flip = accuracy_summary(pred_cf == new, conf)
  flip["by_shown_operation"] = {op: accuracy_summary(pred_cf[new == k] == k, conf) for k, op in enumerate(labels) if np.any(new == k)}
  return {
    "n": len(cf),
    "flip_rate": flip,
    "stay_rate": accuracy_summary(pred_cf == old, conf),
    "shuffled": {
      **accuracy_summary(pred_sh == y_sh, conf),
      "chance": 1.0 / len(labels),
      "majority": float(np.max(np.bincount(y_sh, minlength=len(labels))) / max(1, len(y_sh))),
    },
    "examples": [
      {"prompt": e.prompt, "shown": e.operation, "original": e.source, "predicted": labels[p]} for e, p in list(zip(cf, pred_cf))[:8]
    ],
    "shuffled_examples": [{"prompt": e.prompt, "label": e.operation, "predicted": labels[p]} for e, p in list(zip(sh, pred_sh))[:4]],
  }


# The probes' control task (Hewitt & Liang 2019): one random label per input type, a type being the prompt's
# first operand. Each first operand recurs across the probe's train and test halves (and across operations),
# so a probe scores above chance on the control only by memorising which operand carries which random label.
CONTROL_TYPES_TEXT = (
  "per-type random labels (Hewitt & Liang 2019); type = the prompt's first operand a, which "
  "recurs across the probe's train and test halves"
)


def control_type(e) -> str:
  return str(e.a) if e.a is not None else e.prompt


def experiment_seed_prompts(examples) -> list:
  """The seed's 8 prompts (data.SEED_TRIPLES) among `examples`, in every format present."""
  seed = set(data_lib.SEED_TRIPLES)
  return [e for e in examples if e.triple in seed]


def probe_format(
  hidden: np.ndarray, y: np.ndarray, prompt_ids, c: settings.Settings, labels, control_types=None, embed: np.ndarray | None = None
) -> dict:
  """Probes at every row on one format's readout states: stratified split, control task (per-type labels when
  `control_types` is given, see `control_type`), and the input-only baselines on the same split: the lexical
  (bag-of-tokens) baseline and, given the embedding matrix, a probe on the layer-0 residual at every prompt
  position (`layer0_positions`)."""
  from lazarus_jax.analysis import probes

  n_per_class = np.bincount(y, minlength=len(labels))
  if len(y) < 4 or np.sum(n_per_class > 0) < 2 or np.min(n_per_class[n_per_class > 0]) < 2:
    return {"skipped": f"too few examples to probe ({len(y)}, per class {n_per_class.tolist()})"}
  train_idx, test_idx = probes.split_indices(len(y), c.eval.probe_test_fraction, seed=c.seed, stratify_labels=y)
  res = probes.fit_probes(hidden, y, train_idx, test_idx, control_types=control_types, **probe_options(c))
  lexical = probes.lexical_baseline(prompt_ids, y, (train_idx, test_idx), l2=c.eval.probe_l2, steps=c.eval.probe_steps)
  summary = res.summary()
  summary["classes"] = [labels[int(k)] for k in summary["classes"]]
  out = {"summary": summary, "layers": res.to_json(), "lexical_baseline": lexical}
  if embed is not None:
    out["layer0_positions"] = layer0_baseline(embed, prompt_ids, y, (train_idx, test_idx), c)
  return out


TRAINED_READER_MAX = 4096  # training prompts the trained reader is fitted on (a seeded subset of larger splits)


def trained_reader(tok, train_examples, examples, labels, c: settings.Settings) -> dict:
  """{format: accuracy} of a bag-of-tokens probe fitted on the run's training prompts (what the adapters were
  trained on; at most TRAINED_READER_MAX, seeded) and tested on each format's whole held-out set, as the lens is;
  `correct` holds its outcome per prompt (bits, in `examples` order) for tests paired with the lens.

  The input-only bar a lens must clear where held-out prompts use templates, symbols or spellings that training
  never showed. The same-split baseline (`lexical_baseline` in probe_format) is fitted on held-out prompts of the
  very templates it is tested on: on `word` it tells the held-out templates apart by their words (100%), a bar
  no lens can clear; this one measures what the training prompts' words alone carry over to the held-out ones."""
  from lazarus_jax.analysis import probes

  rng = np.random.default_rng([c.seed, 4099])
  pick = sorted(rng.choice(len(train_examples), size=min(TRAINED_READER_MAX, len(train_examples)), replace=False))
  train = [train_examples[i] for i in pick]
  train_y = [data_lib.label_index(lab, labels) for lab in experiment.example_labels(c.classifier, tok, train)]
  train_ids = [data_lib.encode_prompt(tok, e.prompt) for e in train]
  y = [data_lib.label_index(lab, labels) for lab in experiment.example_labels(c.classifier, tok, examples)]
  out = {}
  for fmt in sorted({e.fmt for e in examples}):
    idx = [i for i, e in enumerate(examples) if e.fmt == fmt]
    seqs = train_ids + [data_lib.encode_prompt(tok, examples[i].prompt) for i in idx]
    split = (np.arange(len(train)), np.arange(len(train), len(seqs)))
    labels_all = np.asarray(train_y + [y[i] for i in idx])
    res = probes.lexical_baseline(seqs, labels_all, split, l2=c.eval.probe_l2, steps=c.eval.probe_steps, return_correct=True)
    res["correct"] = bits(res["correct"])  # per held-out prompt of the format, in `examples` order: paired tests
    out[fmt] = dict(res, n_train=len(train), trained_formats=sorted({e.fmt for e in train}))
  return out


def probe_options(c: settings.Settings) -> dict:
  """The eval.probe_* settings every probe of a run is fitted with."""
  e = c.eval
  return dict(l2=e.probe_l2, steps=e.probe_steps, seed=c.seed, method=e.probe_method, learning_rate=e.probe_lr)


def layer0_baseline(embed: np.ndarray, prompt_ids, y: np.ndarray, split, c: settings.Settings) -> dict:
  """Input-only baseline: one linear probe per prompt position on the layer-0 residual (the token embedding,
  row 0: no computation across positions has happened), positions counted back from the readout (1 = the
  readout token, 2 = the one before, ...; a prompt without that position gives a zero vector). `best` is the
  position whose probe scores highest on the held-out half: what a single input token tells at the best place."""
  from lazarus_jax.analysis import probes

  n_pos = max(len(p) for p in prompt_ids)
  feats = np.zeros((n_pos, len(prompt_ids), embed.shape[1]), np.float32)
  for i, ids in enumerate(prompt_ids):
    back = np.asarray(ids[::-1])
    feats[: len(back), i] = embed[back]
  train_idx, test_idx = split
  res = probes.fit_probes(feats, y, train_idx, test_idx, **probe_options(c))
  rows = [
    {
      "from_end": p + 1,
      "accuracy": float(res.test_accuracy[p]),
      "ci_low": float(res.test_ci[p, 0]),
      "ci_high": float(res.test_ci[p, 1]),
    }
    for p in range(n_pos)
  ]
  best = max(rows, key=lambda r: (r["accuracy"], -r["from_end"]))
  return {"positions": rows, "best": dict(best, n=int(res.n_test)), "method": "per_position_linear_probe_on_row0"}


def answer_metrics(model, tok, examples, prompt_ids, max_new_tokens: int, seed_keys, conf: float) -> dict:
  """Greedy generation with the KV cache, scored two ways (generate.py defines both):
  exact match (`generate.exact_match`: the continuation, leading whitespace stripped, starts with the expected
  integer and no further digit follows) and first-token accuracy (the first generated token is the first token
  of the reference answer, as `data.encode_example` splits prompt + answer). Per format and operation."""
  from lazarus_jax.models import generate

  res = generate.answer_accuracy(model, tok, prompt_ids, [e.answer for e in examples], max_new_tokens)
  correct = np.asarray([r["correct"] for r in res["rows"]], bool)
  first_ids = [data_lib.encode_example(tok, e.prompt, e.answer, append_eos=False).answer_ids[0] for e in examples]
  first = np.asarray([bool(r["ids"]) and r["ids"][0] == t for r, t in zip(res["rows"], first_ids)], bool)
  fmts = np.asarray([e.fmt for e in examples])
  ops = np.asarray([e.operation for e in examples])
  out = accuracy_summary(correct, conf)
  out["first_token_accuracy"] = accuracy_summary(first, conf)
  out["by_format"] = {}
  for fmt in sorted(set(fmts.tolist())):
    sel = fmts == fmt
    entry = accuracy_summary(correct[sel], conf)
    entry["first_token_accuracy"] = accuracy_summary(first[sel], conf)
    entry["by_operation"] = {
      op: accuracy_summary(correct[sel & (ops == op)], conf) for op in data_lib.OPERATIONS if np.any(sel & (ops == op))
    }
    out["by_format"][fmt] = entry
  out["examples"] = [
    {
      "prompt": e.prompt,
      "format": e.fmt,
      "operation": e.operation,
      "expected": e.answer.strip(),
      "generated": r["generated"],
      "correct": bool(r["correct"]),
      "first_token_correct": bool(f),
    }
    for e, r, f in zip(examples, res["rows"], first)
    if (e.prompt, e.fmt) in seed_keys
  ]
  out["_correct"], out["_first_token_correct"] = correct, first  # moved to per_example by the caller
  return out


# ---- mechanism (eval.mechanism.enabled) -----------------------------------------------------------------


def mechanism_section(
  model, lora, tok, examples, datasets, targets, layer: int, c: settings.Settings, timing: dict, base_only: bool
) -> dict | None:
  """results.json `mechanism` (schema: docs/results_schema.md), or None when `eval.mechanism.enabled` is off.

  The base model is analysed when it is the evaluated one or `eval.compare_base` is on; the adapted one when an
  adapter is loaded. `lora`: the adapter module (None for the base model alone)."""
  if not c.eval.mechanism.enabled:
    return None
  from lazarus_jax.analysis import lens as lens_lib
  from lazarus_jax.analysis import mechanism

  skipped = sorted({e.fmt for e in examples} - set(data_lib.MECHANISM_FORMATS))  # no counterparts (symbolic_alt)
  examples = [e for e in examples if e.fmt in data_lib.MECHANISM_FORMATS]
  fmts = sorted({e.fmt for e in examples})
  train = [e for e in datasets.train if e.fmt in fmts]
  prompt = c.eval.mechanism.position_prompt or experiment_seed_prompts(examples)[0].prompt
  out = {"max_examples_per_op": c.eval.mechanism.max_examples_per_op, "position_lens": {"prompt": prompt}}
  out["skipped_formats"] = skipped
  models = []
  if base_only or c.eval.compare_base:
    models.append(("base", None))
  if lora is not None:
    models.append(("adapted", lora))
  for tag, adapter in models:
    model.lora = nnx.data(adapter)
    print(f"evaluate: mechanism ({tag} model)", file=sys.stderr)
    out[tag] = mechanism.analyse_model(model, tok, examples, train, targets, layer, c, timing, tag)
    out["position_lens"][tag] = lens_lib.position_lens(model, tok, prompt)
  out.setdefault("base", None)
  out.setdefault("adapted", None)
  out["ablation_contrast"] = mechanism.ablation_contrast(out["adapted"], out["base"])  # adapted - base, paired
  out["intervention_contrast"] = mechanism.intervention_contrast(out["adapted"], out["base"])  # steering, patching
  model.lora = nnx.data(lora)
  out["vo"] = mechanism.vo_summary(model, targets)
  return out


# ---- run ---------------------------------------------------------------------------------------------


def adapter_path(c: settings.Settings, workdir: str) -> str | None:
  """The adapter directory `eval.adapter` names (None for the base model); refuses a missing one."""
  spec = c.eval.adapter
  if spec == "none":
    return None
  path = files.join(workdir, "adapter") if spec == "workdir" else spec
  if not (files.isfile(files.join(path, "adapter_config.json")) and files.isfile(files.join(path, "adapter_model.safetensors"))):
    hint = (
      "train into this --workdir first, or pass --config.eval.adapter=none for the base model"
      if spec == "workdir"
      else "pass a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)"
    )
    raise UserError(f"no adapter at {path}: {hint}")
  return path


def check_split(adapter: str | None, split: dict) -> dict:
  """This evaluation's held-out split, checked against the one the adapter was trained against (recorded by
  train in the adapter directory). A mismatch is refused: part of this held-out set was trained on."""
  out = dict(split, check="base model: nothing to check")
  if adapter is None:
    return out
  from lazarus_jax.models.adapters import adapter_record

  trained = adapter_record(adapter).get("split")
  if trained is None:
    out["check"] = "unverified: the adapter records no split (not written by lazarus_jax.train)"
    return out
  keys = ("heldout_sha256", "train_source")
  if any(trained.get(k) != split[k] for k in keys):

    def describe(d):
      return (
        f"held-out {str(d.get('heldout_sha256'))[:12]} (seed {d.get('seed')}, data.n_eval_per_op "
        f"{d.get('n_eval_per_op')}, train data {str(d.get('train_source'))[:18]})"
      )

    raise UserError(
      f"adapter {adapter} was trained against {describe(trained)} but this evaluation's split is "
      f"{describe(split)}: evaluate with the training run's seed, data.n_eval_per_op and data.jsonl"
    )
  out["check"] = "verified: the adapter was trained against this split"
  return out


def portable_path(path: str, workdir: str) -> str:
  """A path as it may appear in results: relative to the workdir when inside it, else only its own name."""
  if files.is_remote(path) or files.is_remote(workdir):
    prefix = workdir.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path.rstrip("/").rsplit("/", 1)[-1]
  rel = os.path.relpath(path, workdir)
  return rel if not rel.startswith("..") else os.path.basename(os.path.normpath(path))


def portable_paths(o, workdir: str):
  """Every absolute path in a results tree made portable (`portable_path`): no machine paths in results."""
  if isinstance(o, str):
    inside = os.path.isabs(o) or (files.is_remote(workdir) and o.startswith(workdir.rstrip("/") + "/"))
    return portable_path(o, workdir) if inside and "\n" not in o else o
  if isinstance(o, dict):
    return {k: portable_paths(v, workdir) for k, v in o.items()}
  if isinstance(o, (list, tuple)):
    return [portable_paths(v, workdir) for v in o]
  return o


def training_summary(workdir: str, up_to_step: int | None = None) -> dict | None:
  """The training history in <workdir>: its table and last row, through `up_to_step` (the evaluated adapter's
  step) when given, so that a later, interrupted resume is not reported as what was evaluated."""
  from lazarus_jax.training.logging_utils import read_metrics

  path = files.join(workdir, "metrics.jsonl")
  if not files.isfile(path):
    return None
  rows = [r for r in read_metrics(path) if up_to_step is None or r["step"] <= up_to_step]
  table = files.join(workdir, "training_table.md")
  table_md = None
  if files.isfile(table):
    table_md = files.read_bytes(table).decode("utf-8", errors="replace").strip()
  return {"table_md": table_md, "last": rows[-1] if rows else None, "n_logged": len(rows)}


def write_json(path: str, doc) -> None:
  # Whole or not at all (files.write_json): the sweep's resume test is "does results.json exist".
  files.write_json(path, doc, default=_json_default, allow_nan=False)


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


def _nan_to_none(o):
  if isinstance(o, float) and o != o:
    return None
  if isinstance(o, dict):
    return {k: _nan_to_none(v) for k, v in o.items()}
  if isinstance(o, (list, tuple)):
    return [_nan_to_none(v) for v in o]
  if isinstance(o, np.floating):
    return _nan_to_none(float(o))
  return o


def run(config: ml_collections.ConfigDict | settings.Settings, workdir: str) -> dict:
  """Evaluates the model `config.eval.adapter` names; writes `<workdir>/eval/`; returns the results dict.
  `config`: a ConfigDict, or the Settings `settings.parse` made of it (the train command parses once for both)."""
  with contextlib.ExitStack() as held:  # the workdir lock, from the first write on
    return _run(config, workdir, held)


def _run(config, workdir: str, held: contextlib.ExitStack) -> dict:
  c = config if isinstance(config, settings.Settings) else settings.parse(config)  # every key, the mechanism's too
  workdir = files.abspath(workdir)
  files.check_output_dir(files.join(workdir, "eval"), "--workdir")
  from lazarus_jax.workdir import check_not_in_use

  check_not_in_use(workdir)
  adapter = adapter_path(c, workdir)  # before any loading: a missing adapter fails fast
  if jax.process_index() != 0:
    return {}
  from lazarus_jax.models.adapters import adapter_origin

  origin = adapter_origin(adapter, workdir if c.eval.adapter == "workdir" else None)
  timing = {}
  t0 = time.perf_counter()
  pretrained = experiment.load_model(c.model)
  model = pretrained.build()
  tok = pretrained.tokenizer
  n_layers = pretrained.config.num_layers
  layer = experiment.classifier_layer(c.classifier, n_layers)
  if c.eval.mechanism.enabled:  # rows against this model, before any evaluation work
    settings.mechanism_rows(c.eval.mechanism.rows, n_layers + 1, layer)
  datasets = experiment.build_data(c, tok)
  split = check_split(adapter, datasets.split)  # before any evaluation work: never score training data
  examples = select_examples(datasets.eval, datasets.seed_prompts, c.eval.max_examples_per_op, c.seed)
  every = datasets.train + datasets.eval
  targets = experiment.class_targets(c.classifier, tok, prompts=experiment.all_prompts(datasets), examples=every)
  timing["load_s"] = time.perf_counter() - t0
  print(
    f"evaluate: {pretrained.name}, {n_layers} layers, L={layer}, {len(examples)} held-out examples, "
    f"adapter {adapter or 'none'}; split {split['heldout_sha256'][:12]} ({split['check']})",
    file=sys.stderr,
  )

  lora = None
  if adapter is not None:
    from lazarus_jax.models.adapters import load_adapter

    load_adapter(model, adapter)  # first: an adapter of another model is refused before any evaluation work
    lora = model.lora
  from lazarus_jax.workdir import WorkdirLock

  held.enter_context(WorkdirLock(workdir, "evaluate"))  # every check passed: now one writer (train holds it already)
  readers = None
  if c.eval.probes:  # input-only: the same for every model evaluated here
    t0 = time.perf_counter()
    readers = trained_reader(tok, datasets.train, examples, list(targets.labels), c)
    timing["trained_reader_s"] = time.perf_counter() - t0
  base = None
  if adapter is None or c.eval.compare_base:
    model.lora = nnx.data(None)  # the same model without its adapter
    base = evaluate_model(model, tok, examples, targets, layer, c, timing, "base", readers)
    model.lora = nnx.data(lora)
  adapted = None
  if adapter is not None:
    adapted = evaluate_model(model, tok, examples, targets, layer, c, timing, "adapted", readers)
  main = adapted if adapted is not None else base
  mech = mechanism_section(model, lora, tok, examples, datasets, targets, layer, c, timing, adapter is None)

  fmts = sorted({e.fmt for e in examples})
  results = {
    "schema_version": SCHEMA_VERSION,
    "model": {
      "name": pretrained.name,
      "n_layers": n_layers,
      "adapter": None if adapter is None else portable_path(adapter, workdir),
      "adapter_origin": origin,
    },
    "split": split,
    "evaluated": "adapted" if adapted is not None else "base",
    "classifier_layer": layer,
    "lens_row": layer + 1,
    "class_targets": targets.as_dict(),
    "formats": fmts,
    "n_eval": {f: sum(e.fmt == f for e in examples) for f in fmts},
    # One row of the transfer matrix: trained on `train_formats`, lens at L on each eval format
    # (classifier_eval.by_format), the same held-out triples in each.
    "transfer": {
      "train_formats": list(c.data.formats) if not c.data.jsonl else ["jsonl"],
      "eval_formats": fmts,
      "target_set": c.classifier.target_set,
      "fewshot_k": c.data.fewshot_k,
    },
    **main,
    "base": base if adapted is not None else None,
    "training": training_summary(workdir, origin.get("step") if adapter is not None else None),
    "mechanism": mech,
    "timing": timing,
    "provenance": provenance.collect(c.record, pretrained.dtypes),
  }
  results = _nan_to_none(portable_paths(results, workdir))
  out_dir = files.join(workdir, "eval")
  files.makedirs(out_dir)
  from lazarus_jax.reporting import report

  report.write_report(results, out_dir)
  from lazarus_jax.reporting import eval_scalars

  eval_scalars.write(workdir, results)  # eval/* beside training's curves in <workdir>/tb
  write_json(files.join(out_dir, "results.json"), results)  # last: its presence means "done"
  cls = results["classifier_eval"]
  print(
    f"evaluate: lens accuracy at L={layer}: {cls['accuracy']:.3f} [{cls['ci_low']:.3f}, {cls['ci_high']:.3f}] "
    f"(n={cls['n']}); wrote {out_dir}/results.json and report.md",
    file=sys.stderr,
  )
  return results
