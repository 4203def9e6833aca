"""The evaluation report: markdown in the shape of the seed's Results section, and PNG figures.

`write_report(results, out_dir)` turns an evaluate results dict (schema: evaluate.py) into
`report.md`, `lens_heatmap.png`, `lens_accuracy.png` and `probes_vs_lens.png`. Every number in the report is
read from `results`; nothing here computes a metric, only the verdicts below, whose rules are stated in the
report itself:
- a vocab-aligned classifier is *present* at L when the lower 95% Wilson bound of lens accuracy exceeds
  the majority-class rate (always answering the most frequent class; 1/K on a balanced set); it is *strict*
  (the class word is what the lens says) when vocab top-1 accuracy >= 50%;
- a hidden-space classifier is present when a probe's lower bound exceeds chance with positive selectivity,
  looked at after block 0 onwards (row 0 is the embedding, i.e. the input tokens themselves).
The sweep's figures (`plot_sweep`) live here too, so all plotting is in one place.
"""

from __future__ import annotations

import numpy as np

from lazarus_jax import files


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def pct(x, digits: int = 1) -> str:
  return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def ci(d: dict) -> str:
  return f"{pct(d['accuracy'])} [{pct(d['ci_low'])}, {pct(d['ci_high'])}]"


def _models(results: dict) -> list[tuple[str, dict]]:
  """(name, per-model results) for the base model (if measured) and then the evaluated one."""
  out = []
  if results.get("base"):
    out.append(("base", results["base"]))
  out.append((results["evaluated"], results))
  return out


# ---- figures -----------------------------------------------------------------------------------------


def _row_labels(lens_rows):
  return ["emb" if r["layer"] is None else str(r["layer"]) for r in lens_rows]


