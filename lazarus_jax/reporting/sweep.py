"""The controlled comparison: arms that differ only in the loss weight (ORIGINAL_DEFECTS #16).

  python -m lazarus_jax.sweep --config configs/smollm2_135m.py --workdir runs/sweep \
      [--config.sweep.seeds=0,1,2] [--config.sweep.layer_fractions=0.25,0.55,0.85] [--config.train.steps=...]

Every arm takes the config as given (model, data sizes, LoRA placement, optimizer, steps) and changes only:
  - classifier.weight: the arm ("base" = no training, "sft" = w=0, "dual" = w=0.7, "classifier" = w=1,
    other weights "w<value>"), from `sweep.weights` (+ base when `sweep.include_base`);
  - data.format: one of `sweep.formats` (the arm trains and is evaluated on that format);
  - classifier.layer_fraction: one of `sweep.layer_fractions` (classifier.layer is set to -1 so the fraction
    decides L = int(n_layers * f));
  - seed: one of `sweep.seeds` (the train/eval split, LoRA init and batch order);
  - classifier.target_set: one of `sweep.target_sets` (target controls); an arm of another set than "operation" is
    labelled `<arm>@<set>` (e.g. dual@arbitrary) and compared with `sft@<set>`.
Every arm is evaluated on `sweep.eval_formats` (data.eval_format; "" = its own format): with several, the sweep
writes the transfer matrix (trained format x evaluated format, lens at L, same held-out triples) and the
computed-or-copied table (sweep_transfer.csv, sweep.md).
Arms with w = 0 and the base arm do not depend on the classifier layer (the classifier term has weight 0),
so they run once per (format, seed) and are read at every depth from their all-layer lens.

Each arm lives in `<workdir>/arms/<name>-<hash>/`, <hash> a short hash of the arm's resolved config without
NON_RESULT_KEYS (the sweep's grid is not in it: a grown grid reuses the arms it shares). An arm is `train.run`
(which ends with `evaluate.run`, base model comparison off: the base arm measures it) or, for the base arm,
`evaluate.run` with `eval.adapter=none`. An arm whose `eval/results.json` exists is reused (its stored
config.json must match), and a partly trained arm resumes from its checkpoint, so re-running the same command
continues a sweep, while a changed config (steps, data, eval caps, ...) trains new arms and never reports old ones.

Statistics use the per-example results (results.json `per_example`): a cell's interval is a hierarchical bootstrap
over seeds and held-out examples; a contrast pairs the two arms' examples by prompt key (the same seed holds out
the same prompts) with McNemar's exact test per seed as a check (stats.py; sweep.md's Method section says it all).

Outputs in `<workdir>/`:
  sweep_runs.csv     one row per (arm run, depth): arm, weight, format, layer_fraction, layer, seed, run, arm_dir,
                     n_examples, chance (the majority-class rate: the bar for lens survival), metrics
  sweep_summary.csv  tidy: one row per (arm, format, layer_fraction, metric): mean, ci_low, ci_high, se, method,
                     n_seeds, n_examples and the per-seed values
  sweep_contrasts.csv paired differences of each weighted arm minus SFT-only (answer, first token, lens accuracy):
                     interval, se, smallest effect detectable at 80% power, McNemar per seed, verdict
  sweep.md           the pre-stated contrast, the method, the tables, the figures and the answers
  sweep_lens.png, sweep_answer.png; sweep_results.json (all of the above as JSON)
Metrics (held-out set of the arm's format, at the depth's layer L): lens_accuracy, lens_survives_to (the last
block >= L up to which the lens accuracy's interval stays above the majority-class rate on every row from L), vocab_top1_accuracy,
mean_correct_prob, probe_accuracy, probe_selectivity (row L+1 of the probes), answer_accuracy, first_token_accuracy.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import sys
import time

import ml_collections
import numpy as np

from lazarus_jax import files, settings
from lazarus_jax.analysis import stats
from lazarus_jax.config import default_config, flat_config, without_added_defaults
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.errors import UserError
from lazarus_jax.reporting.evaluate import unbits
from lazarus_jax.settings import GRPO_ARMS
from lazarus_jax.training.logging_utils import progress_bar

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
NAMED_WEIGHTS = {0.0: "sft", 0.7: "dual", 1.0: "classifier"}
N_RESAMPLES = 4000
BOOTSTRAP_SEED = 0
POWER = 0.8
# Keys that never change an arm's results, left out of its hash. Each is one that train also accepts on resume
# (train.RESUMABLE_KEYS), so a partly trained arm continues under a changed value instead of being refused.
# eval.mechanism: adds a results.json section that no sweep table reads; listed so that arms recorded before the
# section existed keep their hashes.
NON_RESULT_KEYS = ("resume", "overwrite", "distributed", "train.log_every", "train.table_steps", "eval.batch_size", "eval.mechanism")
FALLBACK_NOTE = "†"


@dataclasses.dataclass(frozen=True)
class Arm:
  arm: str  # base | sft | dual | classifier | w<value>, + "@<target set>" for a set other than operation
  weight: float | None  # None for base
  fmt: str
  layer_fraction: float | None  # None: depth-independent (base, w = 0), read at every depth
  seed: int
  target_set: str = "operation"

  @property
  def name(self) -> str:
    depth = "" if self.layer_fraction is None else f"-f{self.layer_fraction:g}"
    return f"{self.arm}-{self.fmt}{depth}-s{self.seed}"


# ---- the grid ----------------------------------------------------------------------------------------


def grid(c) -> dict:
  """The parsed, checked grid (settings.sweep_grid), as the dict the sweep's records hold."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings.sweep_grid(c)).items()}


