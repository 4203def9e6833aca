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
from lazarus_jax.analysis.stats import bits, hierarchical_bootstrap, paired_difference, unbits
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.settings import mechanism_rows

N_RESAMPLES = 4000  # stats' default, for the ablation contrast's bootstrap


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
  out["per_example"] = per_example(prep, out)

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


def per_example(prep, sections: dict) -> dict:
  """The per-prompt outcomes (what two models on the same prompts are paired by), as "0110..." strings: the clean
  run's answers and first tokens; per ablation row the class ablation's and each control's first draw; and, over the
  prompts of `counterpart` (in order), steering per alpha and patching per row. Moves each experiment's
  `per_example` here, so the experiment sections keep their aggregate shape."""
  clean = prep.clean
  return {
    "key": [data_lib.example_key(e) for e in prep.examples],
    "answer_correct": bits(interventions.answers_match(clean.texts, prep.answers)),
    "first_token_correct": bits(np.argmax(clean.logits, axis=-1) == prep.first_ids),
    "counterpart": bits(interventions.counterpart_mask(prep)),
    **{name: sections[name].pop("per_example") for name in ("ablation", "steering", "patching")},
  }


def effect_summary(groups, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
  """The mean of per-prompt effect differences (values in -2..2) with a seeded percentile bootstrap: over seeds,
  then prompts within each drawn seed (stats.hierarchical_bootstrap; one group = prompts only, the pair kept
  together). Not stats.bootstrap_mean: where every difference is 0 it would give a Wilson interval, which is for
  proportions; here the interval is the bootstrap's, a point. {mean_diff, ci_low, ci_high, se, method, n_groups, n}."""
  arrays = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
  boot = hierarchical_bootstrap(arrays, n_resamples, seed=seed)
  tail = round((1.0 - confidence) / 2.0, 12)  # 0.95 -> exactly 0.025
  low, high = np.quantile(boot, [tail, 1.0 - tail])
  pooled = np.concatenate(arrays)
  return {
    "mean_diff": float(np.mean([a.mean() for a in arrays])),
    "ci_low": float(low),
    "ci_high": float(high),
    "se": float(np.std(boot, ddof=1)),
    "method": "bootstrap" if np.ptp(pooled) > 0 else "bootstrap (every prompt's difference is the same)",
    "n_groups": len(arrays),
    "n": int(pooled.size),
  }


def ablation_effects(a: dict, b: dict) -> list[dict]:
  """The per-prompt vectors ablation_contrast summarises, per ablation row of both sections (in a's order), for
  pooling over several pairs (a sweep's seeds): `a_effect` / `b_effect` (clean correct minus class-ablated correct,
  -1..1), `class` (a_effect - b_effect), `random` (the same for the first Gaussian draw; None without one) and
  `broken` ((a, b) 0/1 vectors of "clean correct and class-ablated wrong"). Refuses sections on other prompts."""
  pa, pb = a["per_example"], b["per_example"]
  if pa["key"] != pb["key"]:
    raise ValueError("ablation_contrast pairs the same prompts: the two sections' per_example keys differ")
  ca, cb = (unbits(p["answer_correct"]).astype(np.int64) for p in (pa, pb))
  out = []
  for ia, row in enumerate(pa["ablation"]["rows"]):
    if row not in pb["ablation"]["rows"]:
      continue
    ib = pb["ablation"]["rows"].index(row)
    xa = unbits(pa["ablation"]["class"][ia]).astype(np.int64)
    xb = unbits(pb["ablation"]["class"][ib]).astype(np.int64)
    entry = {"row": int(row), "a_effect": ca - xa, "b_effect": cb - xb, "class": (ca - xa) - (cb - xb), "random": None}
    entry["broken"] = (ca * (1 - xa), cb * (1 - xb))
    if pa["ablation"].get("random") and pb["ablation"].get("random"):
      ra = unbits(pa["ablation"]["random"][ia]).astype(np.int64)
      rb = unbits(pb["ablation"]["random"][ib]).astype(np.int64)
      entry["random"] = (ca - ra) - (cb - rb)
    out.append(entry)
  return out


def pooled_ablation_rows(
  pairs: list[list[dict]], confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> list[dict]:
  """The ablation contrast's rows from one or more pairs of sections (`ablation_effects` of each, e.g. one per sweep
  seed), at every row all pairs edited: {row, layer, a_effect, b_effect (the mean over pairs of each pair's mean),
  difference (effect_summary: over pairs, then prompts), random_difference (the same for the first Gaussian draw;
  None unless every pair has one), broken (stats.paired_difference of "clean correct and class-ablated wrong")}."""
  if not pairs:
    return []
  common = set.intersection(*({e["row"] for e in effects} for effects in pairs))
  rows = []
  for row in [e["row"] for e in pairs[0] if e["row"] in common]:
    es = [next(e for e in effects if e["row"] == row) for effects in pairs]
    entry = {
      "row": row,
      "layer": row - 1 if row > 0 else None,
      "a_effect": float(np.mean([np.mean(e["a_effect"]) for e in es])),
      "b_effect": float(np.mean([np.mean(e["b_effect"]) for e in es])),
      "difference": effect_summary([e["class"] for e in es], confidence, n_resamples, seed),
      "random_difference": None,
      "broken": paired_difference([e["broken"] for e in es], confidence, n_resamples, seed),
    }
    if all(e["random"] is not None for e in es):
      entry["random_difference"] = effect_summary([e["random"] for e in es], confidence, n_resamples, seed)
    rows.append(entry)
  return rows


def ablation_contrast(
  a: dict | None,
  b: dict | None,
  names: tuple[str, str] = ("adapted", "base"),
  confidence: float = 0.95,
  effects: list[dict] | None = None,
) -> dict | None:
  """Model a minus model b, paired prompt by prompt, in the *ablation effect*: per prompt, clean-correct minus
  correct with the class-word directions projected out (1: the ablation broke a correct answer, -1: it mended a
  wrong one). A positive difference: the class ablation costs a more correct answers than b, on the same prompts
  (a's answer uses the class directions more). Per ablation row of both:
    `difference`: the mean per-prompt difference of effects with a seeded percentile bootstrap over prompts
      (the values lie in -2..2, so not stats.paired_difference, which takes 0/1 values);
    `broken`: stats.paired_difference of "clean correct and ablated wrong" (a vs b), with McNemar's exact test;
    `random_difference`: `difference` for the first Gaussian random draw (is a just more fragile to any ablation?).
  a and b: per-model mechanism sections (`analyse_model`), e.g. adapted and base of one evaluation, or the same
  model of two sweep arms of one seed; their prompts must be the same. None when either is missing.
  effects: ablation_effects(a, b), when the caller has computed it already."""
  if not a or not b or "per_example" not in a or "per_example" not in b:
    return None

  rows = []
  for entry in pooled_ablation_rows([effects if effects is not None else ablation_effects(a, b)], confidence):
    for key in ("difference", "random_difference", "broken"):  # one pair: no groups to count
      if entry[key] is not None:
        entry[key].pop("n_groups", None)
    entry["broken"]["mcnemar"] = entry["broken"]["mcnemar"][0]
    if entry["random_difference"] is None:
      del entry["random_difference"]
    rows.append(entry)
  return {
    "a": names[0],
    "b": names[1],
    "n": len(a["per_example"]["key"]),
    "effect": "per prompt: clean answer correct (1/0) minus answer correct with the class directions ablated",
    "rows": rows,
  }


def _paired(x: np.ndarray, y: np.ndarray, confidence: float) -> dict:
  """stats.paired_difference of one pair of 0/1 vectors (one group): McNemar's counts as a dict, not a list."""
  out = paired_difference([(x, y)], confidence)
  out.pop("n_groups", None)
  out["mcnemar"] = out["mcnemar"][0]
  return out


def counterpart_pairs(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
  """Positions, in a's and in b's counterpart-ordered strings (steering, patching), of the prompts in both
  sections' `counterpart` subsets, in prompt order. Refuses sections on other prompts. Within one evaluation the
  two subsets are the same (they depend on the true answers only); elsewhere they may differ, so pair the overlap."""
  pa, pb = a["per_example"], b["per_example"]
  if pa["key"] != pb["key"]:
    raise ValueError("intervention_contrast pairs the same prompts: the two sections' per_example keys differ")
  ma, mb = unbits(pa["counterpart"]), unbits(pb["counterpart"])
  both = ma & mb
  return (np.cumsum(ma) - 1)[both], (np.cumsum(mb) - 1)[both]


def intervention_contrast(
  a: dict | None, b: dict | None, names: tuple[str, str] = ("adapted", "base"), confidence: float = 0.95
) -> dict | None:
  """Model a minus model b, paired prompt by prompt, in steering and patching (ablation_contrast's twin), over the
  counterpart prompts both sections steered and patched (`counterpart_pairs`). Each figure is
  stats.paired_difference of two 0/1 vectors (a minus b, McNemar's exact test on the discordant prompts):
    steering, per alpha both ran: `target_answer` (the answer became the target operation's true answer),
    `target_output` (it became the model's own answer to the target's prompt, and left its unedited one) and
    `random_target_output` (the same for the random direction: is a merely easier to move?);
    patching, per row both patched: `follows_source` (the answer became the source prompt's true answer) and
    `follows_source_output` (the model's own answer to the source prompt).
  Positive: the edit moves a's answer more often than b's. Steering adds each model's own class-direction
  difference at its own row L+1: for adapted - base of one evaluation both share L (and the unembedding the
  directions come from), so the same edit is applied; two models at different L steer different rows, so steering
  is skipped then (`skipped.steering`). None when either section is missing; skipped (null, with the reason) when
  no counterpart prompt is shared."""
  if not a or not b or "per_example" not in a or "per_example" not in b:
    return None
  ia, ib = counterpart_pairs(a, b)
  pa, pb = a["per_example"], b["per_example"]
  out = {
    "a": names[0],
    "b": names[1],
    "n": len(ia),
    "n_counterpart": [int(unbits(pa["counterpart"]).sum()), int(unbits(pb["counterpart"]).sum())],
    "steering": None,
    "patching": None,
    "skipped": {},
  }
  if not len(ia):
    out["skipped"] = {k: "no counterpart prompt is in both sections" for k in ("steering", "patching")}
    return out

  def vectors(sa: list, sb: list, i: int, j: int):
    return unbits(sa[i]).astype(np.int64)[ia], unbits(sb[j]).astype(np.int64)[ib]

  def figures(keys, sa: dict, sb: dict, i: int, j: int) -> dict:
    entry = {}
    for k_out, k in keys:
      x, y = vectors(sa[k], sb[k], i, j)
      entry[k_out] = {"a_rate": float(x.mean()), "b_rate": float(y.mean()), **_paired(x, y, confidence)}
    return entry

  row_a, row_b = a["steering"]["row"], b["steering"]["row"]
  if row_a != row_b:
    out["skipped"]["steering"] = f"the two models steer different rows ({row_a} and {row_b})"
  else:
    keys = (("target_answer", "class_target_answer"), ("target_output", "class_target_output"))
    keys += (("random_target_output", "random_target_output"),)
    sa, sb = pa["steering"], pb["steering"]
    alphas = [(i, al, sb["alphas"].index(al)) for i, al in enumerate(sa["alphas"]) if al in sb["alphas"]]
    out["steering"] = {
      "row": int(row_a),
      "layer": int(row_a) - 1 if row_a > 0 else None,
      "alphas": [{"alpha": float(al), **figures(keys, sa, sb, i, j)} for i, al, j in alphas],
    }
  keys = (("follows_source", "follows_source"), ("follows_source_output", "follows_source_output"))
  sa, sb = pa["patching"], pb["patching"]
  rows = [(i, r, sb["rows"].index(r)) for i, r in enumerate(sa["rows"]) if r in sb["rows"]]
  out["patching"] = {
    "rows": [{"row": int(r), "layer": int(r) - 1 if r > 0 else None, **figures(keys, sa, sb, i, j)} for i, r, j in rows]
  }
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
