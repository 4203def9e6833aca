"""The controlled comparison: arms that differ only in the loss weight (ORIGINAL_DEFECTS #16).

  python -m lazarus_jax.sweep --config configs/smollm2_135m.py --workdir runs/sweep \
      [--config.sweep.seeds=0,1,2] [--config.sweep.layer_fractions=0.25,0.55,0.85] [--config.train.steps=...]

Every arm takes the config as given (model, data sizes, LoRA placement, optimizer, steps) and changes only:
  - classifier.weight: the arm ("base" = no training, "sft" = w=0, "dual" = w=0.7, "classifier" = w=1,
    other weights "w<value>"), from `sweep.weights` (+ base when `sweep.include_base`);
  - data.format: one of `sweep.formats` (the arm trains and is evaluated on that format);
  - classifier.layer_fraction: one of `sweep.layer_fractions` (classifier.layer is set to -1 so the fraction
    decides L = int(n_layers * f));
  - seed: one of `sweep.seeds` (the train/eval split, LoRA init and batch order).
Arms with w = 0 and the base arm do not depend on the classifier layer (the classifier term has weight 0),
so they run once per (format, seed) and are read at every depth from their all-layer lens.

Each arm lives in `<workdir>/arms/<name>/` and is `train.run` (which ends with `evaluate.run`, base model
comparison off: the base arm measures it) or, for the base arm, `evaluate.run` with `eval.adapter=none`.
An arm whose `eval/results.json` exists is skipped, and a partly trained arm resumes from its checkpoint,
so re-running the same command continues a sweep.

Outputs in `<workdir>/`:
  sweep_runs.csv     one row per (arm run, depth): arm, weight, format, layer_fraction, layer, seed, metrics
  sweep_summary.csv  tidy: one row per (arm, format, layer_fraction, metric) with mean, 95% t-interval across
                     seeds (ci_low/ci_high empty with one seed), n_seeds and the per-seed values
  sweep_contrasts.csv paired (same seed) differences of each weighted arm minus SFT-only
  sweep.md           the tables in markdown, the figures and the answers to the experiment's questions
  sweep_lens.png, sweep_answer.png; sweep_results.json (all of the above as JSON)
Metrics (held-out set of the arm's format, at the depth's layer L): lens_accuracy, vocab_top1_accuracy,
mean_correct_prob, probe_accuracy, probe_selectivity (row L+1 of the probes), answer_accuracy.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time

import ml_collections

from lazarus_jax import data as data_lib
from lazarus_jax.config import default_config
from lazarus_jax.errors import UserError
from lazarus_jax.stats import mean_ci

METRICS = ("lens_accuracy", "vocab_top1_accuracy", "mean_correct_prob", "probe_accuracy", "probe_selectivity",
           "answer_accuracy")
BOUNDED_METRICS = ("lens_accuracy", "vocab_top1_accuracy", "mean_correct_prob", "probe_accuracy",
                   "answer_accuracy")
NAMED_WEIGHTS = {0.0: "sft", 0.7: "dual", 1.0: "classifier"}


@dataclasses.dataclass(frozen=True)
class Arm:
  arm: str  # base | sft | dual | classifier | w<value>
  weight: float | None  # None for base
  fmt: str
  layer_fraction: float | None  # None: depth-independent (base, w = 0), read at every depth
  seed: int

  @property
  def name(self) -> str:
    depth = "" if self.layer_fraction is None else f"-f{self.layer_fraction:g}"
    return f"{self.arm}-{self.fmt}{depth}-s{self.seed}"


# ---- the grid ----------------------------------------------------------------------------------------

def _split(spec: str, key: str) -> list[str]:
  items = [s.strip() for s in str(spec).split(",") if s.strip()]
  if not items:
    raise UserError(f"sweep.{key} is empty: give a comma-separated list")
  if len(set(items)) != len(items):
    raise UserError(f"sweep.{key}={spec!r} lists a value twice")
  return items


def _floats(spec: str, key: str) -> list[float]:
  try:
    return [float(s) for s in _split(spec, key)]
  except ValueError:
    raise UserError(f"sweep.{key}={spec!r} must be comma-separated numbers") from None


def grid(c) -> dict:
  """The parsed, checked grid (before any work)."""
  s = c.sweep
  weights = _floats(s.weights, "weights")
  for w in weights:
    if not 0.0 <= w <= 1.0:
      raise UserError(f"sweep.weights: {w} is outside [0, 1]")
  formats = _split(s.formats, "formats")
  for f in formats:
    if f not in data_lib.FORMATS:
      raise UserError(f"sweep.formats: unknown format {f!r}: use {', '.join(data_lib.FORMATS)}")
  fractions = _floats(s.layer_fractions, "layer_fractions")
  for f in fractions:
    if not 0.0 < f < 1.0:
      raise UserError(f"sweep.layer_fractions: {f} is outside (0, 1)")
  try:
    seeds = [int(x) for x in _split(s.seeds, "seeds")]
  except ValueError:
    raise UserError(f"sweep.seeds={s.seeds!r} must be comma-separated non-negative integers") from None
  if any(x < 0 for x in seeds):
    raise UserError(f"sweep.seeds={s.seeds!r} must be non-negative")
  if not 0.0 < s.confidence < 1.0:
    raise UserError(f"sweep.confidence must be in (0, 1), got {s.confidence}")
  return {"weights": weights, "formats": formats, "layer_fractions": fractions, "seeds": seeds,
          "include_base": bool(s.include_base)}


def arm_label(weight: float) -> str:
  return NAMED_WEIGHTS.get(round(weight, 6), f"w{weight:g}")


def plan(c) -> list[Arm]:
  g = grid(c)
  arms = []
  for fmt in g["formats"]:
    for seed in g["seeds"]:
      if g["include_base"]:
        arms.append(Arm("base", None, fmt, None, seed))
      for w in g["weights"]:
        if w == 0.0:
          arms.append(Arm(arm_label(w), w, fmt, None, seed))
        else:
          arms += [Arm(arm_label(w), w, fmt, f, seed) for f in g["layer_fractions"]]
  return arms


def arm_config(c, arm: Arm) -> ml_collections.ConfigDict:
  """The config of one arm: the sweep's config with only the arm's own keys changed."""
  d = c.to_dict()
  ac = ml_collections.ConfigDict(d)
  ac.sweep = default_config().sweep  # arm dirs do not depend on the grid, so a grown sweep still resumes
  ac.seed = arm.seed
  ac.data.format = arm.fmt
  ac.classifier.layer = -1
  if arm.layer_fraction is not None:
    ac.classifier.layer_fraction = arm.layer_fraction
  ac.classifier.weight = 0.0 if arm.weight is None else arm.weight
  ac.eval.enabled = True
  ac.eval.compare_base = False  # the base arm measures the base model, on the same split
  ac.eval.adapter = "none" if arm.arm == "base" else "workdir"
  ac.resume = True  # a partly trained arm continues from its checkpoint
  ac.overwrite = False
  ac.lock()
  return ac


# ---- running -----------------------------------------------------------------------------------------

def results_path(workdir: str, arm: Arm) -> str:
  return os.path.join(workdir, "arms", arm.name, "eval", "results.json")


def run_arm(c, arm: Arm, workdir: str) -> bool:
  """Trains and evaluates one arm unless its results exist; True when it ran."""
  if os.path.isfile(results_path(workdir, arm)):
    return False
  armdir = os.path.join(workdir, "arms", arm.name)
  ac = arm_config(c, arm)
  if arm.arm == "base":
    from lazarus_jax import evaluate
    os.makedirs(armdir, exist_ok=True)
    with open(os.path.join(armdir, "config.json"), "w") as f:
      json.dump(ac.to_dict(), f, indent=2, default=list)
    evaluate.run(ac, armdir)
  else:
    from lazarus_jax import train
    result = train.run(ac, armdir)
    if result.preempted:
      raise UserError(f"arm {arm.name} was stopped at step {result.final_step}: re-run the sweep to continue")
  return True


# ---- tables ------------------------------------------------------------------------------------------

def arm_rows(arm: Arm, results: dict, fractions: list[float]) -> list[dict]:
  """One row per depth this arm reports: its own fraction, or every fraction for depth-independent arms."""
  n_layers = results["model"]["n_layers"]
  rows = []
  for f in ([arm.layer_fraction] if arm.layer_fraction is not None else fractions):
    layer = int(n_layers * f)
    lens = results["lens"][layer + 1]["by_format"][arm.fmt]
    row = {"arm": arm.arm, "weight": arm.weight, "format": arm.fmt, "layer_fraction": f, "layer": layer,
           "seed": arm.seed, "run": arm.name,
           "lens_accuracy": lens["accuracy"], "vocab_top1_accuracy": lens["vocab_top1_accuracy"],
           "mean_correct_prob": lens["mean_correct_prob"], "probe_accuracy": None, "probe_selectivity": None,
           "answer_accuracy": None}
    pr = (results.get("probes") or {}).get("by_format", {}).get(arm.fmt)
    if pr and "layers" in pr:
      row["probe_accuracy"] = pr["layers"][layer + 1]["test_accuracy"]
      row["probe_selectivity"] = pr["layers"][layer + 1]["selectivity"]
    if results.get("answer_accuracy"):
      row["answer_accuracy"] = results["answer_accuracy"]["by_format"][arm.fmt]["accuracy"]
    rows.append(row)
  return rows


def _none(x):
  return None if x is None or (isinstance(x, float) and x != x) else x


def summarize(rows: list[dict], confidence: float = 0.95) -> list[dict]:
  """Tidy summary: mean and t-interval across seeds per (arm, weight, format, layer_fraction, layer, metric)."""
  groups: dict = {}
  for r in rows:
    key = (r["arm"], r["weight"], r["format"], r["layer_fraction"], r["layer"])
    groups.setdefault(key, []).append(r)
  out = []
  for (arm, weight, fmt, frac, layer), rs in groups.items():
    for metric in METRICS:
      vals = [r[metric] for r in sorted(rs, key=lambda r: r["seed"]) if r[metric] is not None]
      if not vals:
        continue
      m, lo, hi = mean_ci(vals, confidence)
      # A t-interval can leave the range the metric lives in (accuracies [0, 1], selectivity [-1, 1]).
      bounds = (0.0, 1.0) if metric in BOUNDED_METRICS else (-1.0, 1.0) if metric == "probe_selectivity" else None
      if bounds:
        lo, hi = (None if v is None or v != v else min(max(v, bounds[0]), bounds[1]) for v in (lo, hi))
      out.append({"arm": arm, "weight": weight, "format": fmt, "layer_fraction": frac, "layer": layer,
                  "metric": metric, "mean": m, "ci_low": _none(lo), "ci_high": _none(hi), "n_seeds": len(vals),
                  "values": vals})
  return sorted(out, key=_order)


def contrasts(rows: list[dict], confidence: float = 0.95, baseline: str = "sft") -> list[dict]:
  """Paired differences (same format, depth and seed) of each weighted arm minus `baseline`."""
  base = {(r["format"], r["layer_fraction"], r["seed"]): r for r in rows if r["arm"] == baseline}
  groups: dict = {}
  for r in rows:
    if r["arm"] in (baseline, "base"):
      continue
    b = base.get((r["format"], r["layer_fraction"], r["seed"]))
    if b is not None:
      groups.setdefault((r["arm"], r["weight"], r["format"], r["layer_fraction"], r["layer"]), []).append((r, b))
  out = []
  for (arm, weight, fmt, frac, layer), pairs in groups.items():
    for metric in ("answer_accuracy", "lens_accuracy"):
      diffs = [r[metric] - b[metric] for r, b in pairs if r[metric] is not None and b[metric] is not None]
      if not diffs:
        continue
      m, lo, hi = mean_ci(diffs, confidence)
      out.append({"contrast": f"{arm} - {baseline}", "arm": arm, "weight": weight, "format": fmt,
                  "layer_fraction": frac, "layer": layer, "metric": metric, "mean_diff": m, "ci_low": _none(lo),
                  "ci_high": _none(hi), "n_seeds": len(diffs), "diffs": diffs})
  return sorted(out, key=_order)


def _order(r):
  arm_rank = {"base": 0, "sft": 1, "dual": 2, "classifier": 3}.get(r["arm"], 4)
  return (r["format"], arm_rank, r["weight"] if r["weight"] is not None else -1, r["layer_fraction"],
          r.get("metric", ""))


def write_csv(path: str, rows: list[dict]) -> None:
  if not rows:
    open(path, "w").close()
    return
  keys = list(rows[0])
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
      w.writerow({k: (" ".join(f"{v:.4g}" for v in r[k]) if isinstance(r[k], list) else
                      ("" if r[k] is None else r[k])) for k in keys})


def _fmt_ci(s: dict | None, scale: float = 100.0, unit: str = "%") -> str:
  if s is None:
    return "n/a"
  m = f"{scale * s['mean']:.1f}{unit}"
  if s["ci_low"] is None:
    return m
  return f"{m} [{scale * s['ci_low']:.1f}, {scale * s['ci_high']:.1f}]"


def render_markdown(summary: list[dict], diffs: list[dict], g: dict, meta: dict) -> str:
  by = {(r["arm"], r["format"], r["layer_fraction"], r["metric"]): r for r in summary}
  arms = sorted({(r["arm"], r["weight"]) for r in summary}, key=lambda a: _order({"arm": a[0], "weight": a[1],
                                                                                   "format": "", "layer_fraction": 0}))
  lines = ["# Controlled comparison: loss weight × format × classifier depth × seed", "",
           f"- Model `{meta['model']}` ({meta['n_layers']} blocks); {meta['steps']} training steps per arm; "
           f"LoRA r{meta['lora_rank']} alpha {meta['lora_alpha']} on {meta['lora_targets']}; lr {meta['lr']}; "
           f"batch {meta['batch_size']}; held-out up to {meta['max_examples_per_op']} per operation",
           f"- Arms share data, LoRA placement, optimizer and steps; only classifier.weight differs (base = no "
           f"training, sft = 0, dual = 0.7, classifier = 1). Seeds {g['seeds']} (split, init, batch order).",
           "- Cells: mean over seeds [95% t-interval across seeds] (no interval with one seed). base and sft do "
           "not depend on depth: one run each, read at every depth's layer.",
           "- Metrics at layer L = int(n_layers × fraction): lens = lens accuracy (argmax over class tokens), top-1 "
           "= vocab top-1 accuracy, answer = greedy exact match, probe = linear-probe test accuracy "
           "(selectivity = probe − control task).", ""]
  for fmt in g["formats"]:
    lines += [f"## {fmt}", "", "| Arm | w | fraction | L | lens acc | vocab top-1 | answer acc | probe acc | "
              "selectivity | seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, w in arms:
      for f in g["layer_fractions"]:
        s = {m: by.get((arm, fmt, f, m)) for m in METRICS}
        if s["lens_accuracy"] is None:
          continue
        sel = s["probe_selectivity"]
        lines.append(
            f"| {arm} | {'—' if w is None else f'{w:g}'} | {f:g} | {s['lens_accuracy']['layer']} | "
            f"{_fmt_ci(s['lens_accuracy'])} | {_fmt_ci(s['vocab_top1_accuracy'])} | "
            f"{_fmt_ci(s['answer_accuracy'])} | {_fmt_ci(s['probe_accuracy'])} | "
            f"{_fmt_ci(sel, 1.0, '') if sel else 'n/a'} | {s['lens_accuracy']['n_seeds']} |")
    lines.append("")
  if diffs:
    lines += ["## Paired differences vs SFT-only (same format, depth and seed)", "",
              "| Contrast | format | fraction | metric | mean difference [95% CI] | seeds |", "|---|---|---|---|---|---|"]
    for d in diffs:
      ci_txt = "" if d["ci_low"] is None else f" [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"
      lines.append(f"| {d['contrast']} | {d['format']} | {d['layer_fraction']:g} | {d['metric']} | "
                   f"{100 * d['mean_diff']:+.1f} pp{ci_txt} | {d['n_seeds']} |")
    lines.append("")
  lines += ["![lens accuracy by depth](sweep_lens.png)", "", "![answer accuracy by depth](sweep_answer.png)", ""]
  lines += ["## Answers", ""] + answers(summary, diffs, g) + [""]
  return "\n".join(lines)


def answers(summary: list[dict], diffs: list[dict], g: dict) -> list[str]:
  by = {(r["arm"], r["format"], r["layer_fraction"], r["metric"]): r for r in summary}
  out = []
  # Does the classifier term change answer accuracy vs SFT-only?
  parts = []
  for d in diffs:
    if d["metric"] != "answer_accuracy":
      continue
    if d["ci_low"] is None:
      verdict = "one seed: no interval"
    elif d["ci_low"] > 0 or d["ci_high"] < 0:
      verdict = "**changes** it (interval excludes 0)"
    else:
      verdict = "no detectable change (interval includes 0)"
    parts.append(f"{d['arm']} vs sft, {d['format']}, fraction {d['layer_fraction']:g}: "
                 f"{100 * d['mean_diff']:+.1f} pp — {verdict}")
  out.append("1. **Does the classifier term change answer accuracy vs SFT-only?** " +
             ("; ".join(parts) if parts else "Not measured (needs w=0 and a w>0 arm, with generation)") + ".")
  # Symbolic vs semantic; which depth works best (per weighted arm).
  weighted = sorted({r["arm"] for r in summary if r["weight"] not in (None, 0.0)})
  fmt_parts, depth_parts = [], []
  for arm in weighted:
    best_by_fmt = {}
    for fmt in g["formats"]:
      cells = [by[(arm, fmt, f, "lens_accuracy")] for f in g["layer_fractions"] if (arm, fmt, f, "lens_accuracy") in by]
      if cells:
        best = max(cells, key=lambda r: r["mean"])
        best_by_fmt[fmt] = best
        depth_parts.append(f"{arm}, {fmt}: fraction {best['layer_fraction']:g} (L={best['layer']}, lens "
                           f"{_fmt_ci(best)})")
    if len(best_by_fmt) > 1:
      fmt_parts.append(f"{arm}: " + ", ".join(f"{fmt} best {_fmt_ci(b)} at fraction {b['layer_fraction']:g}"
                                               for fmt, b in best_by_fmt.items()))
  out.append("2. **Symbolic vs semantic?** " + ("; ".join(fmt_parts) if fmt_parts else
                                                  "Only one format in this sweep") + ".")
  out.append("3. **Which depth works best?** (highest mean lens accuracy) " +
             ("; ".join(depth_parts) if depth_parts else "No weighted arm in this sweep") + ".")
  # Vocab-aligned classifier after vs before training, at each depth.
  parts = []
  for fmt in g["formats"]:
    for f in g["layer_fractions"]:
      b = by.get(("base", fmt, f, "lens_accuracy"))
      d = by.get(("dual", fmt, f, "lens_accuracy"))
      if b and d:
        parts.append(f"{fmt}, fraction {f:g}: base {_fmt_ci(b)} → dual {_fmt_ci(d)}")
  if parts:
    out.append("4. **Vocab-aligned classifier before → after dual-reward training** (lens accuracy at L, chance "
               "25% with 4 classes): " + "; ".join(parts) + ".")
  return out


# ---- run ---------------------------------------------------------------------------------------------

def run(config, workdir: str) -> dict:
  """Runs (or resumes) every arm, then writes the tables, figures and sweep.md. Returns the summary."""
  c = config
  from lazarus_jax import experiment
  experiment.validate_config(c)
  g = grid(c)
  arms = plan(c)
  workdir = os.path.abspath(workdir)
  os.makedirs(os.path.join(workdir, "arms"), exist_ok=True)
  with open(os.path.join(workdir, "sweep_config.json"), "w") as f:
    json.dump(c.to_dict(), f, indent=2, default=list)
  ran, skipped = [], []
  t0 = time.perf_counter()
  for i, arm in enumerate(arms):
    print(f"sweep: arm {i + 1}/{len(arms)} {arm.name}", file=sys.stderr)
    (ran if run_arm(c, arm, workdir) else skipped).append(arm.name)
  elapsed = time.perf_counter() - t0

  rows, n_layers = [], None
  for arm in arms:
    with open(results_path(workdir, arm)) as f:
      res = json.load(f)
    n_layers = res["model"]["n_layers"]
    rows += arm_rows(arm, res, g["layer_fractions"])
  summary = summarize(rows, c.sweep.confidence)
  diffs = contrasts(rows, c.sweep.confidence)
  meta = {"model": c.model.path or c.model.source, "n_layers": n_layers, "steps": c.train.steps,
          "lora_rank": c.lora.rank, "lora_alpha": c.lora.alpha, "lora_targets": c.lora.targets, "lr": c.train.lr,
          "batch_size": c.train.batch_size, "max_examples_per_op": c.eval.max_examples_per_op}
  write_csv(os.path.join(workdir, "sweep_runs.csv"), rows)
  write_csv(os.path.join(workdir, "sweep_summary.csv"), summary)
  write_csv(os.path.join(workdir, "sweep_contrasts.csv"), diffs)
  from lazarus_jax import provenance, report
  report.plot_sweep(summary, os.path.join(workdir, "sweep_lens.png"), "lens_accuracy", "lens accuracy at L")
  report.plot_sweep(summary, os.path.join(workdir, "sweep_answer.png"), "answer_accuracy", "answer accuracy")
  with open(os.path.join(workdir, "sweep.md"), "w") as f:
    f.write(render_markdown(summary, diffs, g, meta))
  out = {"grid": g, "meta": meta, "arms": [a.name for a in arms], "ran": ran, "skipped": skipped,
         "seconds": elapsed, "runs": rows, "summary": summary, "contrasts": diffs,
         "provenance": provenance.collect(c)}
  with open(os.path.join(workdir, "sweep_results.json"), "w") as f:
    json.dump(out, f, indent=1, default=str)
  print(f"sweep: {len(ran)} arms ran, {len(skipped)} skipped (done before) in {elapsed:.0f}s; wrote "
        f"{workdir}/sweep.md, sweep_summary.csv", file=sys.stderr)
  return out


if __name__ == "__main__":
  from lazarus_jax.cli import run_cli, workdir_main
  run_cli(workdir_main(run, "the sweep directory (arms go to <workdir>/arms/<name>)"), with_config=True)