def arm_label(weight: float | None, target_set: str = "operation") -> str:
  label = "base" if weight is None else NAMED_WEIGHTS.get(round(weight, 6), f"w{weight:g}")
  return label if target_set == "operation" else f"{label}@{target_set}"


def grpo_label(arm: str, target_set: str = "operation") -> str:
  return arm if target_set == "operation" else f"{arm}@{target_set}"


def plain_arm(arm: str) -> str:
  """The arm's weight label without its target set ("dual@arbitrary" -> "dual")."""
  return arm.split("@")[0]


def target_suffix(arm: str) -> str:
  return arm[arm.index("@") :] if "@" in arm else ""


def plan(c) -> list[Arm]:
  g = grid(c)
  arms = []
  for ts in g["target_sets"]:
    for fmt in g["formats"]:
      for seed in g["seeds"]:
        if g["include_base"]:
          arms.append(Arm(arm_label(None, ts), None, fmt, None, seed, ts))
        for w in g["weights"]:
          if w == 0.0:
            arms.append(Arm(arm_label(w, ts), w, fmt, None, seed, ts))
          else:
            arms += [Arm(arm_label(w, ts), w, fmt, f, seed, ts) for f in g["layer_fractions"]]
        # After the SFT arm they warm-start from (the sweep runs arms in this order).
        if "grpo" in g["grpo_arms"]:
          arms.append(Arm(grpo_label("grpo", ts), 0.0, fmt, None, seed, ts))
        if "grpo+lens" in g["grpo_arms"]:
          arms += [Arm(grpo_label("grpo+lens", ts), c.sweep.grpo_lens_weight, fmt, f, seed, ts) for f in g["layer_fractions"]]
  return arms


