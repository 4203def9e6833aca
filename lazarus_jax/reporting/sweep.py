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
then `evaluate.run` (base model comparison off: the base arm measures it) or, for the base arm, `evaluate.run`
with `eval.adapter=none`. An arm whose `eval/results.json` exists is reused (its stored
config.json must match), and a partly trained arm resumes from its checkpoint, so re-running the same command
continues a sweep, while a changed config (steps, data, eval caps, ...) trains new arms and never reports old ones.

Statistics use the per-example results (results.json `per_example`): a cell's interval is a hierarchical bootstrap
over seeds and held-out examples; a contrast pairs the two arms' examples by prompt key (the same seed holds out
the same prompts) with McNemar's exact test per seed as a check (stats.py; sweep.md's Method section says it all).

This file plans and runs the arms; arms.py says what an arm is, sweep_stats.py computes the statistics and
sweep_report.py writes sweep.md and the CSVs.

Outputs in `<workdir>/`:
  sweep_runs.csv     one row per (arm run, depth): arm, weight, format, layer_fraction, layer, seed, run, arm_dir,
                     n_examples, chance (the majority-class rate: the bar for lens survival), metrics
  sweep_summary.csv  tidy: one row per (arm, format, layer_fraction, metric): mean, ci_low, ci_high, se, method,
                     n_seeds, n_examples and the per-seed values
  sweep_contrasts.csv paired differences of each weighted arm minus SFT-only (answer, first token, lens accuracy):
                     interval, se, smallest effect detectable at 80% power, McNemar per seed, verdict
  sweep.md           the pre-stated contrast, the method, the tables, the figures and the answers
  sweep_lens.png, sweep_answer.png; sweep_results.json (all of the above as JSON, and `mechanism`: when the arms
                     were evaluated with eval.mechanism, each arm's class-ablation effect minus sft's and base's on
                     the same prompts, per seed and pooled over seeds; sweep.md's "Is the classifier used more ...")
Metrics (held-out set of the arm's format, at the depth's layer L): lens_accuracy, lens_survives_to (the last
block >= L up to which the lens accuracy's interval stays above the majority-class rate on every row from L), vocab_top1_accuracy,
mean_correct_prob, probe_accuracy, probe_selectivity (row L+1 of the probes), answer_accuracy, first_token_accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

import ml_collections

from lazarus_jax import files, settings
from lazarus_jax.config import default_config, flat_config, without_added_defaults
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.errors import UserError
from lazarus_jax.reporting.arms import NON_RESULT_KEYS, Arm, arm_label, grpo_label, plain_arm
from lazarus_jax.reporting.sweep_report import _shared_in, render_markdown, write_csv
from lazarus_jax.reporting.sweep_stats import (
  BOOTSTRAP_SEED,
  N_RESAMPLES,
  POWER,
  arm_rows,
  contrasts,
  mechanism_contrasts,
  mechanism_runs,
  public,
  summarize,
  summarize_transfer,
  transfer_rows,
)
from lazarus_jax.settings import GRPO_ARMS, RL_ARMS
from lazarus_jax.training.logging_utils import progress_bar

# ---- the grid ----------------------------------------------------------------------------------------


def grid(c) -> dict:
  """The parsed, checked grid (settings.sweep_grid), as the dict the sweep's records hold."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings.sweep_grid(c)).items()}


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
          arms += [Arm(grpo_label("grpo+lens", ts), g["grpo_lens_weight"], fmt, f, seed, ts) for f in g["layer_fractions"]]
        if "sft+more" in g["grpo_arms"]:
          arms.append(Arm(grpo_label("sft+more", ts), 0.0, fmt, None, seed, ts))
        if "sft+lens" in g["grpo_arms"]:
          arms += [Arm(grpo_label("sft+lens", ts), g["grpo_lens_weight"], fmt, f, seed, ts) for f in g["layer_fractions"]]
  return arms


def arm_config(c, arm: Arm, workdir: str | None = None) -> ml_collections.ConfigDict:
  """The config of one arm: the sweep's config with only the arm's own keys changed.

  A GRPO arm also sets train.objective=grpo, train.steps=sweep.grpo_steps, train.lr=sweep.grpo_lr and
  train.init_adapter = the adapter of the same (format, seed) SFT arm under `workdir` (its hash names that arm's
  directory: a changed SFT arm makes new GRPO arms). The sft+more and sft+lens arms are the same warm start, steps
  and lr with the supervised objective (w = 0 and w = grpo_lens_weight): grpo's and grpo+lens's equal-budget
  controls (the same optimizer steps, on the same prompts)."""
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
    ac.train.objective = "grpo" if plain_arm(arm.arm) in RL_ARMS else "dual_reward"
    ac.train.steps = c.sweep.grpo_steps
    ac.train.lr = c.sweep.grpo_lr
    ac.train.warmup_steps = min(c.train.warmup_steps, max(c.sweep.grpo_steps // 10, 1))
    ac.train.init_adapter = files.join(arm_dir(root, sft, arm_config(c, sft)), "adapter")
  ac.resume = True  # a partly trained arm continues from its checkpoint
  ac.overwrite = False
  ac.lock()
  return ac


def result_config(config) -> dict:
  """An arm's resolved config (a ConfigDict, or the dict of its config.json), flat, without NON_RESULT_KEYS (and
  keys added after the first arms ran, at their defaults: config.ADDED_KEY_PREFIXES)."""
  d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  flat = flat_config(json.loads(json.dumps(d, default=list)))  # as config.json holds it: tuples read back as lists
  flat = without_added_defaults(flat)  # keys added later, at their defaults: earlier arms keep their hashes
  if flat.get("train.init_adapter"):  # a GRPO arm's warm start: the SFT arm's directory (name + hash), not where
    flat["train.init_adapter"] = "/".join(flat["train.init_adapter"].split(os.sep)[-3:])  # the sweep lives
  return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NON_RESULT_KEYS)}


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

    parsed = settings.parse(ac)  # once, for both
    result = train.run(parsed, armdir)
    if result.preempted:
      raise UserError(f"arm {arm.name} was stopped at step {result.final_step}: re-run the sweep to continue")
    evaluate.run(parsed, armdir)
  return True


# ---- per-example results -----------------------------------------------------------------------------


# ---- tables ------------------------------------------------------------------------------------------


# ---- sweep.md ----------------------------------------------------------------------------------------


# ---- run ---------------------------------------------------------------------------------------------


def planned_pairs(s: settings.Settings, g: dict) -> dict:
  """Held-out examples per format over all seeds, from the config alone (the design's N, before any results)."""
  from lazarus_jax.reporting.evaluate import select_examples

  out = {}
  for fmt in g["formats"]:
    out[fmt] = 0
    for seed in g["seeds"]:
      splits = data_lib.make_splits(formats=[fmt], n_eval_per_op=s.data.n_eval_per_op, seed=seed)
      out[fmt] += len(select_examples(splits.eval, splits.seed_prompts, s.eval.max_examples_per_op, seed))
  return out


def _control_desc(flats: list[dict]) -> dict | None:
  keys = ("train.steps", "train.lr", "classifier.weight")
  return {k: _shared_in(flats, lambda fl, k=k: fl[k]) for k in keys} if flats else None


def describe_arms(configs: list[dict]) -> dict:
  """The header's facts, read from the reported arms' own config.json (a value that differs is listed as such)."""
  flats = [flat_config(cfg) for cfg in configs]

  def shared(get):
    return _shared_in(flats, get)

  # The base arm's train.steps mean nothing; GRPO arms (and their controls, warm-started too) on their own lines.
  is_grpo = lambda fl: fl.get("train.objective", "dual_reward") == "grpo"  # noqa: E731
  trained = [fl for fl in flats if fl["eval.adapter"] != "none" and not is_grpo(fl) and not fl.get("train.init_adapter")]
  more = [fl for fl in flats if not is_grpo(fl) and fl.get("train.init_adapter")]
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
    "sft_more": _control_desc([fl for fl in more if not fl["classifier.weight"]]),
    "sft_lens": _control_desc([fl for fl in more if fl["classifier.weight"]]),
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

  c = config  # arms' configs are made from the ConfigDict (arm_config); what the sweep itself reads, from `s`
  s = settings.parse(c)
  g = grid(c)
  arms = plan(c)
  workdir = files.abspath(workdir)  # a local directory or a URL (gs://...): every path below goes through files
  files.check_output_dir(workdir, "--workdir")
  with WorkdirLock(workdir, "sweep"):  # one sweep per directory (each arm's run also locks its own directory)
    return _run(c, s, g, arms, workdir)


def _relative(path: str, workdir: str) -> str:
  """`path` (under `workdir`, built by files.join) relative to it: a string operation, so URLs work too."""
  return path[len(workdir.rstrip("/")) + 1 :] if files.is_remote(workdir) else os.path.relpath(path, workdir)


def _run(c, s: settings.Settings, g: dict, arms: list, workdir: str) -> dict:
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

  rows, t_rows, m_runs, n_layers, configs = [], [], [], None, []
  for arm in arms:
    configs.append(stored_config(dirs[arm.name], arm_config(c, arm, workdir)))
    res = files.read_json(results_path(dirs[arm.name]), "arm results", f"delete {dirs[arm.name]} to run that arm again")
    n_layers = res["model"]["n_layers"]
    arm_result = arm_rows(arm, res, g["layer_fractions"], s.sweep.confidence)
    for r in arm_result:
      r["arm_dir"] = _relative(dirs[arm.name], workdir)
    rows += arm_result
    t_rows += transfer_rows(arm, res, g["layer_fractions"])
    m_runs += mechanism_runs(arm, res, g["layer_fractions"])
  summary = summarize(rows, s.sweep.confidence)
  transfer = summarize_transfer(t_rows, s.sweep.confidence)
  diffs = contrasts(rows, s.sweep.confidence)
  # None: no arm has a mechanism section and none was asked for; [] (sweep.md says so): asked for, but reused arms
  # evaluated before it was on keep their results (eval.mechanism is not part of an arm's hash).
  mech = mechanism_contrasts(m_runs, s.sweep.confidence) if m_runs else ([] if s.eval.mechanism.enabled else None)
  meta = {**describe_arms(configs), "n_layers": n_layers, "design_pairs": planned_pairs(s, g)}
  write_csv(files.join(workdir, "sweep_runs.csv"), rows)
  write_csv(files.join(workdir, "sweep_summary.csv"), summary)
  write_csv(files.join(workdir, "sweep_contrasts.csv"), diffs)
  write_csv(files.join(workdir, "sweep_transfer.csv"), t_rows)
  from lazarus_jax import provenance
  from lazarus_jax.reporting import report

  report.plot_sweep(summary, files.join(workdir, "sweep_lens.png"), "lens_accuracy", "lens accuracy at L")
  report.plot_sweep(summary, files.join(workdir, "sweep_answer.png"), "answer_accuracy", "answer accuracy")
  files.write_text(files.join(workdir, "sweep.md"), render_markdown(summary, diffs, g, meta, rows, s.sweep.confidence, transfer, mech))
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
    "mechanism": mech,
    "statistics": {"n_resamples": N_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED, "power": POWER, "confidence": s.sweep.confidence},
    "provenance": provenance.collect(s.record),
  }
  files.write_json(files.join(workdir, "sweep_results.json"), out, indent=1, default=str)
  print(
    f"sweep: {len(ran)} arms ran, {len(skipped)} reused (same config, done before) in {elapsed:.0f}s; wrote "
    f"{workdir}/sweep.md, sweep_summary.csv",
    file=sys.stderr,
  )
  return out
