"""The sweep's statistics: per-example 0/1 vectors of each arm, per-cell intervals over seeds (bootstrap, exact
McNemar for paired contrasts), the transfer matrix and the contrasts that answer the experiment's questions."""

from __future__ import annotations

import numpy as np

from lazarus_jax.analysis import mechanism, stats
from lazarus_jax.errors import UserError
from lazarus_jax.reporting.arms import Arm, plain_arm, target_suffix

METRICS = (
  "lens_accuracy",
  "lens_survives_to",
  "vocab_top1_accuracy",
  "mean_correct_prob",
  "probe_accuracy",
  "probe_selectivity",
  "answer_accuracy",
  "first_token_accuracy",
)


# Metrics with a 0/1 outcome per held-out example (results.json per_example): bootstrapped over seeds and
# examples, and paired across arms by prompt key.
EXAMPLE_METRICS = {"lens_accuracy": "lens_correct", "answer_accuracy": "answer_correct", "first_token_accuracy": "first_token_correct"}


# Accuracies known only as (accuracy, n): an unpaired bootstrap of 0/1 values depends on their counts alone.
COUNT_METRICS = {"vocab_top1_accuracy": "n_examples", "probe_accuracy": "probe_n_test"}


CONTRAST_METRICS = ("answer_accuracy", "first_token_accuracy", "lens_accuracy")


N_RESAMPLES = 4000


BOOTSTRAP_SEED = 0


POWER = 0.8


def per_example_vector(results: dict, metric: str, fmt: str, row: int | None = None):
  """(keys, 0/1 int8 vector) of `fmt`'s held-out examples, or None when the metric was not measured.

  `results` is one model's block of results.json (the top level, or `base`); `metric` is answer_correct,
  first_token_correct or lens_correct (then `row` is the lens row: L + 1 is the stream after block L).
  """
  pe = results.get("per_example")
  if not pe:
    raise UserError(
      "results.json has no per_example block (written by an evaluate that kept no per-example "
      "results): delete that arm's directory and re-run the sweep"
    )
  if metric == "lens_correct":
    if row is None:
      raise ValueError("lens_correct needs a lens row")
    bits = pe["lens_correct"][row]
  elif metric in ("answer_correct", "first_token_correct"):
    if row is not None:
      raise ValueError(f"{metric} has no lens row")
    bits = pe.get(metric)
  else:
    raise ValueError(f"unknown per-example metric {metric!r}")
  if bits is None:
    return None
  if len(bits) != len(pe["key"]) or set(bits) - {"0", "1"}:
    raise UserError(f"per_example.{metric} is not one 0/1 character per example ({len(bits)} for {len(pe['key'])})")
  idx = [i for i, f in enumerate(pe["format"]) if f == fmt]
  if not idx:
    raise UserError(f"results.json has no per-example results for format {fmt!r}")
  vec = stats.unbits(bits)[idx].astype(np.int8)
  return [pe["key"][i] for i in idx], vec