def plot_lens_heatmap(results: dict, path: str) -> None:
  """Layer x class: mean lens probability of each class token on the examples of that class."""
  plt = _plt()
  models = _models(results)
  labels = [t["label"] for t in results["class_targets"]["targets"]]
  fig, axes = plt.subplots(
    1,
    len(models),
    figsize=(2.2 + 1.1 * len(labels) * len(models), 1.5 + 0.18 * len(results["lens"])),
    squeeze=False,
    constrained_layout=True,
  )
  image = None
  for ax, (name, res) in zip(axes[0], models):
    grid = np.array([[np.nan if r["class_probs"][lab] is None else r["class_probs"][lab] for lab in labels] for r in res["lens"]])
    image = ax.imshow(
      np.log10(np.maximum(grid, 1e-8)), aspect="auto", origin="lower", cmap="viridis", vmin=-8, vmax=0, interpolation="nearest"
    )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ticks = list(range(0, len(res["lens"]), max(1, len(res["lens"]) // 10)))
    ax.set_yticks(ticks, [_row_labels(res["lens"])[t] for t in ticks])
    ax.axhline(results["lens_row"], color="red", lw=0.8, ls="--")
    ax.set_title(f"{name}: p(class token | class)")
    ax.set_ylabel("after block (emb = embeddings)")
  fig.colorbar(image, ax=axes, shrink=0.8, label="log10 mean probability")
  save_figure(fig, path)
  plt.close(fig)


def plot_lens_accuracy(results: dict, path: str) -> None:
  """Lens accuracy (argmax over class tokens) by layer, per model and format, with 95% Wilson bands."""
  plt = _plt()
  k = len(results["class_targets"]["targets"])
  fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
  x = np.arange(len(results["lens"]))
  for name, res in _models(results):
    for fmt in results["formats"]:
      acc = np.array([r["by_format"][fmt]["accuracy"] for r in res["lens"]])
      lo = np.array([r["by_format"][fmt]["ci_low"] for r in res["lens"]])
      hi = np.array([r["by_format"][fmt]["ci_high"] for r in res["lens"]])
      (line,) = ax.plot(x, acc, ls="--" if name == "base" else "-", marker=".", label=f"{name} {fmt}")
      ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
  _layer_axis(ax, results, k, "lens accuracy (argmax over class tokens)", legend_size=7)
  save_figure(fig, path)
  plt.close(fig)


def _layer_axis(ax, results: dict, k: int, ylabel: str, legend_size: int) -> None:
  """Accuracy-by-layer axes: chance line, the classifier layer, block tick labels, a [0, 1] y range."""
  x = np.arange(len(results["lens"]))
  ax.axhline(1 / k, color="gray", lw=0.8, ls=":", label="chance")
  ax.axvline(results["lens_row"], color="red", lw=0.8, ls="--", label=f"L={results['classifier_layer']}")
  ticks = x[:: max(1, len(x) // 12)]
  ax.set_xticks(ticks, [_row_labels(results["lens"])[i] for i in ticks])
  ax.set_xlabel("after block (emb = embeddings)")
  ax.set_ylabel(ylabel)
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize=legend_size)


def plot_probes_vs_lens(results: dict, path: str) -> None:
  """The seed's two classifier types on one figure: hidden-space (probe) vs vocab-aligned (lens), per format."""
  plt = _plt()
  fmts = results["formats"]
  k = len(results["class_targets"]["targets"])
  fig, axes = plt.subplots(1, len(fmts), figsize=(6 * len(fmts), 4), squeeze=False, constrained_layout=True)
  x = np.arange(len(results["lens"]))
  for ax, fmt in zip(axes[0], fmts):
    for name, res in _models(results):
      ls = "--" if name == "base" else "-"
      ax.plot(x, [r["by_format"][fmt]["accuracy"] for r in res["lens"]], ls=ls, color="C0", label=f"{name}: lens (vocab-aligned)")
      pr = (res.get("probes") or {}).get("by_format", {}).get(fmt)
      if pr and "layers" in pr:
        ax.plot(x, [r["test_accuracy"] for r in pr["layers"]], ls=ls, color="C1", label=f"{name}: probe (hidden)")
        ax.plot(x, [r["control_accuracy"] for r in pr["layers"]], ls=ls, color="C2", lw=0.8, label=f"{name}: probe control task")
        ax.axhline(pr["lexical_baseline"]["accuracy"], color="C3", lw=0.8, ls=ls, label=f"{name}: lexical baseline (bag of tokens)")
    ax.set_title(f"{fmt}: hidden-space vs vocab-aligned")
    _layer_axis(ax, results, k, "held-out accuracy", legend_size=6)
  save_figure(fig, path)
  plt.close(fig)


# ---- verdicts ----------------------------------------------------------------------------------------


def vocab_verdict(cls: dict, k: int) -> tuple[bool, bool]:
  """(present, strict) for a classifier_eval (or by_format) entry; rules in the module docstring."""
  present = cls["ci_low"] is not None and cls["ci_low"] > majority_rate(cls, k)
  strict = (cls.get("vocab_top1_accuracy") or 0.0) >= 0.5
  return present, strict


def majority_rate(cls: dict, k: int) -> float:
  """What always answering the most frequent class scores: the bar a classifier must clear.

  The held-out classes are not balanced (division has fewer triples), so 1/K would let a constant predictor
  look like a classifier.
  """
  matrix = (cls.get("confusion") or {}).get("matrix")
  if not matrix:
    return 1 / k
  rows = [sum(r) for r in matrix]
  return max(rows) / max(sum(rows), 1)


def best_probe(pr: dict, k: int) -> dict | None:
  """The probe row (after block 0 onwards) with the best test accuracy, and whether it clears chance."""
  if not pr or "layers" not in pr:
    return None
  rows = [r for r in pr["layers"] if r["layer"] >= 1]
  if not rows:
    return None
  best = max(rows, key=lambda r: (r["test_accuracy"], r["selectivity"]))
  bar = max(1 / k, (pr.get("summary") or {}).get("majority_baseline") or 0.0)
  return dict(best, present=best["test_ci"][0] > bar and best["selectivity"] > 0)


def best_rows_sentence(lens_rows: list[dict]) -> str:
  """Which lens row is most accurate, or, where other rows' intervals overlap the best one's, that it cannot
  tell them apart (with the numbers): `max` alone would crown the first of tied rows."""
  best = max(lens_rows, key=lambda r: r["accuracy"])
  tied = [r for r in lens_rows if r is not best and r["ci_high"] >= best["ci_low"]]

  def name(r):
    return "the embeddings" if r["layer"] is None else f"block {r['layer']}"

  if not tied:
    return f"The lens is most accurate after {name(best)} ({ci(best)}); every other row's interval lies below it."
  shown = sorted([best] + tied, key=lambda r: r["row"])
  listed = ", ".join(f"{name(r)} {ci(r)}" for r in shown[:8]) + (f" and {len(shown) - 8} more" if len(shown) > 8 else "")
  return f"**Cannot tell**: {len(shown)} rows have intervals that overlap the highest ({name(best)}, {ci(best)}): {listed}."


ANSWER_SCORING = (
  "What counts as the answer: greedy decoding of up to eval.max_new_tokens tokens after the prompt, stopped at "
  "EOS; the decoded text, leading whitespace stripped, must start with the expected integer (an optional "
  "minus, digits, comma-grouped thousands allowed) with no further digit or decimal part after it, so `56`, "
  "`56.` and `56\\n7 * 9` are right for 56 and `560`, `5.6` and `The answer is 56` are not. First token: "
  "the first generated token equals the first token of the reference answer as `prompt + answer` is encoded "
  "in training; in both formats the prompt ends with the separating space, so this is the first digit."
)


# ---- markdown ----------------------------------------------------------------------------------------


def _classifier_rows(results: dict) -> list[str]:
  lines = ["| Model | Format | n | Lens accuracy [95% CI] | Vocab top-1 | Mean confidence |", "|---|---|---|---|---|---|"]
  for name, res in _models(results):
    cls = res["classifier_eval"]
    for fmt, f in cls["by_format"].items():
      lines.append(f"| {name} | {fmt} | {f['n']} | {ci(f)} | {pct(f['vocab_top1_accuracy'])} | {pct(f['mean_confidence'])} |")
    if len(cls["by_format"]) > 1:
      lines.append(f"| {name} | all | {cls['n']} | {ci(cls)} | {pct(cls['vocab_top1_accuracy'])} | {pct(cls['mean_confidence'])} |")
  return lines


def _seed_table(res: dict) -> list[str]:
  lines = []
  cls = res["classifier_eval"]
  for fmt in sorted({r["format"] for r in cls["results"]}):
    rows = [r for r in cls["results"] if r["format"] == fmt]
    lines += [f"*{fmt}*", "", "| Prompt | Expected | Predicted | Confidence | Correct |", "|---|---|---|---|---|"]
    lines += [
      f"| `{r['prompt']}` | {r['expected']} | {r['predicted']} | {pct(r['confidence'])} | {'✓' if r['correct'] else '✗'} |"
      for r in rows
    ]
    k = sum(r["correct"] for r in rows)
    lines += ["", f"**Accuracy: {pct(k / len(rows), 0)} ({k}/{len(rows)})**", ""]
  return lines


def _confusion(res: dict) -> list[str]:
  lines = []
  for fmt, f in res["classifier_eval"]["by_format"].items():
    labs, m = f["confusion"]["labels"], f["confusion"]["matrix"]
    lines += [f"*{fmt}* (rows: expected, columns: predicted)", "", "| | " + " | ".join(labs) + " |", "|---|" + "---|" * len(labs)]
    lines += [f"| **{lab}** | " + " | ".join(str(v) for v in row) + " |" for lab, row in zip(labs, m)]
    lines.append("")
  return lines


def _layer_table(results: dict) -> list[str]:
  models = _models(results)
  head = "| Row | After block |"
  sep = "|---|---|"
  for name, _ in models:
    head += f" Lens acc ({name}) | p(correct) ({name}) | Probe acc ({name}) | Selectivity ({name}) |"
    sep += "---|---|---|---|"
  lines = [head, sep]
  for i, row in enumerate(results["lens"]):
    line = f"| {row['row']} | {'emb' if row['layer'] is None else row['layer']} |"
    for _, res in models:
      r = res["lens"][i]
      probe_acc, sel = [], []
      for fmt in results["formats"]:
        pr = (res.get("probes") or {}).get("by_format", {}).get(fmt)
        if pr and "layers" in pr:
          probe_acc.append(pr["layers"][i]["test_accuracy"])
          sel.append(pr["layers"][i]["selectivity"])
      line += (
        f" {pct(r['accuracy'])} | {r['mean_correct_prob']:.3g} | "
        f"{pct(float(np.mean(probe_acc))) if probe_acc else 'n/a'} | "
        f"{f'{np.mean(sel):+.2f}' if sel else 'n/a'} |"
      )
    if row["row"] == results["lens_row"]:
      line = line.replace(f"| {row['row']} |", f"| **{row['row']} (L)** |", 1)
    lines.append(line)
  return lines


def _answer_table(results: dict) -> list[str]:
  models = [(n, r) for n, r in _models(results) if r.get("answer_accuracy")]
  if not models:
    return ["(answer accuracy not measured: eval.generate=False)"]
  ops = [op for op in ("multiply", "add", "subtract", "divide")]
  lines = [
    "| Model | Format | Exact match [95% CI] | First token [95% CI] | " + " | ".join(ops) + " |",
    "|---|---|---|---|" + "---|" * len(ops),
  ]
  for name, res in models:
    for fmt, f in res["answer_accuracy"]["by_format"].items():
      per = [pct(f["by_operation"][op]["accuracy"], 0) if op in f["by_operation"] else "n/a" for op in ops]
      first = ci(f["first_token_accuracy"]) if f.get("first_token_accuracy") else "n/a"
      lines.append(f"| {name} | {fmt} | {ci(f)} | {first} | " + " | ".join(per) + " |")
  return lines


def _seed_answers(res: dict) -> list[str]:
  ans = res.get("answer_accuracy")
  if not ans or not ans.get("examples"):
    return []
  lines = ["| Prompt | Expected | Generated | Correct |", "|---|---|---|---|"]
  lines += [
    f"| `{e['prompt']}` | {e['expected']} | `{e['generated'].strip()[:24]}` | {'✓' if e['correct'] else '✗'} |"
    for e in ans["examples"]
  ]
  return lines


def answers(results: dict) -> list[str]:
  """The experiment's questions, answered from this run's numbers (sweep-only ones point to the sweep)."""
  k = len(results["class_targets"]["targets"])
  L = results["classifier_layer"]
  out = []
  main = results
  base = results["base"] if results.get("base") else (results if results["evaluated"] == "base" else None)

  def cls_sentence(name, res):
    parts = []
    for fmt, f in res["classifier_eval"]["by_format"].items():
      present, strict = vocab_verdict(f, k)
      verdict = "yes" if present else "no"
      verdict += (
        " (strict: the class word is the lens's top-1 token in most examples)"
        if strict
        else (" (but not strict: the class word is the lens's top-1 token in under half of the examples)" if present else "")
      )
      parts.append(
        f"{fmt}: **{verdict}** — lens accuracy {ci(f)} vs {pct(majority_rate(f, k))} for always "
        f"answering the most frequent class (1/K = {pct(1 / k, 0)}), vocab top-1 "
        f"{pct(f['vocab_top1_accuracy'])}, mean confidence {pct(f['mean_confidence'])}"
      )
    return f"{name}: " + "; ".join(parts) + "."

  if results["evaluated"] == "adapted":
    out.append(f"1. **Is there a vocab-aligned classifier at L={L} after training?** " + cls_sentence("adapted", main))
  else:
    out.append(f"1. **Is there a vocab-aligned classifier at L={L} after training?** Not measured here (no adapter was evaluated).")
  if base is not None:
    out.append("2. **Was there one before training?** " + cls_sentence("base", base))
  else:
    out.append("2. **Was there one before training?** Not measured (eval.compare_base=False).")
  if base is not None and base.get("probes"):
    parts = []
    for fmt, pr in base["probes"]["by_format"].items():
      b = best_probe(pr, k)
      if b is None:
        parts.append(f"{fmt}: not measured ({pr.get('skipped', 'no layers')})")
        continue
      lex = pr["lexical_baseline"]["accuracy"]
      row0 = pr["layers"][0]
      # Rows whose interval reaches the best one's cannot be told apart from it: name the first and count them.
      tied = [r for r in pr["layers"] if r["layer"] >= 1 and r["test_ci"][1] >= b["test_ci"][0]]
      first = tied[0]
      parts.append(
        f"{fmt}: **{'yes' if b['present'] else 'no'}** — the highest probe accuracy, "
        f"{pct(b['test_accuracy'])} [{pct(b['test_ci'][0])}, {pct(b['test_ci'][1])}], cannot be told apart from "
        f"{len(tied) - 1} other rows; the first of them is after block {first['layer'] - 1} "
        f"({pct(first['test_accuracy'])}, control task {pct(first['control_accuracy'])}, selectivity "
        f"{first['selectivity']:+.2f}). A bag-of-tokens probe on the "
        f"prompt reaches {pct(lex)}: the operation is written in the input (operator symbol or word), so a "
        "hidden-space classifier only has to move it to the readout position; the embedding row, which sees "
        f"the readout token alone, gives {pct(row0['test_accuracy'])}"
      )
    out.append("3. **Do hidden-space classifiers exist before training?** " + "; ".join(parts) + ".")
  else:
    out.append("3. **Do hidden-space classifiers exist before training?** Not measured (needs the base model and eval.probes=True).")
  if base is not None and results["evaluated"] == "adapted" and main.get("answer_accuracy") and base.get("answer_accuracy"):
    parts = [
      f"{fmt}: base {ci(base['answer_accuracy']['by_format'][fmt])} → adapted {ci(f)}"
      for fmt, f in main["answer_accuracy"]["by_format"].items()
    ]
    out.append(
      "4. **Does the classifier term change answer accuracy vs SFT-only?** This run alone cannot say "
      "(it has one loss weight); answer accuracy " + "; ".join(parts) + ". The controlled comparison "
      "(`python -m lazarus_jax.sweep`) answers it: same data, LoRA placement, optimizer and steps, only "
      "the loss weight differs."
    )
  else:
    out.append(
      "4. **Does the classifier term change answer accuracy vs SFT-only?** See the sweep report (`python -m lazarus_jax.sweep`)."
    )
  fmts = list(main["classifier_eval"]["by_format"])
  if len(fmts) > 1:
    parts = [f"{fmt}: lens {ci(main['classifier_eval']['by_format'][fmt])}" for fmt in fmts]
    out.append("5. **Symbolic vs semantic?** " + "; ".join(parts) + " (same model, same L).")
  else:
    out.append(f"5. **Symbolic vs semantic?** This run evaluated {fmts[0]} only; the sweep compares formats.")
  out.append(
    "6. **Which depth works best?** " + best_rows_sentence(main["lens"]) + " Whether training at "
    "another depth does better is the sweep's layer-fraction comparison."
  )
  return out


def _ci_or_dash(d: dict | None) -> str:
  return "—" if not d or d.get("accuracy") is None else ci(d)


def _paired_text(d: dict | None) -> str:
  if not d:
    return ""
  return f" ({100 * d['mean_diff']:+.1f} pp [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}], paired)"


def _compute_or_copy(results: dict) -> list[str]:
  """The transfer row, the input-only baselines, the fewshot counterfactuals and the verdict per model."""
  from lazarus_jax.analysis import compute_or_copy

  tr = results.get("transfer") or {}
  lines = [
    "## Computed or copied?",
    "",
    f"Trained on {', '.join(tr.get('train_formats') or ['?'])} (target set `{tr.get('target_set', '?')}`); "
    f"the lens at L on every evaluated format is one row of the transfer matrix (same held-out triples in "
    "each format). Input-only baselines on the same held-out split: a bag-of-tokens probe and the best "
    "single-position probe on the layer-0 residual (token embeddings; no computation across positions). "
    "The trained reader is a bag-of-tokens probe fitted on the run's training prompts and tested on the whole "
    "held-out set, as the lens is: the bar for held-out templates and symbols that training never showed (beats "
    "it: the lens minus the reader on the same prompts, bootstrap interval above 0).",
    "",
    f"Rule: {compute_or_copy.RULE}.",
    "",
    "| Model | Eval format | Lens at L | Bag-of-tokens | Layer-0, best position | Probe at L | Beats the input | "
    "Trained reader | Beats it |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, res in _models(results):
    cc = res.get("compute_or_copy")
    if not cc:
      continue
    for fmt, r in cc["formats"].items():
      l0 = r["layer0_best"]
      l0_text = "—" if not l0 else f"{ci(l0)} (token {l0['from_end']} from the end)"
      yes_no = {True: "yes", False: "no", None: "—"}
      lines.append(
        f"| {name} | {fmt} | {_ci_or_dash(r['lens'])} | {_ci_or_dash(r['bag_of_tokens'])} | {l0_text} | "
        f"{_ci_or_dash(r['probe_at_L'])} | {yes_no[r['beats_input']]} | "
        f"{_ci_or_dash(r.get('bag_of_tokens_from_training'))} | {yes_no[r.get('beats_trained_reader')]}"
        f"{_paired_text(r.get('lens_minus_trained_reader'))} |"
      )
  lines.append("")
  for name, res in _models(results):
    cf = res.get("counterfactuals")
    if cf:
      sh = cf["shuffled"]
      lines.append(
        f"- Counterfactuals ({name}, fewshot, n = {cf['n']}): with solved examples of another operation "
        f"the lens at L names the new operation in {ci(cf['flip_rate'])} (flip rate) and keeps the "
        f"original in {ci(cf['stay_rate'])}; with the examples' results shuffled (n = {sh['n']}) it names "
        f"the original operation in {ci(sh)} (chance {pct(sh['chance'], 0)}, majority "
        f"{pct(sh['majority'])})."
      )
    cc = res.get("compute_or_copy")
    if cc:
      lines.append(f"- **Verdict ({name}): {cc['verdict']}** — {cc['reason']}.")
  return lines + [""]


def render_markdown(results: dict) -> str:
  prov = results["provenance"]
  git = prov.get("git", {})
  k = len(results["class_targets"]["targets"])
  L = results["classifier_layer"]
  targets = ", ".join(f"{t['label']}→`{t['token']}` ({t['token_id']})" for t in results["class_targets"]["targets"])
  main = results
  lines = [
    f"# Evaluation: {results['model']['name']}" + (" + adapter" if results["model"]["adapter"] else " (base)"),
    "",
    f"- Model: {results['model']['name']}, {results['model']['n_layers']} blocks; adapter: `{results['model']['adapter'] or 'none'}`",
    f"- Classifier layer L = {L} (lens row {results['lens_row']}: the residual stream after block {L})",
    f"- Class targets: {targets}; chance = {pct(1 / k, 0)}",
    "- Held-out examples (no (a, op, b) triple in training, nor its commutative swap; a random sample, capped "
    "by a seeded random subset): " + ", ".join(f"{f}: {n}" for f, n in results["n_eval"].items()),
    f"- Split `{results['split']['heldout_sha256'][:12]}` (seed {results['split']['seed']}, "
    f"{results['split']['n_heldout_triples']} held-out triples): {results['split']['check']}",
    "- Readout: the last prompt token; lens accuracy = argmax over the class tokens; confidence = full-vocab "
    "probability of the predicted class token; intervals: 95% Wilson",
    f"- Seed {prov.get('seed')}, commit `{git.get('commit', 'unknown')[:12]}`"
    + (" (dirty)" if git.get("dirty") else "")
    + f", device {prov.get('devices', {}).get('kind')}",
    "",
    "## Results",
    "",
  ]
  tr = results.get("training")
  if tr and tr.get("table_md"):
    lines += ["### Training Metrics", "", tr["table_md"], ""]
  lines += [f"### Evaluation Results (the seed's prompts, lens at L={L}, {results['evaluated']} model)", ""]
  lines += _seed_table(main)
  if results.get("base"):
    lines += ["Base model, same prompts:", ""] + _seed_table(results["base"])
  lines += [f"### Held-out classifier accuracy at L={L}", ""] + _classifier_rows(results) + [""]
  lines += [f"Confusion matrix ({results['evaluated']} model):", ""] + _confusion(main)
  lines += [
    "### All layers: logit lens and linear probes",
    "",
    "Lens accuracy and p(correct) are over all formats; probe accuracy and selectivity (probe minus "
    "control-task accuracy) are averaged over formats. Control task: "
    + ((main.get("probes") or {}).get("control_types") or "permuted labels")
    + ".",
    "",
  ]
  lines += _layer_table(results) + [""]
  for fmt, pr in (main.get("probes") or {}).get("by_format", {}).items():
    if "lexical_baseline" in pr:
      lb = pr["lexical_baseline"]
      lines.append(
        f"- Lexical baseline ({fmt}, {results['evaluated']}): a probe on the bag of input token ids "
        f"reaches {ci(lb)} — what a layer-0 probe can get from the input alone."
      )
  lines += [
    "",
    "![lens heatmap](lens_heatmap.png)",
    "",
    "![lens accuracy by layer](lens_accuracy.png)",
    "",
    "![hidden-space vs vocab-aligned](probes_vs_lens.png)",
    "",
  ]
  lines += ["### Answer accuracy (greedy)", "", ANSWER_SCORING, ""] + _answer_table(results) + [""]
  seed_ans = _seed_answers(main)
  if seed_ans:
    lines += [f"The seed's prompts ({results['evaluated']} model):", ""] + seed_ans + [""]
  lines += _compute_or_copy(results)
  lines += [
    "## Answers",
    "",
    "Rules: a vocab-aligned classifier is *present* when the lower 95% bound of lens accuracy exceeds "
    "the majority-class rate (what always answering the most frequent class scores); *strict* when the "
    "class word is the lens's top-1 token in at least half of the examples. A "
    "hidden-space classifier is present when a probe after block 0 or later clears chance (and the "
    "majority-class rate) with positive "
    "selectivity.",
    "",
  ]
  lines += answers(results) + [""]
  from lazarus_jax.reporting import mechanism_report

  lines += mechanism_report.render_markdown(results)
  timing = results.get("timing") or {}
  if timing:
    lines += ["Timing: " + ", ".join(f"{k} {v:.1f}s" for k, v in timing.items()), ""]
  return "\n".join(lines)


def save_figure(fig, path: str) -> None:
  """A PNG written whole (files.atomic_path) with the user's umask."""
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=100, format="png")


def write_report(results: dict, out_dir: str) -> list[str]:
  """Writes report.md and the three figures (and the mechanism figures when results hold that section); returns
  their paths."""
  files.makedirs(out_dir)
  paths = [files.join(out_dir, n) for n in ("lens_heatmap.png", "lens_accuracy.png", "probes_vs_lens.png", "report.md")]
  plot_lens_heatmap(results, paths[0])
  plot_lens_accuracy(results, paths[1])
  plot_probes_vs_lens(results, paths[2])
  from lazarus_jax.reporting import mechanism_report

  paths[3:3] = mechanism_report.write_figures(results, out_dir)
  files.write_text(paths[-1], render_markdown(results))
  return paths


# ---- sweep figures -----------------------------------------------------------------------------------


def plot_sweep(summary_rows: list[dict], path: str, metric: str, ylabel: str) -> None:
  """`metric` (mean with its interval from sweep_stats.summarize) against classifier depth, one line per arm, per format."""
  plt = _plt()
  rows = [r for r in summary_rows if r["metric"] == metric]
  fmts = sorted({r["format"] for r in rows})
  if not fmts:
    return
  fig, axes = plt.subplots(1, len(fmts), figsize=(5.5 * len(fmts), 3.8), squeeze=False, constrained_layout=True)
  for ax, fmt in zip(axes[0], fmts):
    for arm in sorted({r["arm"] for r in rows if r["format"] == fmt}):
      pts = sorted((r for r in rows if r["format"] == fmt and r["arm"] == arm), key=lambda r: r["layer_fraction"])
      x = np.array([p["layer_fraction"] for p in pts])
      m = np.array([p["mean"] for p in pts])
      lo = np.array([np.nan if p["ci_low"] is None else p["ci_low"] for p in pts])
      hi = np.array([np.nan if p["ci_high"] is None else p["ci_high"] for p in pts])
      (line,) = ax.plot(x, m, marker="o", label=arm)
      ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_title(fmt)
    ax.set_xlabel("classifier layer fraction (L = int(n_layers * f))")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
  save_figure(fig, path)
  plt.close(fig)
