"""Is the classifier at layer L computed, or copied from an input token? The rule, stated once.

Input-only baselines (per format, on the probes' held-out half of that format's held-out set): the bag-of-tokens
probe (`lexical_baseline`) and the best single-position probe on the layer-0 residual (`layer0_positions.best`).
What they read needs no computation across positions, so a lens that does no better may be copying.

Per format: the lens at L *beats the input* when its 95% Wilson lower bound is above the upper bound of every
input-only baseline (non-overlapping intervals: conservative, and the lens is scored on the whole held-out set,
the baselines on its probe-test half).

Verdict for one model (`verdict`), in this order:
- "computed": on `fewshot` (the operation is only in the solved examples; held-out symbols) the lens beats the
  input AND follows counterfactual examples: the flip rate's lower bound is above 1/2 (swap in examples of another
  operation and the lens names the new operation in most prompts).
- "copied": the lens at L is *readable* (its lower bound above the format's majority-class rate) on a format whose
  prompt names the operation (symbolic, semantic, symbolic_alt), but beats the input on no cue-free format (fewshot,
  word) that was evaluated. (On the named formats the bag-of-tokens baseline is ~100%: nothing can beat it there.)
- "not readable": the lens at L is readable on no format.
- "cannot tell": anything else (no fewshot evaluation, intervals overlap, the flip rate straddles 1/2, no probes);
  the reason says which.
`word` is reported beside it (beats the input or not) but decides nothing alone: it has no counterfactual.

Beside the rule, each format reports the *trained reader* (`bag_of_tokens_from_training`): a bag-of-tokens probe
fitted on the run's training prompts and tested on the whole held-out set, as the lens is; `lens_minus_trained_reader`
is the paired difference on the same prompts (bootstrap, McNemar beside it) and `beats_trained_reader` says whether
its lower bound is above 0. On `word` the same-split baseline is ~100% (three held-out
templates per operation differ in their words), so it is this reader that says whether the lens carries the
operation to templates that training never showed further than the training prompts' words do.
"""

from __future__ import annotations

import numpy as np

from lazarus_jax.analysis import stats

CUE_FREE = ("fewshot", "word")
NAMED = ("symbolic", "semantic", "symbolic_alt")
RULE = (
  "computed = on fewshot the lens at L beats every input-only baseline (its 95% lower bound above each "
  "baseline's upper bound: bag-of-tokens and the best layer-0 position) and follows counterfactual examples "
  "(flip-rate lower bound > 1/2); copied = it is readable (lower bound above the majority-class rate) on a "
  "format that names the operation but beats the input on no cue-free format (fewshot, word); not readable = "
  "readable on no format; otherwise cannot tell"
)


def format_row(res: dict, fmt: str) -> dict | None:
  """Lens at L and the input-only baselines for one format of one model's results."""
  lens = res["classifier_eval"]["by_format"].get(fmt)
  if lens is None:
    return None
  matrix = lens["confusion"]["matrix"]
  n = sum(map(sum, matrix))
  majority = max(map(sum, matrix)) / n if n else None
  readable = None if lens["ci_low"] is None or majority is None else bool(lens["ci_low"] > majority)
  row = {
    "format": fmt,
    "lens": {k: lens[k] for k in ("accuracy", "ci_low", "ci_high", "n")},
    "majority": majority,
    "readable": readable,
    "bag_of_tokens": None,
    "layer0_best": None,
    "probe_at_L": None,
    "beats_input": None,
    "bag_of_tokens_from_training": None,
    "lens_minus_trained_reader": None,
    "beats_trained_reader": None,
  }
  pr = ((res.get("probes") or {}).get("by_format") or {}).get(fmt)
  reader = (pr or {}).get("bag_of_tokens_from_training")
  if reader is not None:
    row["bag_of_tokens_from_training"] = {k: reader[k] for k in ("accuracy", "ci_low", "ci_high", "n", "n_train")}
    d = _paired_with_reader(res, fmt, reader)
    if d is not None:
      row["lens_minus_trained_reader"] = d
      row["beats_trained_reader"] = bool(d["ci_low"] > 0)
  if not pr or "skipped" in pr:
    return row
  row["bag_of_tokens"] = {k: pr["lexical_baseline"][k] for k in ("accuracy", "ci_low", "ci_high", "n")}
  if pr.get("layer0_positions"):
    row["layer0_best"] = pr["layer0_positions"]["best"]
  at_l = pr["layers"][res["classifier_eval"]["row"]]
  row["probe_at_L"] = {
    "accuracy": at_l["test_accuracy"],
    "ci_low": at_l["test_ci"][0],
    "ci_high": at_l["test_ci"][1],
    "n": at_l["n_test"],
  }
  baselines = [b for b in (row["bag_of_tokens"], row["layer0_best"]) if b is not None]
  if lens["ci_low"] is not None and baselines:
    row["beats_input"] = bool(lens["ci_low"] > max(b["ci_high"] for b in baselines))
  return row