def align(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
  """The two arms' vectors in one example order; refuses arms that were not evaluated on the same prompts."""
  (ka, va), (kb, vb) = a, b
  sa, sb = set(ka), set(kb)
  if len(sa) != len(ka) or len(sb) != len(kb):
    raise UserError(f"{what}: a prompt key appears twice in one arm's per-example results")
  if sa != sb:
    raise UserError(
      f"{what}: the two arms were not evaluated on the same prompts ({len(sa - sb)} and {len(sb - sa)} "
      "keys in one only): a paired comparison needs the same held-out set (same seed, data and eval config)"
    )
  pos = {k: i for i, k in enumerate(kb)}
  return va, vb[[pos[k] for k in ka]]


def survival_block(lows, layer: int, chance: float) -> int | None:
  """The last block >= `layer` up to which every interval low end (lows[i] for block layer + i) is above chance."""
  last = None
  for i, low in enumerate(lows):
    if low is None or low <= chance:
      break
    last = layer + i
  return last


def _mean(pe) -> float | None:
  return None if pe is None else float(pe[1].mean())


def arm_rows(arm: Arm, results: dict, fractions: list[float], confidence: float = 0.95) -> list[dict]:
  """One row per depth this arm reports: its own fraction, or every fraction for depth-independent arms.

  Keys starting with "_" hold the per-example vectors (for the intervals and the pairing), not written to files.
  """
  n_layers = results["model"]["n_layers"]
  # The bar is the majority-class rate of this format's held-out set, not 1/K: the classes are unbalanced (72 divide
  # against 200 of each other), so an untrained lens that always says " add" scores 29.8% > 25% at every row.
  pe = results["per_example"]
  ops = [op for op, f in zip(pe.get("label") or pe["operation"], pe["format"]) if f == arm.fmt]
  chance = max(ops.count(op) for op in set(ops)) / len(ops)
  answer = per_example_vector(results, "answer_correct", arm.fmt)
  first = per_example_vector(results, "first_token_correct", arm.fmt)
  rows = []
  for f in [arm.layer_fraction] if arm.layer_fraction is not None else fractions:
    layer = int(n_layers * f)
    lens_rows = [per_example_vector(results, "lens_correct", arm.fmt, r) for r in range(layer + 1, n_layers + 1)]
    lows = [stats.wilson_interval(int(v.sum()), v.size, confidence)[0] for _, v in lens_rows]
    lens = results["lens"][layer + 1]["by_format"][arm.fmt]
    row = {
      "arm": arm.arm,
      "weight": arm.weight,
      "format": arm.fmt,
      "layer_fraction": f,
      "layer": layer,
      "seed": arm.seed,
      "run": arm.name,
      "n_examples": len(lens_rows[0][0]),
      "chance": chance,
      "lens_accuracy": _mean(lens_rows[0]),
      "lens_survives_to": survival_block(lows, layer, chance),
      "vocab_top1_accuracy": lens["vocab_top1_accuracy"],
      "mean_correct_prob": lens["mean_correct_prob"],
      "probe_accuracy": None,
      "probe_selectivity": None,
      "probe_n_test": None,
      "answer_accuracy": _mean(answer),
      "first_token_accuracy": _mean(first),
      "_examples": {"lens_accuracy": lens_rows[0], "answer_accuracy": answer, "first_token_accuracy": first},
      "_lens_rows": lens_rows,
    }
    pr = (results.get("probes") or {}).get("by_format", {}).get(arm.fmt)
    if pr and "layers" in pr:
      row["probe_accuracy"] = pr["layers"][layer + 1]["test_accuracy"]
      row["probe_selectivity"] = pr["layers"][layer + 1]["selectivity"]
      row["probe_n_test"] = pr["layers"][layer + 1]["n_test"]
    rows.append(row)
  return rows


def transfer_rows(arm: Arm, results: dict, fractions: list[float]) -> list[dict]:
  """One row per (evaluated format, depth) of one arm run: the lens at L on that format (per-example, for the
  intervals), its input-only baselines and, for fewshot, the counterfactual flip rate and the run's
  computed-or-copied verdict. The last two are measured at the run's own classifier layer only, so a
  depth-independent arm (base, sft) carries them at that depth and None at the others."""
  n_layers = results["model"]["n_layers"]
  cc = results.get("compute_or_copy") or {}
  cf = results.get("counterfactuals")
  rows = []
  for f in [arm.layer_fraction] if arm.layer_fraction is not None else fractions:
    layer = int(n_layers * f)
    at_run_layer = layer == results["classifier_layer"]
    for efmt in results["formats"]:
      vec = per_example_vector(results, "lens_correct", efmt, layer + 1)
      fr = (cc.get("formats") or {}).get(efmt) or {}
      bag, l0 = fr.get("bag_of_tokens") or {}, fr.get("layer0_best") or {}
      reader = fr.get("bag_of_tokens_from_training") or {}
      with_cf = at_run_layer and cf is not None and efmt == "fewshot"
      rows.append(
        {
          "arm": arm.arm,
          "weight": arm.weight,
          "target_set": arm.target_set,
          "train_format": arm.fmt,
          "eval_format": efmt,
          "layer_fraction": f,
          "layer": layer,
          "seed": arm.seed,
          "run": arm.name,
          "n_examples": len(vec[0]),
          "lens_accuracy": _mean(vec),
          "bag_of_tokens": bag.get("accuracy"),
          "layer0_best": l0.get("accuracy"),
          "trained_reader": reader.get("accuracy"),
          "baseline_n": bag.get("n"),
          "flip_rate": cf["flip_rate"]["accuracy"] if with_cf else None,
          "flip_n": cf["flip_rate"]["n"] if with_cf else None,
          "shuffled_accuracy": cf["shuffled"]["accuracy"] if with_cf else None,
          "shuffled_n": cf["shuffled"]["n"] if with_cf else None,
          "verdict": cc.get("verdict") if at_run_layer else None,
          "_examples": {"lens_accuracy": vec},
        }
      )
  return rows


def summarize_transfer(rows: list[dict], confidence: float = 0.95) -> list[dict]:
  """One row per (arm, trained format, evaluated format, depth): lens accuracy at L over seeds and examples
  (hierarchical bootstrap), the input-only baselines (mean over seeds), the flip rate and shuffled-results accuracy
  (bootstrapped from their counts) and each seed's verdict."""
  groups: dict = {}
  for r in rows:
    groups.setdefault(
      (r["arm"], r["weight"], r["target_set"], r["train_format"], r["eval_format"], r["layer_fraction"], r["layer"]), []
    ).append(r)
  out = []
  for (arm, weight, ts, tf, ef, frac, layer), rs in groups.items():
    rs = sorted(rs, key=lambda r: r["seed"])
    cell = {
      "arm": arm,
      "weight": weight,
      "target_set": ts,
      "train_format": tf,
      "eval_format": ef,
      "layer_fraction": frac,
      "layer": layer,
      "n_seeds": len(rs),
      "lens_accuracy": _cell(rs, "lens_accuracy", confidence),
    }
    for key in ("bag_of_tokens", "layer0_best", "trained_reader"):
      vals = [r[key] for r in rs if r.get(key) is not None]
      cell[key] = float(np.mean(vals)) if vals else None
    for key, n_key in (("flip_rate", "flip_n"), ("shuffled_accuracy", "shuffled_n")):
      vecs = [_count_vector(r[key], r[n_key]) for r in rs if r[key] is not None and r[n_key]]
      cell[key] = _bootstrap(vecs, confidence) if vecs else None
    cell["verdicts"] = [r["verdict"] for r in rs if r["verdict"] is not None]
    out.append(cell)
  return sorted(out, key=lambda r: (r["train_format"], r["eval_format"], _order({**r, "format": ""})))


def public(row: dict) -> dict:
  return {k: v for k, v in row.items() if not k.startswith("_")}


def _count_vector(accuracy: float, n: int) -> np.ndarray:
  k = int(round(accuracy * n))
  return np.concatenate([np.ones(k), np.zeros(n - k)])


def _bootstrap(groups, confidence) -> dict:
  return stats.bootstrap_mean(groups, confidence, N_RESAMPLES, BOOTSTRAP_SEED)


def _cell(rs: list[dict], metric: str, confidence: float) -> dict | None:
  """Interval of one metric over one cell's seeds (rs sorted by seed); None when never measured."""
  if metric in EXAMPLE_METRICS or metric in COUNT_METRICS:
    if metric in EXAMPLE_METRICS:
      vecs = [r["_examples"][metric][1] for r in rs if r["_examples"][metric] is not None]
    else:
      vecs = [_count_vector(r[metric], r[COUNT_METRICS[metric]]) for r in rs if r[metric] is not None and r[COUNT_METRICS[metric]]]
    if not vecs:
      return None
    b = _bootstrap(vecs, confidence)
    return {
      "mean": b["mean"],
      "ci_low": b["ci_low"],
      "ci_high": b["ci_high"],
      "se": b["se"],
      "method": b["method"],
      "n_seeds": len(vecs),
      "n_examples": b["n"],
      "values": [float(v.mean()) for v in vecs],
    }
  if metric == "lens_survives_to":
    # Pooled over seeds: walk the rows from L while the cell's interval stays above chance.
    lows = []
    for i in range(len(rs[0]["_lens_rows"])):
      lows.append(_bootstrap([r["_lens_rows"][i][1] for r in rs], confidence)["ci_low"])
      if lows[-1] <= rs[0]["chance"]:
        break
    return {
      "mean": survival_block(lows, rs[0]["layer"], rs[0]["chance"]),
      "ci_low": None,
      "ci_high": None,
      "se": None,
      "method": "last block from L with every row's interval above chance",
      "n_seeds": len(rs),
      "n_examples": sum(r["n_examples"] for r in rs),
      "values": [r["lens_survives_to"] for r in rs],
    }
  # No per-example values (a mean probability, a difference of probe accuracies): t-interval across seeds.
  vals = [r[metric] for r in rs if r[metric] is not None]
  if not vals:
    return None
  m, lo, hi = stats.mean_ci(vals, confidence)
  method = "t across seeds"
  if len(vals) == 1 or lo == hi:
    lo = hi = None  # one seed, or seeds that agree, say nothing about the spread: no interval, not a zero-width one
    method = "one seed: no interval" if len(vals) == 1 else "seeds agree: no interval"
  else:
    bounds = (-1.0, 1.0) if metric == "probe_selectivity" else (0.0, 1.0)
    lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
  return {
    "mean": m,
    "ci_low": lo,
    "ci_high": hi,
    "se": None,
    "method": method,
    "n_seeds": len(vals),
    "n_examples": None,
    "values": vals,
  }


def _cells(rows: list[dict]) -> dict:
  groups: dict = {}
  for r in rows:
    groups.setdefault((r["arm"], r["weight"], r["format"], r["layer_fraction"], r["layer"]), []).append(r)
  return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def summarize(rows: list[dict], confidence: float = 0.95) -> list[dict]:
  """Tidy summary: one row per (arm, weight, format, layer_fraction, layer, metric) with its interval and method."""
  out = []
  for (arm, weight, fmt, frac, layer), rs in _cells(rows).items():
    for metric in METRICS:
      cell = _cell(rs, metric, confidence)
      if cell is not None:
        out.append({"arm": arm, "weight": weight, "format": fmt, "layer_fraction": frac, "layer": layer, "metric": metric, **cell})
  return sorted(out, key=_order)


def _seed_vectors(rs: list[dict], metric: str) -> dict:
  return {r["seed"]: r["_examples"][metric] for r in rs if r["_examples"].get(metric) is not None}


def paired_rows(rows_a: list[dict], rows_b: list[dict], metric: str, confidence: float, what: str) -> dict | None:
  """a minus b on the same prompts, seed by seed (stats.paired_difference); None when no seed has both."""
  a, b = _seed_vectors(rows_a, metric), _seed_vectors(rows_b, metric)
  seeds = sorted(set(a) & set(b))
  if not seeds:
    return None
  pairs = [align(a[s], b[s], f"{what}, seed {s}") for s in seeds]
  d = stats.paired_difference(pairs, confidence, N_RESAMPLES, BOOTSTRAP_SEED)
  d["seeds"] = seeds
  d["diffs"] = [float(np.mean(x - y)) for x, y in pairs]
  d["mde"] = stats.min_detectable_effect(d["se"], confidence, POWER)
  return d


def unpaired_rows(rows_a: list[dict], rows_b: list[dict], metric: str, confidence: float) -> dict | None:
  """a minus b on different prompts (e.g. two formats): independent bootstraps (stats.unpaired_difference)."""
  a, b = _seed_vectors(rows_a, metric), _seed_vectors(rows_b, metric)
  if not a or not b:
    return None
  return stats.unpaired_difference([v for _, v in a.values()], [v for _, v in b.values()], confidence, N_RESAMPLES, BOOTSTRAP_SEED)


def direction(d: dict) -> str:
  """higher | lower | cannot tell: whether the difference's interval excludes 0."""
  return "higher" if d["ci_low"] > 0 else "lower" if d["ci_high"] < 0 else "cannot tell"


def _mcnemar_text(d: dict) -> str:
  return "; ".join(f"s{s} {t['n10']}:{t['n01']} p={t['p']:.2g}" for s, t in zip(d["seeds"], d["mcnemar"]))


def contrasts(rows: list[dict], confidence: float = 0.95, baseline: str = "sft") -> list[dict]:
  """Paired differences (same format, depth, seed and prompts) of each weighted arm minus `baseline`."""
  cells = _cells(rows)
  out = []
  for (arm, weight, fmt, frac, layer), rs in cells.items():
    if plain_arm(arm) in (baseline, "base"):
      continue
    ref = baseline + target_suffix(arm)  # the same target set's SFT arm: the lens reads the same tokens
    base = next((v for k, v in cells.items() if k[0] == ref and k[2] == fmt and k[3] == frac), None)
    if base is None:
      continue
    for metric in CONTRAST_METRICS:
      d = paired_rows(rs, base, metric, confidence, f"{arm} vs {baseline}, {fmt}, fraction {frac:g}, {metric}")
      if d is None:
        continue
      out.append(
        {
          "contrast": f"{arm} - {ref}",
          "arm": arm,
          "weight": weight,
          "format": fmt,
          "layer_fraction": frac,
          "layer": layer,
          "metric": metric,
          "mean_diff": d["mean_diff"],
          "ci_low": d["ci_low"],
          "ci_high": d["ci_high"],
          "se": d["se"],
          "mde_80": d["mde"],
          "method": d["method"],
          "verdict": direction(d),
          "mcnemar": _mcnemar_text(d),
          "n_seeds": d["n_groups"],
          "n_pairs": d["n"],
          "diffs": d["diffs"],
        }
      )
  return sorted(out, key=_order)


# ---- is the classifier used? (the arms' results.json `mechanism` sections, eval.mechanism.enabled) ----------

MECHANISM_BASELINES = ("sft", "base")  # each other arm's ablation effect minus these arms', on the same prompts


def mechanism_runs(arm: Arm, results: dict, fractions: list[float]) -> list[dict]:
  """One entry per depth this arm reports (as arm_rows) holding its model's mechanism section: the adapted model's,
  or the base model's for the base arm (an arm evaluates that one model alone). [] without eval.mechanism."""
  section = (results.get("mechanism") or {}).get("base" if arm.weight is None else "adapted")
  if not section or "per_example" not in section:
    return []
  n_layers = results["model"]["n_layers"]
  return [
    {
      "arm": arm.arm,
      "weight": arm.weight,
      "format": arm.fmt,
      "layer_fraction": f,
      "layer": int(n_layers * f),
      "seed": arm.seed,
      "run": arm.name,
      "_section": section,
    }
    for f in ([arm.layer_fraction] if arm.layer_fraction is not None else fractions)
  ]


def mechanism_contrasts(runs: list[dict], confidence: float = 0.95, baselines=MECHANISM_BASELINES) -> list[dict]:
  """Per (arm, format, depth) and baseline arm of the same target set (sft, base): the class-ablation effect of the
  arm minus the baseline's, paired prompt by prompt within each seed (mechanism.ablation_contrast per seed) and
  pooled over seeds then prompts at every row both arms edited (mechanism_cell)."""
  cells = _cells(runs)
  out = []
  for (arm, weight, fmt, frac, layer), rs in cells.items():
    if plain_arm(arm) in baselines:
      continue
    for baseline in baselines:
      ref = baseline + target_suffix(arm)
      other = next((v for k, v in cells.items() if k[0] == ref and k[2] == fmt and k[3] == frac), None)
      if other is not None:
        out.append({"weight": weight, **mechanism_cell(rs, other, arm, ref, fmt, frac, layer, confidence)})
  rank = {b: i for i, b in enumerate(baselines)}
  return sorted(out, key=lambda r: (rank.get(plain_arm(r["b"]), len(rank)), _order(r)))


def mechanism_cell(rows_a, rows_b, a: str, b: str, fmt: str, frac: float, layer: int, confidence: float) -> dict:
  """a minus b (mechanism_contrasts). A seed is paired only when both arms have its section on the same prompts
  (same per_example keys, in order); any other seed is listed in `unpaired` with the reason, never fatal."""
  sa, sb = ({r["seed"]: r["_section"] for r in rs} for rs in (rows_a, rows_b))
  paired, unpaired, per_seed = {}, [], []
  for seed in sorted(set(sa) | set(sb)):
    if seed not in sa or seed not in sb:
      unpaired.append({"seed": seed, "reason": f"no mechanism section in {b if seed in sa else a}"})
      continue
    ka, kb = sa[seed]["per_example"]["key"], sb[seed]["per_example"]["key"]
    if ka != kb:
      unpaired.append(
        {"seed": seed, "reason": f"the arms' mechanism prompts differ ({len(ka)} and {len(kb)}, {len(set(ka) & set(kb))} shared)"}
      )
      continue
    paired[seed] = mechanism.ablation_effects(sa[seed], sb[seed])
    per_seed.append({"seed": seed, **mechanism.ablation_contrast(sa[seed], sb[seed], (a, b), confidence, paired[seed])})
  seeds = sorted(paired)
  rows = mechanism.pooled_ablation_rows([paired[s] for s in seeds], confidence, N_RESAMPLES, BOOTSTRAP_SEED)
  for entry in rows:
    entry["broken"]["seeds"] = seeds
    entry["verdict"] = direction(entry["difference"])
  return {
    "contrast": f"{a} - {b}",
    "a": a,
    "b": b,
    "arm": a,
    "format": fmt,
    "layer_fraction": frac,
    "layer": layer,
    "row": layer + 1,
    "seeds": seeds,
    "unpaired": unpaired,
    "n_prompts": sum(len(sa[s]["per_example"]["key"]) for s in seeds),
    "at_L": next((r for r in rows if r["row"] == layer + 1), None),
    "rows": rows,
    "per_seed": per_seed,
  }


def _order(r):
  ranks = {"base": 0, "sft": 1, "dual": 2, "classifier": 3, "grpo": 5, "grpo+lens": 6, "sft+more": 7, "sft+lens": 8}
  arm_rank = ranks.get(plain_arm(r["arm"]), 4)
  return (
    r["format"],
    target_suffix(r["arm"]),
    arm_rank,
    r["weight"] if r["weight"] is not None else -1,
    r["layer_fraction"],
    r.get("metric", ""),
  )