def arm_config(c, arm: Arm, workdir: str | None = None) -> ml_collections.ConfigDict:
  """The config of one arm: the sweep's config with only the arm's own keys changed.

  A GRPO arm also sets train.objective=grpo, train.steps=sweep.grpo_steps, train.lr=sweep.grpo_lr and
  train.init_adapter = the adapter of the same (format, seed) SFT arm under `workdir` (its hash names that arm's
  directory: a changed SFT arm makes new GRPO arms)."""
  d = c.to_dict()
  ac = ml_collections.ConfigDict(d)
  ac.sweep = default_config().sweep  # the grid is not part of an arm, so a grown sweep still resumes
  ac.sweep.confidence = c.sweep.confidence  # but evaluate's intervals read this one
  ac.seed = arm.seed
  ac.data.format = arm.fmt
  ac.data.eval_format = c.sweep.eval_formats
  ac.classifier.target_set = arm.target_set
  ac.classifier.layer = -1
  if arm.layer_fraction is not None:
    ac.classifier.layer_fraction = arm.layer_fraction
  ac.classifier.weight = 0.0 if arm.weight is None else arm.weight
  ac.eval.enabled = True
  ac.eval.compare_base = False  # the base arm measures the base model, on the same split
  ac.eval.adapter = "none" if arm.weight is None else "workdir"
  if plain_arm(arm.arm) in GRPO_ARMS:
    sft = Arm(arm_label(0.0, arm.target_set), 0.0, arm.fmt, None, arm.seed, arm.target_set)
    root = files.abspath(workdir or ".")
    ac.train.objective = "grpo"
    ac.train.steps = c.sweep.grpo_steps
    ac.train.lr = c.sweep.grpo_lr
    ac.train.warmup_steps = min(c.train.warmup_steps, max(c.sweep.grpo_steps // 10, 1))
    ac.train.init_adapter = files.join(arm_dir(root, sft, arm_config(c, sft)), "adapter")
  ac.resume = True  # a partly trained arm continues from its checkpoint
  ac.overwrite = False
  ac.lock()
  return ac


# Keys added after sweeps had run, left out of the hash while at the value that reproduces the older behaviour,
# so an arm trained before they existed keeps its hash (and its results) instead of being retrained.
LATER_KEYS_AT_DEFAULT = {
  "data.eval_format": "",
  "data.fewshot_k": 2,
  "classifier.target_set": "operation",
  "sweep.eval_formats": "",
  "sweep.target_sets": "operation",
  # auto = einsum attention and the scanned loop on the CPUs earlier arms ran on
  "model.attention": "auto",
  "model.layer_loop": "auto",
}


def result_config(config) -> dict:
  """An arm's resolved config (a ConfigDict, or the dict of its config.json), flat, without NON_RESULT_KEYS (and
  LATER_KEYS_AT_DEFAULT at their defaults)."""
  d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  flat = flat_config(json.loads(json.dumps(d, default=list)))  # as config.json holds it: tuples read back as lists
  flat = without_added_defaults(flat)  # keys added later, at their defaults: earlier arms keep their hashes
  if flat.get("train.init_adapter"):  # a GRPO arm's warm start: the SFT arm's directory (name + hash), not where
    flat["train.init_adapter"] = "/".join(flat["train.init_adapter"].split(os.sep)[-3:])  # the sweep lives
  return {
    k: v
    for k, v in flat.items()
    if not any(k == n or k.startswith(n + ".") for n in NON_RESULT_KEYS)
    and not (k in LATER_KEYS_AT_DEFAULT and v == LATER_KEYS_AT_DEFAULT[k])
  }


def config_hash(config) -> str:
  return hashlib.sha256(json.dumps(result_config(config), sort_keys=True).encode()).hexdigest()[:10]


def arm_dir(workdir: str, arm: Arm, ac) -> str:
  return files.join(workdir, "arms", f"{arm.name}-{config_hash(ac)}")


def results_path(armdir: str) -> str:
  return files.join(armdir, "eval", "results.json")


def stored_config(armdir: str, ac) -> dict:
  """The arm's config.json; refuses one whose results-relevant keys differ from `ac`, so it is never reused."""
  path = files.join(armdir, "config.json")
  try:
    stored = json.loads(files.read_bytes(path).decode("utf-8"))
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is missing or unreadable ({e}): delete {armdir} to run that arm again") from None
  old, new = result_config(stored), result_config(ac)
  diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  if diff:
    raise UserError(f"{armdir} holds an arm with another config ({', '.join(diff[:5])}): delete it to run that arm again")
  return stored


# ---- running -----------------------------------------------------------------------------------------


def run_arm(c, arm: Arm, workdir: str) -> bool:
  """Trains and evaluates one arm unless its results exist for this very config; True when it ran."""
  ac = arm_config(c, arm, workdir)
  armdir = arm_dir(workdir, arm, ac)
  if files.isfile(results_path(armdir)):
    stored_config(armdir, ac)
    return False
  if arm.weight is None:  # a base arm
    from lazarus_jax.reporting import evaluate
    from lazarus_jax.workdir import WorkdirLock

    with WorkdirLock(armdir, "sweep arm"):
      files.makedirs(armdir)  # (the lock makes a local one; a remote one's filesystem may need it too)
      files.write_json(files.join(armdir, "config.json"), ac.to_dict(), indent=2, default=list)
      evaluate.run(ac, armdir)
  else:
    from lazarus_jax.reporting import evaluate
    from lazarus_jax.training import loop as train

    result = train.run(ac, armdir)
    if result.preempted:
      raise UserError(f"arm {arm.name} was stopped at step {result.final_step}: re-run the sweep to continue")
    evaluate.run(ac, armdir)
  return True


# ---- per-example results -----------------------------------------------------------------------------


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
  vec = unbits(bits)[idx].astype(np.int8)
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


# ---- tables ------------------------------------------------------------------------------------------


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
    for key in ("bag_of_tokens", "layer0_best"):
      vals = [r[key] for r in rs if r[key] is not None]
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


def _order(r):
  arm_rank = {"base": 0, "sft": 1, "dual": 2, "classifier": 3, "grpo": 5, "grpo+lens": 6}.get(plain_arm(r["arm"]), 4)
  return (
    r["format"],
    target_suffix(r["arm"]),
    arm_rank,
    r["weight"] if r["weight"] is not None else -1,
    r["layer_fraction"],
    r.get("metric", ""),
  )


def write_csv(path: str, rows: list[dict]) -> None:
  rows = [public(r) for r in rows]
  keys = list(rows[0]) if rows else []
  with files.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
    if not keys:
      return
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
      w.writerow(
        {
          k: (" ".join("" if v is None else f"{v:.4g}" for v in r[k]) if isinstance(r[k], list) else ("" if r[k] is None else r[k]))
          for k in keys
        }
      )


# ---- sweep.md ----------------------------------------------------------------------------------------


def _fmt_ci(s: dict | None, scale: float = 100.0, unit: str = "%") -> str:
  if s is None:
    return "n/a"
  m = f"{scale * s['mean']:.1f}{unit}"
  if s["ci_low"] is None:
    return m
  mark = FALLBACK_NOTE if s.get("method") in ("wilson", "paired wilson", "newcombe") else ""
  return f"{m} [{scale * s['ci_low']:.1f}, {scale * s['ci_high']:.1f}]{mark}"


def _fmt_diff(d: dict) -> str:
  mark = FALLBACK_NOTE if d["method"] in ("paired wilson", "newcombe") else ""
  return f"{100 * d['mean_diff']:+.1f} pp [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]{mark}"


def _fmt_survival(s: dict | None, n_layers) -> str:
  if s is None:
    return "n/a"
  if s["mean"] is None:
    return "— (not above chance at L)"
  return f"block {s['mean']}" + (" (last)" if n_layers is not None and s["mean"] == n_layers - 1 else "")


def _arm_list(summary: list[dict]) -> list:
  return sorted(
    {(r["arm"], r["weight"]) for r in summary}, key=lambda a: _order({"arm": a[0], "weight": a[1], "format": "", "layer_fraction": 0})
  )


def render_markdown(
  summary: list[dict],
  diffs: list[dict],
  g: dict,
  meta: dict,
  rows: list[dict] | None = None,
  confidence: float = 0.95,
  transfer: list[dict] | None = None,
) -> str:
  by = {(r["arm"], r["format"], r["layer_fraction"], r["metric"]): r for r in summary}
  pct = f"{100 * confidence:g}%"
  design = meta.get("design_pairs") or {}
  lines = [
    "# Controlled comparison: loss weight × format × classifier depth × seed",
    "",
    f"- Model `{meta['model']}` ({meta['n_layers']} blocks); {meta['steps']} training steps per arm; "
    f"LoRA r{meta['lora_rank']} alpha {meta['lora_alpha']} on {meta['lora_targets']}; lr {meta['lr']}; "
    f"batch {meta['batch_size']}; held-out up to {meta['max_examples_per_op']} per operation "
    "(read from the reported arms' own config.json)",
    f"- Arms share data, LoRA placement, optimizer and steps; only classifier.weight differs (base = no "
    f"training, sft = 0, dual = 0.7, classifier = 1). Seeds {g['seeds']} (split, init, batch order). "
    "base and sft do not depend on depth: one run each, read at every depth's layer.",
    *grpo_header(meta.get("grpo")),
    "- Each arm is `arms/<name>-<hash>`, the hash of its whole resolved config except "
    f"{', '.join(NON_RESULT_KEYS)}: a changed config trains new arms; old results are never reported under it.",
    "- Metrics at layer L = int(n_layers × fraction): lens = lens accuracy (argmax over class tokens), survives "
    "to = the last block ≥ L up to which the lens accuracy's interval stays above the majority-class rate on every row "
    "from L, top-1 = vocab top-1 accuracy, answer = greedy exact match, first token = the first generated token "
    "is the answer's first token, probe = linear-probe test accuracy (selectivity = probe − control task).",
    "",
  ]
  lines += [
    "## The contrast that matters (stated before the results)",
    "",
    "- **dual (w = 0.7) minus SFT-only (w = 0) answer accuracy, per format**, paired on the same held-out "
    "prompts (same seed), at each classifier depth: does the classifier term cost or help answers? Every "
    "other comparison below is secondary.",
  ]
  by_n: dict = {}
  for fmt in g["formats"]:
    if design.get(fmt):
      by_n.setdefault(design[fmt], []).append(fmt)
  for n, fmts in by_n.items():
    lines.append(
      f"- Design ({', '.join(fmts)}; needs no results): N = {n} paired examples per format over "
      f"{len(g['seeds'])} seed(s). "
      "Worst case, independent Bernoulli(0.5) outcomes per example and arm: SE = √(0.5 / N) = "
      f"{100 * (0.5 / n) ** 0.5:.1f} pp, so the smallest difference detectable at {100 * POWER:g}% power "
      f"(two-sided α = {1 - confidence:.2g}) is (z_{0.5 + confidence / 2:g} + z_{POWER:g}) × SE = "
      f"{100 * stats.design_min_detectable_effect(n, confidence, POWER):.1f} pp. Seed-to-seed spread "
      "adds to it; the MDE column of the paired differences uses each contrast's observed bootstrap SE."
    )
  lines += [
    "",
    "## Method",
    "",
    f"- Cells: the mean over seeds of each seed's held-out accuracy, with a {pct} interval from a hierarchical "
    f"bootstrap ({N_RESAMPLES} resamples, numpy seed {BOOTSTRAP_SEED}): seeds resampled with replacement, then "
    "the examples within each drawn seed. Vocab top-1 and probe accuracy are bootstrapped from their counts.",
    f"- {FALLBACK_NOTE} Where every example of a cell has the same outcome (e.g. 100% in every seed) the "
    "bootstrap collapses to a point: the cell gets a Wilson interval on the pooled counts instead.",
    "- Paired differences: the same bootstrap on the per-example differences, the two arms' examples matched "
    "by prompt (same seed, same held-out prompts), with McNemar's exact test per seed as a check (n10:n01 = "
    "discordant pairs, two-sided binomial p). " + FALLBACK_NOTE + " Where every difference is the same: "
    "Wilson intervals on the two discordant proportions (each at 1 − α/2), differenced.",
    f"- Different prompts (symbolic vs semantic): independent bootstraps of the two cells; {FALLBACK_NOTE} "
    "Newcombe's interval on the pooled counts where either cell has a single outcome.",
    "- mean p(correct) and probe selectivity have no per-example values: mean over seeds with a t-interval "
    "across seeds (none with one seed or when seeds agree).",
    "- A winner is named only when the interval of the difference excludes 0; otherwise the answer is "
    "**cannot tell**, with the numbers.",
    "",
  ]
  n_layers = meta.get("n_layers")
  for fmt in g["formats"]:
    lines += [
      f"## {fmt}",
      "",
      "| Arm | w | fraction | L | lens acc | survives to | vocab top-1 | answer acc | first token | probe acc | selectivity | seeds |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, w in _arm_list(summary):
      for f in g["layer_fractions"]:
        s = {m: by.get((arm, fmt, f, m)) for m in METRICS}
        if s["lens_accuracy"] is None:
          continue
        sel = s["probe_selectivity"]
        lines.append(
          f"| {arm} | {'—' if w is None else f'{w:g}'} | {f:g} | {s['lens_accuracy']['layer']} | "
          f"{_fmt_ci(s['lens_accuracy'])} | {_fmt_survival(s['lens_survives_to'], n_layers)} | "
          f"{_fmt_ci(s['vocab_top1_accuracy'])} | {_fmt_ci(s['answer_accuracy'])} | "
          f"{_fmt_ci(s['first_token_accuracy'])} | {_fmt_ci(s['probe_accuracy'])} | "
          f"{_fmt_ci(sel, 1.0, '') if sel else 'n/a'} | {s['lens_accuracy']['n_seeds']} |"
        )
    lines.append("")
  if diffs:
    lines += [
      "## Paired differences vs SFT-only (same format, depth, seed and prompts)",
      "",
      f"| Contrast | format | fraction | metric | difference [{pct} CI] | MDE {100 * POWER:g}% power | "
      "McNemar per seed | verdict | seeds | pairs |",
      "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in diffs:
      lines.append(
        f"| {d['contrast']} | {d['format']} | {d['layer_fraction']:g} | {d['metric']} | {_fmt_diff(d)} | "
        f"{100 * d['mde_80']:.1f} pp | {d['mcnemar']} | {d['verdict']} | {d['n_seeds']} | {d['n_pairs']} |"
      )
    lines.append("")
  lines += ["![lens accuracy by depth](sweep_lens.png)", "", "![answer accuracy by depth](sweep_answer.png)", ""]
  lines += transfer_markdown(transfer or [], pct)
  lines += ["## Answers", ""] + answers(summary, diffs, g, rows or [], confidence) + [""]
  return "\n".join(lines)


def _fmt_boot(b: dict | None) -> str:
  return "—" if not b else f"{100 * b['mean']:.1f}% [{100 * b['ci_low']:.1f}, {100 * b['ci_high']:.1f}]"


def transfer_markdown(transfer: list[dict], pct: str) -> list[str]:
  """The transfer matrix and the computed-or-copied table (empty when each arm saw its own format only and no
  counterfactual was run)."""
  if not transfer or (len({r["eval_format"] for r in transfer}) < 2 and not any(r["flip_rate"] for r in transfer)):
    return []
  from lazarus_jax.analysis.compute_or_copy import RULE

  evals = sorted({r["eval_format"] for r in transfer})
  by = {(r["arm"], r["train_format"], r["layer_fraction"], r["eval_format"]): r for r in transfer}
  lines = [
    "## Transfer matrix (lens accuracy at L)",
    "",
    "Rows: the format an arm trained on; columns: the held-out format it was evaluated on (the same held-out "
    f"triples in each); cells: mean over seeds [{pct} hierarchical bootstrap].",
    "",
    "| Arm | trained on | fraction | " + " | ".join(evals) + " |",
    "|---|---|---|" + "---|" * len(evals),
  ]
  for arm, tf, frac in dict.fromkeys((r["arm"], r["train_format"], r["layer_fraction"]) for r in transfer):
    cells = [_fmt_ci(by[(arm, tf, frac, e)]["lens_accuracy"]) if (arm, tf, frac, e) in by else "—" for e in evals]
    lines.append(f"| {arm} | {tf} | {frac:g} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "## Computed or copied?",
    "",
    f"Rule (per run, at its classifier layer): {RULE}.",
    "",
    "| Arm | trained on | fraction | eval format | lens at L | bag-of-tokens | layer-0 best | flip rate | "
    "shuffled results | verdict per seed |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in transfer:
    if not r["verdicts"] and r["flip_rate"] is None:
      continue  # a depth-independent arm read at a depth other than its run's: no verdict there
    base = [f"{100 * r[k]:.1f}%" if r[k] is not None else "—" for k in ("bag_of_tokens", "layer0_best")]
    lines.append(
      f"| {r['arm']} | {r['train_format']} | {r['layer_fraction']:g} | {r['eval_format']} | "
      f"{_fmt_ci(r['lens_accuracy'])} | {base[0]} | {base[1]} | {_fmt_boot(r['flip_rate'])} | "
      f"{_fmt_boot(r['shuffled_accuracy'])} | {', '.join(r['verdicts']) or '—'} |"
    )
  return lines + [""]


def _cell_text(by: dict, arm: str, fmt: str, f: float, metric: str = "lens_accuracy") -> str:
  return _fmt_ci(by.get((arm, fmt, f, metric)))


def answers(summary: list[dict], diffs: list[dict], g: dict, rows: list[dict], confidence: float = 0.95) -> list[str]:
  by = {(r["arm"], r["format"], r["layer_fraction"], r["metric"]): r for r in summary}
  cells = _cells(rows)

  def rows_of(arm, fmt, f):
    return next((v for k, v in cells.items() if k[0] == arm and k[2] == fmt and k[3] == f), None)

  out = []
  # 1. Does the classifier term cost or help answers (the pre-stated contrast)?
  parts = []
  for d in diffs:
    if d["metric"] != "answer_accuracy" or plain_arm(d["arm"]) in GRPO_ARMS:  # the GRPO arms are answer 6's
      continue
    word = {"higher": "**helps** answers", "lower": "**costs** answers", "cannot tell": "**cannot tell** (the interval includes 0)"}[
      d["verdict"]
    ]
    parts.append(
      f"{d['arm']} − sft, {d['format']}, fraction {d['layer_fraction']:g} (L={d['layer']}): "
      f"{_fmt_diff(d)} — {word}; McNemar per seed {d['mcnemar']}; smallest effect detectable at "
      f"{100 * POWER:g}% power ≈ {100 * d['mde_80']:.1f} pp"
    )
  out.append(
    "**Does the classifier term cost or help answer accuracy vs SFT-only?** "
    + ("; ".join(parts) if parts else "Not measured (needs w=0 and a w>0 arm, with generation)")
    + "."
  )
  weighted = [a for a, w in _arm_list(summary) if w not in (None, 0.0)]
  # 2. Symbolic vs semantic: lens accuracy at L, different prompts (unpaired), per arm and depth.
  parts = []
  if len(g["formats"]) > 1:
    f0, f1 = g["formats"][:2]
    for arm in weighted:
      for f in g["layer_fractions"]:
        a, b = rows_of(arm, f0, f), rows_of(arm, f1, f)
        d = a and b and unpaired_rows(a, b, "lens_accuracy", confidence)
        if not d:
          continue
        verdict = {"higher": f"{f0} higher", "lower": f"{f1} higher", "cannot tell": "**cannot tell**"}[direction(d)]
        parts.append(
          f"{arm}, fraction {f:g}: {f0} {_cell_text(by, arm, f0, f)} vs {f1} {_cell_text(by, arm, f1, f)}"
          f" — {verdict} ({f0} − {f1} {_fmt_diff(d)})"
        )
  out.append(
    "**Symbolic vs semantic?** (lens accuracy at L) " + ("; ".join(parts) if parts else "Only one format in this sweep") + "."
  )
  # 3. Which depth: the highest mean, named only if its paired difference to every other depth excludes 0.
  parts = []
  for arm in weighted:
    for fmt in g["formats"]:
      fr = [f for f in g["layer_fractions"] if (arm, fmt, f, "lens_accuracy") in by]
      if len(fr) < 2:
        continue
      best = max(fr, key=lambda f: by[(arm, fmt, f, "lens_accuracy")]["mean"])
      tied, margins = [], []
      for f in fr:
        if f == best:
          continue
        d = paired_rows(
          rows_of(arm, fmt, best), rows_of(arm, fmt, f), "lens_accuracy", confidence, f"{arm}, {fmt}, fraction {best:g} vs {f:g}"
        )
        if d is None or direction(d) != "higher":
          tied.append(f)
        else:
          margins.append((d["mean_diff"], f, d))

      def cell(f):
        return f"fraction {f:g} (L={by[(arm, fmt, f, 'lens_accuracy')]['layer']}) {_cell_text(by, arm, fmt, f)}"

      if tied:
        parts.append(
          f"{arm}, {fmt}: **cannot tell** between "
          + ", ".join(cell(f) for f in [best] + tied)
          + " (the paired differences' intervals include 0)"
        )
      else:
        _, nxt, d = min(margins, key=lambda m: m[0])
        parts.append(f"{arm}, {fmt}: {cell(best)}, above every other depth (closest: fraction {nxt:g} by {_fmt_diff(d)})")
  out.append(
    "**Which depth works best?** (lens accuracy at L) "
    + ("; ".join(parts) if parts else "Fewer than two depths of a weighted arm in this sweep")
    + "."
  )
  # 4. Vocab-aligned classifier before -> after dual-reward training (paired: same seed, same prompts).
  parts = []
  for fmt in g["formats"]:
    for f in g["layer_fractions"]:
      b, d_rows = rows_of("base", fmt, f), rows_of("dual", fmt, f)
      d = b and d_rows and paired_rows(d_rows, b, "lens_accuracy", confidence, f"dual vs base, {fmt}, fraction {f:g}")
      if d:
        verdict = {"higher": "dual higher", "lower": "dual lower", "cannot tell": "**cannot tell**"}[direction(d)]
        parts.append(
          f"{fmt}, fraction {f:g}: base {_cell_text(by, 'base', fmt, f)} → dual "
          f"{_cell_text(by, 'dual', fmt, f)} — {verdict} ({_fmt_diff(d)})"
        )
  if parts:
    out.append("**Vocab-aligned classifier before → after dual-reward training** (lens accuracy at L): " + "; ".join(parts) + ".")
  # 5. How far past L the lens signal survives.
  parts = []
  for arm in weighted:
    for fmt in g["formats"]:
      for f in g["layer_fractions"]:
        s = by.get((arm, fmt, f, "lens_survives_to"))
        if s is not None:
          parts.append(
            f"{arm}, {fmt}, fraction {f:g} (L={s['layer']}): "
            + ("not above chance at L" if s["mean"] is None else f"to block {s['mean']}")
          )
  if parts:
    out.append(
      "**How far past L does the lens signal survive?** (every row from L above the majority-class rate) " + "; ".join(parts) + "."
    )
  # 6. The seed's open question: does GRPO produce better classifiers (and answers) than the supervised arms?
  parts = []
  for fmt in g["formats"]:
    for f in g["layer_fractions"]:
      for rl, sup in (("grpo", "sft"), ("grpo+lens", "dual"), ("grpo+lens", "grpo")):
        a_rows, b_rows = rows_of(rl, fmt, f), rows_of(sup, fmt, f)
        if not (a_rows and b_rows):
          continue
        for metric in ("lens_accuracy", "answer_accuracy"):
          d = paired_rows(a_rows, b_rows, metric, confidence, f"{rl} vs {sup}, {fmt}, fraction {f:g}, {metric}")
          if d:
            verdict = {"higher": f"{rl} higher", "lower": f"{rl} lower", "cannot tell": "**cannot tell**"}[direction(d)]
            parts.append(
              f"{fmt}, fraction {f:g}, {metric.replace('_', ' ')}: {rl} "
              f"{_cell_text(by, rl, fmt, f, metric)} vs {sup} {_cell_text(by, sup, fmt, f, metric)} — "
              f"{verdict} ({_fmt_diff(d)})"
            )
  if parts:
    out.append(
      "**Does GRPO produce better classifiers?** (paired on the same prompts; the GRPO arms trained longer, "
      "see the header) " + "; ".join(parts) + "."
    )
  return [f"{i}. {text}" for i, text in enumerate(out, 1)]


# ---- run ---------------------------------------------------------------------------------------------


def planned_pairs(c, g: dict) -> dict:
  """Held-out examples per format over all seeds, from the config alone (the design's N, before any results)."""
  from lazarus_jax.reporting.evaluate import select_examples

  out = {}
  for fmt in g["formats"]:
    out[fmt] = 0
    for seed in g["seeds"]:
      splits = data_lib.make_splits(formats=[fmt], n_eval_per_op=c.data.n_eval_per_op, seed=seed)
      out[fmt] += len(select_examples(splits.eval, splits.seed_prompts, c.eval.max_examples_per_op, seed))
  return out


def _shared_in(flats: list[dict], get):
  vals = []
  for fl in flats:
    if get(fl) not in vals:
      vals.append(get(fl))
  return vals[0] if len(vals) == 1 else "mixed: " + ", ".join(map(str, vals))


def grpo_header(desc: dict | None) -> list[str]:
  """The GRPO arms' budget and settings, stated in the header (sweep.grpo_arms)."""
  if not desc:
    return []
  return [
    f"- GRPO arms (train.objective=grpo) start from the same seed's SFT arm's adapter and train "
    f"{desc['train.steps']} more rounds (lr {desc['train.lr']}): each round samples G = {desc['grpo.group_size']} "
    f"completions (≤ {desc['grpo.max_new_tokens']} tokens, temperature {desc['grpo.temperature']}, top-p "
    f"{desc['grpo.top_p']}) for each of the batch's prompts and takes {desc['grpo.updates_per_batch']} optimizer "
    f"step(s); reward = exact answer (+ {desc['grpo.format_weight']} format); KL β {desc['grpo.kl_beta']} to the "
    f"model with adapters off; clip [{desc['grpo.clip_low']}, {desc['grpo.clip_high']}]; "
    f"{desc['grpo.aggregation']}-level loss; advantages scaled by the group std: {desc['grpo.scale_rewards']}. "
    "grpo = w 0; grpo+lens adds the lens term w × classifier loss at L (lazarus_jax/training/grpo.py). Budget: SFT's steps "
    "plus the GRPO rounds, so a GRPO − SFT contrast measures what the extra RL rounds add, not an equal-budget "
    "comparison of objectives."
  ]


def describe_arms(configs: list[dict]) -> dict:
  """The header's facts, read from the reported arms' own config.json (a value that differs is listed as such)."""
  flats = [flat_config(cfg) for cfg in configs]

  def shared(get):
    return _shared_in(flats, get)

  # The base arm's train.steps mean nothing; GRPO arms are described on their own line.
  is_grpo = lambda fl: fl.get("train.objective", "dual_reward") == "grpo"  # noqa: E731
  trained = [fl for fl in flats if fl["eval.adapter"] != "none" and not is_grpo(fl)]
  grpo = [fl for fl in flats if is_grpo(fl)]
  grpo_desc = None
  if grpo:
    grpo_desc = {
      k: _shared_in(grpo, lambda fl, k=k: fl[k])
      for k in (
        "train.steps",
        "train.lr",
        "grpo.group_size",
        "grpo.max_new_tokens",
        "grpo.temperature",
        "grpo.top_p",
        "grpo.updates_per_batch",
        "grpo.kl_beta",
        "grpo.clip_low",
        "grpo.clip_high",
        "grpo.aggregation",
        "grpo.scale_rewards",
        "grpo.format_weight",
      )
    }
  return {
    "model": shared(lambda fl: fl["model.path"] or fl["model.source"]),
    "steps": _shared_in(trained, lambda fl: fl["train.steps"]) if trained else "no",
    "grpo": grpo_desc,
    "lora_rank": shared(lambda fl: fl["lora.rank"]),
    "lora_alpha": shared(lambda fl: fl["lora.alpha"]),
    "lora_targets": shared(lambda fl: fl["lora.targets"]),
    "lr": _shared_in(trained, lambda fl: fl["train.lr"]) if trained else shared(lambda fl: fl["train.lr"]),
    "batch_size": shared(lambda fl: fl["train.batch_size"]),
    "max_examples_per_op": shared(lambda fl: fl["eval.max_examples_per_op"]),
  }


def run(config, workdir: str) -> dict:
  """Runs (or resumes) every arm, then writes the tables, figures and sweep.md. Returns the summary."""
  from lazarus_jax.workdir import WorkdirLock

  c = config

  settings.parse(c)
  g = grid(c)
  arms = plan(c)
  workdir = files.abspath(workdir)  # a local directory or a URL (gs://...): every path below goes through files
  files.check_output_dir(workdir, "--workdir")
  with WorkdirLock(workdir, "sweep"):  # one sweep per directory (each arm's run also locks its own directory)
    return _run(c, g, arms, workdir)


def _relative(path: str, workdir: str) -> str:
  """`path` (under `workdir`, built by files.join) relative to it: a string operation, so URLs work too."""
  return path[len(workdir.rstrip("/")) + 1 :] if files.is_remote(workdir) else os.path.relpath(path, workdir)


def _run(c, g: dict, arms: list, workdir: str) -> dict:
  files.makedirs(files.join(workdir, "arms"))
  files.write_json(files.join(workdir, "sweep_config.json"), c.to_dict(), indent=2, default=list)
  from lazarus_jax.training import compile_cache

  compile_cache.enable(files.join(workdir, "jax_cache"))  # arms of the same shapes compile the same programs
  dirs = {a.name: arm_dir(workdir, a, arm_config(c, a, workdir)) for a in arms}
  arms_dir = files.join(workdir, "arms")  # on an object store a prefix exists only once something is under it
  unhashed = sorted(set(files.listdir(arms_dir) if files.isdir(arms_dir) else []) & set(dirs))
  if unhashed:
    print(
      f"sweep: {len(unhashed)} arm dirs of an older sweep (no config hash, e.g. arms/{unhashed[0]}) are not reused", file=sys.stderr
    )
  ran, skipped = [], []
  t0 = time.perf_counter()
  bar = progress_bar(total=len(arms), desc="sweep")  # each arm's train and evaluate bars open below it
  for i, arm in enumerate(arms):
    bar.write(f"sweep: arm {i + 1}/{len(arms)} {os.path.basename(dirs[arm.name])}", file=sys.stderr)
    (ran if run_arm(c, arm, workdir) else skipped).append(arm.name)
    bar.update(1)
  bar.close()
  elapsed = time.perf_counter() - t0

  rows, t_rows, n_layers, configs = [], [], None, []
  for arm in arms:
    configs.append(stored_config(dirs[arm.name], arm_config(c, arm, workdir)))
    res = files.read_json(results_path(dirs[arm.name]), "arm results", f"delete {dirs[arm.name]} to run that arm again")
    n_layers = res["model"]["n_layers"]
    arm_result = arm_rows(arm, res, g["layer_fractions"], c.sweep.confidence)
    for r in arm_result:
      r["arm_dir"] = _relative(dirs[arm.name], workdir)
    rows += arm_result
    t_rows += transfer_rows(arm, res, g["layer_fractions"])
  summary = summarize(rows, c.sweep.confidence)
  transfer = summarize_transfer(t_rows, c.sweep.confidence)
  diffs = contrasts(rows, c.sweep.confidence)
  meta = {**describe_arms(configs), "n_layers": n_layers, "design_pairs": planned_pairs(c, g)}
  write_csv(files.join(workdir, "sweep_runs.csv"), rows)
  write_csv(files.join(workdir, "sweep_summary.csv"), summary)
  write_csv(files.join(workdir, "sweep_contrasts.csv"), diffs)
  write_csv(files.join(workdir, "sweep_transfer.csv"), t_rows)
  from lazarus_jax import provenance
  from lazarus_jax.reporting import report

  report.plot_sweep(summary, files.join(workdir, "sweep_lens.png"), "lens_accuracy", "lens accuracy at L")
  report.plot_sweep(summary, files.join(workdir, "sweep_answer.png"), "answer_accuracy", "answer accuracy")
  files.write_text(files.join(workdir, "sweep.md"), render_markdown(summary, diffs, g, meta, rows, c.sweep.confidence, transfer))
  out = {
    "grid": g,
    "meta": meta,
    "arms": [a.name for a in arms],
    "arm_dirs": {k: _relative(v, workdir) for k, v in dirs.items()},
    "ran": ran,
    "skipped": skipped,
    "seconds": elapsed,
    "runs": [public(r) for r in rows],
    "summary": summary,
    "contrasts": diffs,
    "transfer_runs": [public(r) for r in t_rows],
    "transfer": transfer,
    "statistics": {"n_resamples": N_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED, "power": POWER, "confidence": c.sweep.confidence},
    "provenance": provenance.collect(c),
  }
  files.write_json(files.join(workdir, "sweep_results.json"), out, indent=1, default=str)
  print(
    f"sweep: {len(ran)} arms ran, {len(skipped)} reused (same config, done before) in {elapsed:.0f}s; wrote "
    f"{workdir}/sweep.md, sweep_summary.csv",
    file=sys.stderr,
  )
  return out
