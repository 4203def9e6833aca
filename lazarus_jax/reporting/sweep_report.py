"""The sweep's written outputs: sweep.md (method, the pre-stated contrast, tables, answers with intervals) and the
CSVs. The numbers come from sweep_stats.py; this file only formats them."""

from __future__ import annotations

import csv

from lazarus_jax import files
from lazarus_jax.analysis import stats
from lazarus_jax.reporting.arms import NON_RESULT_KEYS, plain_arm
from lazarus_jax.reporting.sweep_stats import (
  BOOTSTRAP_SEED,
  METRICS,
  N_RESAMPLES,
  POWER,
  _cells,
  _order,
  direction,
  paired_rows,
  public,
  unpaired_rows,
)
from lazarus_jax.settings import GRPO_ARMS

FALLBACK_NOTE = "†"


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
  mechanism: list[dict] | None = None,
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
    *control_header("sft+more", meta.get("sft_more")),
    *control_header("sft+lens", meta.get("sft_lens")),
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
  lines += mechanism_markdown(mechanism, pct)
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
    f"Rule (per run, at its classifier layer): {RULE}. Trained reader: a bag-of-tokens probe fitted on the "
    "run's training prompts and tested on the whole held-out set (the bar for held-out templates and symbols; "
    "beside the rule, not part of it). The verdict is the run's, from all its formats together (one per seed), "
    "shown on each of its rows: a row's own lens and baselines are beside it.",
    "",
    "| Arm | trained on | fraction | eval format | lens at L | bag-of-tokens | layer-0 best | trained reader | "
    "flip rate | shuffled results | the run's verdict, per seed |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in transfer:
    if not r["verdicts"] and r["flip_rate"] is None:
      continue  # a depth-independent arm read at a depth other than its run's: no verdict there
    base = [f"{100 * r[k]:.1f}%" if r.get(k) is not None else "—" for k in ("bag_of_tokens", "layer0_best", "trained_reader")]
    lines.append(
      f"| {r['arm']} | {r['train_format']} | {r['layer_fraction']:g} | {r['eval_format']} | "
      f"{_fmt_ci(r['lens_accuracy'])} | {base[0]} | {base[1]} | {base[2]} | {_fmt_boot(r['flip_rate'])} | "
      f"{_fmt_boot(r['shuffled_accuracy'])} | {', '.join(r['verdicts']) or '—'} |"
    )
  return lines + [""]


def _pp(d: dict | None) -> str:
  return "n/a" if not d else f"{100 * d['mean_diff']:+.1f} pp [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def mechanism_markdown(mech: list[dict] | None, pct: str) -> list[str]:
  """Is the classifier used more after dual-reward training than after SFT (and than before training)? The
  class-ablation effect at L, arm minus sft / base, paired by prompt within each seed (sweep_stats.mechanism_cell).
  Empty when no arm was evaluated with eval.mechanism (mech None)."""
  if mech is None:
    return []
  lines = [
    "## Is the classifier used more after dual-reward training than after SFT?",
    "",
    "Ablation effect per prompt = clean answer correct minus answer correct with the class-word directions projected "
    "out at row L+1 (1: the ablation broke a correct answer); a − b is paired prompt by prompt within each seed (the "
    f"two arms of a seed answer the same held-out prompts), pooled over seeds then prompts [{pct} hierarchical "
    "bootstrap]. **Positive = the class ablation costs a's answers more than b's on the same prompts (a's answer uses "
    "the class directions more); read it against the random-direction control, the same difference for a Gaussian "
    "direction ablation, which should be near 0.** Every edited row: sweep_results.json `mechanism`.",
    "",
  ]
  if not mech:
    return lines + [
      "No pair of arms to compare: the arms (or the sft and base arms) have no mechanism section. eval.mechanism is not "
      "part of an arm's hash, so arms evaluated before it was enabled are reused without one.",
      "",
    ]
  lines += [
    "| contrast | format | fraction | row (L) | b effect | a effect | class ablation: a − b | random direction: a − b | "
    "broken only in a : only in b, McNemar p | verdict | seeds | prompts |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  words = {"higher": "a uses it more", "lower": "b uses it more", "cannot tell": "**cannot tell**"}
  for m in mech:
    head = f"| {m['contrast']} | {m['format']} | {m['layer_fraction']:g} | {m['row']} (L={m['layer']}) |"
    r = m["at_L"]
    if r is None:
      why = "no seed paired" if not m["seeds"] else f"row {m['row']} not edited in both arms (eval.mechanism.rows)"
      lines.append(f"{head} {why} | | | | | | {len(m['seeds'])} | {m['n_prompts']} |")
    else:
      tests = "; ".join(f"s{s} {t['n10']}:{t['n01']} p={t['p']:.2g}" for s, t in zip(r["broken"]["seeds"], r["broken"]["mcnemar"]))
      lines.append(
        f"{head} {100 * r['b_effect']:+.1f} pp | {100 * r['a_effect']:+.1f} pp | {_pp(r['difference'])} | "
        f"{_pp(r['random_difference'])} | {tests} | {words[r['verdict']]} | {len(m['seeds'])} | {m['n_prompts']} |"
      )
    for ps in m["per_seed"]:
      at = next((x for x in ps["rows"] if x["row"] == m["row"]), None)
      if at is not None:
        lines.append(
          f"| ↳ seed {ps['seed']} | | | | {100 * at['b_effect']:+.1f} pp | {100 * at['a_effect']:+.1f} pp | "
          f"{_pp(at['difference'])} | {_pp(at.get('random_difference'))} | "
          f"{at['broken']['mcnemar']['n10']}:{at['broken']['mcnemar']['n01']} p={at['broken']['mcnemar']['p']:.2g} | | 1 | {ps['n']} |"
        )
    for u in m["unpaired"]:
      lines.append(f"| ↳ seed {u['seed']} | not paired: {u['reason']} | | | | | | | | | | |")
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
      pairs = (("grpo", "sft+more"), ("grpo", "sft"), ("grpo+lens", "sft+lens"), ("grpo+lens", "dual"), ("grpo+lens", "grpo"))
      for rl, sup in pairs:
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
      "**Does GRPO produce better classifiers?** (paired on the same prompts; the GRPO arms trained longer than "
      "sft and dual, see the header; grpo vs sft+more and grpo+lens vs sft+lens are the equal-budget contrasts) "
      + "; ".join(parts)
      + "."
    )
  return [f"{i}. {text}" for i, text in enumerate(out, 1)]


def _shared_in(flats: list[dict], get):
  vals = []
  for fl in flats:
    if get(fl) not in vals:
      vals.append(get(fl))
  return vals[0] if len(vals) == 1 else "mixed: " + ", ".join(map(str, vals))


def control_header(name: str, desc: dict | None) -> list[str]:
  """An equal-budget control's line (sweep.grpo_arms=...,sft+more / sft+lens)."""
  if not desc:
    return []
  loss = "supervised steps" if name == "sft+more" else f"dual-reward steps (w {desc['classifier.weight']})"
  rl = "GRPO's" if name == "sft+more" else "GRPO+lens's"
  return [
    f"- {name}: the same seed's SFT adapter trained {desc['train.steps']} more {loss} (lr "
    f"{desc['train.lr']}) on the batches the GRPO rounds draw: {rl} equal-budget control (the same optimizer "
    "steps and prompts; GRPO also samples G completions per prompt)."
  ]


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