def _paired_with_reader(res: dict, fmt: str, reader: dict) -> dict | None:
  """Lens at L minus the trained reader on the same held-out prompts of `fmt` (None without per-prompt outcomes)."""
  pe = res.get("per_example")
  if not pe or not reader.get("correct"):
    return None
  lens = stats.unbits(pe["lens_correct"][res["classifier_eval"]["row"]])[np.asarray(pe["format"]) == fmt].astype(np.int8)
  theirs = stats.unbits(reader["correct"]).astype(np.int8)
  if lens.size != theirs.size or not lens.size:
    return None
  d = stats.paired_difference([(lens, theirs)])
  return {k: d[k] for k in ("mean_diff", "ci_low", "ci_high", "method", "n")} | {"mcnemar_p": d["mcnemar"][0]["p"]}


def verdict(res: dict) -> dict:
  """The rule above applied to one model's results (`evaluate.evaluate_model`'s dict)."""
  rows = {f: r for f in res["classifier_eval"]["by_format"] if (r := format_row(res, f)) is not None}
  cf = res.get("counterfactuals")
  flip = cf["flip_rate"] if cf else None
  follows = None if flip is None or flip["ci_low"] is None else bool(flip["ci_low"] > 0.5)
  beats = {f: r["beats_input"] for f, r in rows.items()}
  out = {"rule": RULE, "formats": rows, "follows_counterfactuals": follows}
  readable = {f: r["readable"] for f, r in rows.items()}
  cue_free = [f for f in CUE_FREE if f in rows]
  few = beats.get("fewshot")
  if not any(readable.values()):
    out.update(verdict="not readable", reason="the lens at L is above the majority-class rate on no format")
  elif all(beats.get(f) is None for f in cue_free):
    out.update(
      verdict="cannot tell", reason="no cue-free format with input-only baselines (evaluate fewshot or word with eval.probes=True)"
    )
  elif few and follows:
    out.update(verdict="computed", reason="fewshot lens beats every input-only baseline and follows the examples")
  elif any(readable.get(f) for f in NAMED) and not any(beats.get(f) for f in cue_free):
    out.update(
      verdict="copied", reason="the lens is readable where the prompt names the operation and beats the input on no cue-free format"
    )
  elif "fewshot" not in rows:
    out.update(verdict="cannot tell", reason="fewshot was not evaluated (data.eval_format)")
  elif few is None:
    out.update(verdict="cannot tell", reason="fewshot has no input-only baselines")
  elif few and follows is None:
    out.update(verdict="cannot tell", reason="no counterfactual result (answer targets)")
  elif few:
    out.update(verdict="cannot tell", reason="fewshot beats the input but the flip rate does not clear 1/2")
  elif beats.get("word"):
    out.update(verdict="cannot tell", reason="fewshot does not beat the input, but word does (no counterfactual)")
  else:
    out.update(
      verdict="cannot tell", reason="the lens is readable only on cue-free formats, and there no better than the input-only baselines"
    )
  return out
