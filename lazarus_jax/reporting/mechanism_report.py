"""report.md's "Mechanism" section and its figures, from results.json `mechanism` (mechanism.py computes it).

Figures (beside report.md): `mechanism_interventions.png` (ablation, patching and steering curves),
`mechanism_tuned_lens.png` (tuned vs logit lens by row), `mechanism_heads.png` (LoRA update norms, ΔOV class-word
fraction and readout attention to the operator -- to the operands for word problems, which have no operator token --
layers x heads), `mechanism_position_lens.png` (layer x position
logit lens of one prompt). Nothing here computes a metric; the verdict rule is stated in the section.
"""

from __future__ import annotations

import numpy as np

from lazarus_jax import files

FIGURES = ("mechanism_interventions.png", "mechanism_tuned_lens.png", "mechanism_heads.png", "mechanism_position_lens.png")


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _models(mech: dict) -> list[tuple[str, dict]]:
  return [(name, mech[name]) for name in ("base", "adapted") if mech.get(name)]


def _pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def accuracy_ci(d: dict) -> str:
  return f"{_pct(d['accuracy'])} [{100 * d['ci_low']:.1f}, {100 * d['ci_high']:.1f}]"


def _row_name(row: int) -> str:
  return "emb" if row == 0 else f"b{row - 1}"


# ---- figures --------------------------------------------------------------------------------------------------


def plot_interventions(mech: dict, path: str) -> None:
  plt = _plt()
  models = _models(mech)
  fig, axes = plt.subplots(1, 4, figsize=(18, 4), constrained_layout=True)
  styles = {"base": "--", "adapted": "-"}
  for name, m in models:
    ls = styles[name]
    rows = [r["row"] for r in m["ablation"]["rows"]]
    for key, color in (("class", "C3"), ("random_mean", "C0"), ("random_tokens_mean", "C2")):
      acc = [_val(r[key]["answer_accuracy"]) for r in m["ablation"]["rows"]]
      axes[0].plot(rows, acc, ls, color=color, marker=".", label=f"{name}: {key.replace('_mean', '')}")
      kl = [max(_val(r[key]["mean_kl_from_clean"]), 1e-6) for r in m["ablation"]["rows"]]
      axes[1].semilogy(rows, kl, ls, color=color, marker=".", label=f"{name}: {key.replace('_mean', '')}")
    axes[0].axhline(m["ablation"]["clean"]["answer_accuracy"]["accuracy"], color="k", ls=ls, lw=0.8, label=f"{name}: clean")
    prow = [r["row"] for r in m["patching"]["rows"]]
    axes[2].plot(
      prow,
      [r["follows_source_output"]["accuracy"] for r in m["patching"]["rows"]],
      ls,
      color="C4",
      marker=".",
      label=f"{name}: answer = source prompt's",
    )
    axes[2].plot(
      prow,
      [r["source_output_first_token"]["accuracy"] for r in m["patching"]["rows"]],
      ls,
      color="C1",
      marker=".",
      label=f"{name}: first token = source's",
    )
    al = [a["alpha"] for a in m["steering"]["alphas"]]
    for key, color in (("class", "C3"), ("random", "C0")):
      axes[3].plot(
        al,
        [a[key]["target_output"]["accuracy"] for a in m["steering"]["alphas"]],
        ls,
        color=color,
        marker=".",
        label=f"{name}: {key} direction",
      )
  row_l = mech[models[0][0]]["row"] if models else None
  for ax in axes[:3]:
    if row_l is not None:
      ax.axvline(row_l, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("residual row edited at the readout (row r = after block r-1)")
  axes[0].set(title="ablation: answer accuracy", ylabel="exact-match accuracy")
  axes[1].set(title="ablation: KL(clean || edited) final distribution", ylabel="nats (mean)")
  axes[2].set(title="patching counterpart prompt -> prompt", ylabel="fraction following the source")
  axes[3].set(
    title="steering at L toward the counterpart op", xlabel="alpha (x readout norm)", ylabel="answer = model's answer to target op"
  )
  for ax in axes:
    ax.legend(fontsize=6)
  with files.atomic_path(path) as tmp:  # whole, with the umask, local or remote
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)


def _val(v):
  return v["accuracy"] if isinstance(v, dict) else v


def plot_tuned_lens(mech: dict, path: str) -> None:
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
  for name, m in _models(mech):
    tl = m.get("tuned_lens")
    if not tl:
      continue
    ls = "--" if name == "base" else "-"
    rows = [r["row"] for r in tl["rows"]]
    for lens_name, color in (("logit", "C0"), ("tuned", "C3")):
      axes[0].semilogy(rows, [max(r[lens_name]["kl"], 1e-6) for r in tl["rows"]], ls, color=color, label=f"{name}: {lens_name} lens")
      axes[1].plot(rows, [r[lens_name]["class_accuracy"] for r in tl["rows"]], ls, color=color, label=f"{name}: {lens_name} lens")
  axes[0].set(title="KL(final || lens) at the readout, held-out", xlabel="row", ylabel="nats (answer vocabulary)")
  axes[1].set(title="class-word accuracy (argmax over class tokens)", xlabel="row", ylabel="accuracy")
  for ax in axes:
    ax.legend(fontsize=7)
  with files.atomic_path(path) as tmp:  # whole, with the umask, local or remote
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)


def plot_heads(mech: dict, path: str) -> None:
  plt = _plt()
  panels = []
  vo = mech.get("vo")
  if vo:
    for t in ("v", "o"):
      if t in vo["update_norms"]:
        d = np.asarray(vo["update_norms"][t]["delta"], float)
        b = np.asarray(vo["update_norms"][t]["base"], float)
        panels.append((f"||ΔW_{t.upper()}|| / ||W_{t.upper()}|| per head", d / np.maximum(b, 1e-12), "viridis"))
    frac = np.asarray([[np.nan if x is None else x for x in row] for row in vo["delta_ov"]["class_fraction"]], float)
    panels.append((f"ΔOV output in class-word span (chance {vo['delta_ov']['chance']:.3f})", frac, "magma"))
  role, att = _heads_role(mech)
  for name, a in att.items():
    panels.append((f"{name}: readout -> {role} attention", a, "Blues"))
  if len(att) == 2:
    panels.append((f"adapted - base: attention to {role}", att["adapted"] - att["base"], "RdBu_r"))
  if not panels:
    return
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 5), squeeze=False, constrained_layout=True)
  for ax, (title, grid, cmap) in zip(axes[0], panels):
    kw = {}
    if cmap == "RdBu_r":
      lim = float(np.nanmax(np.abs(grid))) or 1.0
      kw = dict(vmin=-lim, vmax=lim)
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap=cmap, interpolation="nearest", **kw)
    ax.set(title=title, xlabel="head", ylabel="layer (block)")
    ax.title.set_fontsize(8)
    fig.colorbar(image, ax=ax, shrink=0.7)
  with files.atomic_path(path) as tmp:  # whole, with the umask, local or remote
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)


def _heads_role(mech: dict) -> tuple[str, dict]:
  """The role the heads figure shows: the operator, or the two operands together where the prompts have no operator
  token (word problems). Returns (its name, {model: [n_layers, H]})."""
  atts = {name: m["attention"]["mean_mass"] for name, m in _models(mech) if m.get("attention")}
  if all("operator" in a for a in atts.values()):
    return "operator", {name: np.asarray(a["operator"]) for name, a in atts.items()}
  return "operands", {name: np.asarray(a["operand_a"]) + np.asarray(a["operand_b"]) for name, a in atts.items()}


def _attention_rows(mech: dict, L: int) -> list[str]:
  """Readout attention mass per role at block L (mean over heads), per model and format; the note on word."""
  lines = []
  for name, m in _models(mech):
    att = m.get("attention")
    if not att:
      continue
    groups = att.get("by_format") or {"all": att}
    for fmt, g in groups.items():
      cells = [f"{r} {np.mean(g['mean_mass'][r][L]):.3f}" for r in g["roles"]]
      lines.append(f"| {name} | {fmt} | {g['n']} | " + ", ".join(cells) + " |")
  if not lines:
    return []
  out = [
    "",
    f"### Readout attention by token role (block {L}, mean over heads)",
    "",
    "Attention probability from the readout to the prompt tokens of each role, mean over prompts. fewshot: "
    "`operator` = the query's symbol, `examples` = the solved-example lines.",
    "",
    "| model | format | n | mass per role |",
    "|---|---|---|---|",
  ] + lines
  fmts = {f for _, m in _models(mech) if m.get("attention") for f in m["attention"].get("by_format", {})}
  if "word" in fmts:
    out += ["", "- word: the prompt has no operator token (the operation is only in the story), so there is no operator row."]
  return out


def write_figures(results: dict, out_dir: str) -> list[str]:
  mech = results.get("mechanism")
  if not mech:
    return []
  paths = [files.join(out_dir, n) for n in FIGURES]
  plot_interventions(mech, paths[0])
  plot_tuned_lens(mech, paths[1])
  plot_heads(mech, paths[2])
  from lazarus_jax.analysis.lens import save_position_png

  grids = [(name, mech["position_lens"][name]) for name in ("base", "adapted") if mech["position_lens"].get(name)]
  save_position_png([g for _, g in grids], paths[3], titles=[f"{name}: {g['prompt']!r}" for name, g in grids])
  return [p for p in paths if files.exists(p)]


# ---- markdown -------------------------------------------------------------------------------------------------


def used_verdict(row_entry: dict) -> str:
  """Does projecting out the class-word directions lower answer accuracy more than both controls? Yes only when the
  class ablation's upper 95% bound lies below the lower bound of every control draw; "within" when its accuracy lies
  inside every draw's interval; otherwise cannot tell."""
  cls = row_entry["class"]["answer_accuracy"]
  draws = [d["answer_accuracy"] for key in ("random", "random_tokens") for d in row_entry.get(key, [])]
  if draws and all(cls["ci_high"] < d["ci_low"] for d in draws):
    return "lowers answer accuracy more than every control (intervals apart)"
  if draws and all(d["ci_low"] <= cls["accuracy"] <= d["ci_high"] for d in draws):
    return "answer accuracy within every control's interval"
  return "cannot tell apart from the controls"


def _kl_diff(d: dict | None) -> str:
  """A paired KL difference (nats) with its bootstrap interval; results written before it existed have none."""
  return "n/a" if not d else f"{d['mean']:+.3g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}]"


def _model_rows(mech: dict) -> list[str]:
  lines = [
    "| model | clean answers | class ablation at L | Gaussian random (mean of draws) | random tokens (mean) | "
    "norm removed: class / random / tokens | KL: class / random / tokens | KL class − random, class − tokens | verdict |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, m in _models(mech):
    at = next((r for r in m["ablation"]["rows"] if r["row"] == m["row"]), None)
    if at is None:
      continue
    lines.append(
      f"| {name} | {accuracy_ci(m['ablation']['clean']['answer_accuracy'])} | {accuracy_ci(at['class']['answer_accuracy'])} | "
      f"{_pct(at['random_mean']['answer_accuracy'])} | {_pct(at['random_tokens_mean']['answer_accuracy'])} | "
      f"{_pct(at['class']['norm_fraction_removed'])} / {_pct(at['random_mean']['norm_fraction_removed'])} / "
      f"{_pct(at['random_tokens_mean']['norm_fraction_removed'])} | {at['class']['mean_kl_from_clean']:.3g} / "
      f"{at['random_mean']['mean_kl_from_clean']:.3g} / {at['random_tokens_mean']['mean_kl_from_clean']:.3g} | "
      f"{_kl_diff(at.get('kl_class_minus_random'))}, {_kl_diff(at.get('kl_class_minus_random_tokens'))} | "
      f"{used_verdict(at)} |"
    )
  return lines


def _signed(d: dict) -> str:
  return f"{100 * d['mean_diff']:+.1f} pp [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def ablation_contrast_rows(mech: dict) -> list[str]:
  """The paired ablation-effect contrast, adapted minus base on the same prompts (mechanism.ablation_contrast)."""
  con = mech.get("ablation_contrast")
  if not con or not con["rows"]:
    return []
  a, b = con["a"], con["b"]
  lines = [
    "",
    "### Is the classifier used more after training?",
    "",
    f"The ablation effect per prompt = clean answer correct minus answer correct with the class-word directions "
    f"projected out (1: the ablation broke a correct answer). {a} − {b}, paired prompt by prompt on the same "
    f"{con['n']} prompts (bootstrap over prompts). **A positive value means the class ablation costs the {a} model "
    f"more correct answers than the {b} model: its answer uses the class-word directions more.** Broken = clean "
    "correct and ablated wrong, with McNemar's exact test on the prompts broken in one model only; the Gaussian "
    "random control's effect difference says whether a model is merely more fragile to any ablation.",
    "",
    f"| row | {b} effect | {a} effect | {a} − {b} (paired) | broken: {a} − {b}, only {a} / only {b}, McNemar p | "
    f"random control: {a} − {b} |",
    "|---|---|---|---|---|---|",
  ]
  for r in con["rows"]:
    br = r["broken"]
    rnd = r.get("random_difference")
    lines.append(
      f"| {r['row']} ({_row_name(r['row'])}) | {100 * r['b_effect']:+.1f} pp | {100 * r['a_effect']:+.1f} pp | "
      f"{_signed(r['difference'])} | {_signed(br)}, {br['mcnemar']['n10']} / {br['mcnemar']['n01']}, "
      f"p = {br['mcnemar']['p']:.3g} | {'n/a' if not rnd else _signed(rnd)} |"
    )
  return lines


def intervention_contrast_rows(mech: dict, heading: bool) -> list[str]:
  """The paired steering and patching contrasts, adapted minus base on the same prompts (mechanism.intervention_contrast);
  heading: start the section (when the ablation contrast did not)."""
  con = mech.get("intervention_contrast")
  if not con:
    return []
  a, b = con["a"], con["b"]
  lines = ["", "### Is the classifier used more after training?"] if heading else []
  lines += [
    "",
    f"Steering and patching, {a} − {b}, paired prompt by prompt on the {con['n']} counterpart prompts both steered and "
    f"patched (stats.paired_difference; McNemar's exact test on the prompts moved in one model only). **A positive "
    f"value means the edit moves the {a} model's answer more often than the {b} model's.** Own = the model's own answer "
    "to the target's (source's) prompt; true = that prompt's true answer.",
  ]
  for name, reason in con.get("skipped", {}).items():
    lines += ["", f"{name.capitalize()}: not compared ({reason})."]

  def cell(d: dict) -> str:
    mc = d["mcnemar"]
    return f"{100 * d['b_rate']:.1f}% → {100 * d['a_rate']:.1f}%: {_signed(d)}, {mc['n10']} / {mc['n01']}, p = {mc['p']:.3g}"

  cols = f"{b} → {a}: {a} − {b}, only {a} / only {b}, McNemar p"
  st = con.get("steering")
  if st and st["alphas"]:
    lines += [
      "",
      f"| steering at row {st['row']}, alpha | becomes the target (own; {cols}) | target's true answer | random direction (own) |",
      "|---|---|---|---|",
    ]
    for r in st["alphas"]:
      lines.append(f"| {r['alpha']:g} | {cell(r['target_output'])} | {cell(r['target_answer'])} | {cell(r['random_target_output'])} |")
  pa = con.get("patching")
  if pa and pa["rows"]:
    lines += ["", f"| patching row | follows the source (own; {cols}) | source's true answer |", "|---|---|---|"]
    for r in pa["rows"]:
      lines.append(f"| {r['row']} ({_row_name(r['row'])}) | {cell(r['follows_source_output'])} | {cell(r['follows_source'])} |")
  return lines


def render_markdown(results: dict) -> list[str]:
  mech = results.get("mechanism")
  if not mech:
    return []
  L = results["classifier_layer"]
  models = _models(mech)
  n = models[0][1]["n"] if models else 0
  lines = (
    [
      "## Mechanism: is the classifier used?",
      "",
      f"{n} held-out prompts ({mech['max_examples_per_op']} per operation, a seeded random subset); every answer is "
      "the model's own greedy decoding with the edit applied to the readout position's residual stream in the "
      f"prefill (`lazarus_jax/analysis/interventions.py`). Row r = the residual after block r-1; L = {L} is row {L + 1}."
      + (f" Not analysed (no counterpart prompts): {', '.join(mech['skipped_formats'])}." if mech.get("skipped_formats") else ""),
      "",
      "### Ablation of the class-word lens directions",
      "",
      "The directions the logit lens reads for the class words (unembedding rows times the final norm's weight) are "
      "projected out of the readout residual at one row; controls: as many Gaussian random directions, and the lens "
      "directions of as many random vocabulary tokens (several draws each). Verdict rule: *lowers more* when the "
      "class ablation's 95% interval lies below every control draw's.",
      "",
    ]
    + _model_rows(mech)
    + [""]
  )
  for name, m in models:
    worst = min(m["ablation"]["rows"], key=lambda r: r["class"]["answer_accuracy"]["accuracy"])
    lines.append(
      f"- {name}: the largest effect of the class ablation is at row {worst['row']} "
      f"({_row_name(worst['row'])}): answers {accuracy_ci(worst['class']['answer_accuracy'])} vs clean "
      f"{_pct(m['ablation']['clean']['answer_accuracy']['accuracy'])}; {used_verdict(worst)}."
    )
  ablation = ablation_contrast_rows(mech)
  lines += ablation + intervention_contrast_rows(mech, heading=not ablation)
  lines += [
    "",
    "### Steering at L",
    "",
    "h += alpha * |h| * unit(d_target - d_source): multiply->add, add->multiply, subtract->add, "
    "divide->multiply. *Becomes the target* = the answer equals the model's own answer to the target "
    "operation's prompt (same operands) and differs from its unedited answer.",
    "",
    "| model | alpha | becomes the target (class direction) | random direction | target's true answer | "
    "answer accuracy (class / random) |",
    "|---|---|---|---|---|---|",
  ]
  for name, m in models:
    for a in m["steering"]["alphas"]:
      lines.append(
        f"| {name} | {a['alpha']:g} | {accuracy_ci(a['class']['target_output'])} | "
        f"{_pct(a['random']['target_output']['accuracy'])} | {_pct(a['class']['target_answer']['accuracy'])} | "
        f"{_pct(a['class']['answer_accuracy']['accuracy'])} / {_pct(a['random']['answer_accuracy']['accuracy'])} |"
      )
  lines += [
    "",
    "### Activation patching (counterpart prompt -> prompt, one row at a time)",
    "",
    "The readout residual of the same operands under the counterpart operation replaces the prompt's own. "
    "*Follows* = the answer equals the model's own answer to the source prompt and differs from its "
    "unedited answer; first token = the source run's first token. Counterpart prompt: symbolic / semantic, the "
    "other operation's symbol or word; fewshot, the same query and symbol after solved examples of the other "
    "operation; word, the other operation's template with the same operands.",
    "",
    "| row | " + " | ".join(f"{name}: answer follows / first token" for name, _ in models) + " |",
    "|---|" + "---|" * len(models),
  ]
  if models:
    for i, r in enumerate(models[0][1]["patching"]["rows"]):
      cells = []
      for _, m in models:
        p = m["patching"]["rows"][i]
        cells.append(f"{_pct(p['follows_source_output']['accuracy'])} / {_pct(p['source_output_first_token']['accuracy'])}")
      lines.append(f"| {r['row']} ({_row_name(r['row'])}) | " + " | ".join(cells) + " |")
  tl_models = [(name, m["tuned_lens"]) for name, m in models if m.get("tuned_lens")]
  if tl_models:
    tl0 = tl_models[0][1]
    lines += [
      "",
      "### Tuned lens beside the logit lens (held-out prompts)",
      "",
      f"One affine translator per row (h + A h + b), fitted on {tl0['n_train']} training prompts for "
      f"{tl0['steps']} full-batch AdamW steps to the final distribution over an answer vocabulary of "
      f"{tl0['vocab_size']} tokens (each training prompt's top {tl0['top_k']} final tokens and the class "
      f"words; it holds {_pct(tl0['coverage_heldout'])} of the final distribution's mass on held-out "
      "prompts). KL in nats over that vocabulary; class accuracy = argmax over the class tokens.",
      "",
      "| row | " + " | ".join(f"{name}: KL logit / tuned | {name}: class acc. logit / tuned" for name, _ in tl_models) + " |",
      "|---|" + "---|---|" * len(tl_models),
    ]
    n_rows = len(tl0["rows"])
    show = sorted(set(range(0, n_rows, 3)) | {L + 1, n_rows - 1})
    for r in show:
      cells = []
      for _, tl in tl_models:
        x = tl["rows"][r]
        cells.append(
          f"{x['logit']['kl']:.3g} / {x['tuned']['kl']:.3g} | "
          f"{_pct(x['logit']['class_accuracy'])} / {_pct(x['tuned']['class_accuracy'])}"
        )
      lines.append(f"| {r} ({_row_name(r)}) | " + " | ".join(cells) + " |")
    for name, tl in tl_models:
      lines.append(f"- {name}: training KL summed over rows {tl['loss_first']:.3g} -> {tl['loss_last']:.3g}.")
  lines += _attention_rows(mech, L)
  vo = mech.get("vo")
  if vo:
    frac = np.asarray([[np.nan if x is None else x for x in row] for row in vo["delta_ov"]["class_fraction"]], float)
    norm = np.asarray(vo["delta_ov"]["delta_norm"], float)
    top = np.dstack(np.unravel_index(np.argsort(-np.nan_to_num(frac * (norm > 0)), axis=None), frac.shape))[0][:5]
    lines += [
      "",
      "### What V/O learned",
      "",
      f"Adapters on {', '.join(vo['targets'])} in blocks {vo['layer_range'][0]}..{vo['layer_range'][1] - 1}. "
      "Heads whose OV update (ΔOV = (W_V+ΔW_V)(W_O+ΔW_O) - W_V W_O per head) writes most into the class-word "
      f"span (fraction of ||ΔOV||² there; chance {vo['delta_ov']['chance']:.4f}):",
      "",
      "| block | head | class-word fraction | ‖ΔOV‖ |",
      "|---|---|---|---|",
    ]
    for layer, head in top:
      lines.append(f"| {layer} | {head} | {frac[layer, head]:.3f} | {norm[layer, head]:.3g} |")
    big = np.dstack(np.unravel_index(np.argsort(-norm, axis=None), norm.shape))[0][:3]
    lines.append("")
    lines.append(
      "Largest updates: "
      + ", ".join(f"block {a} head {b} (‖ΔOV‖ {norm[a, b]:.3g}, class-word fraction {frac[a, b]:.3f})" for a, b in big)
      + "."
    )
  lines += [
    "",
    "![interventions](mechanism_interventions.png)",
    "",
    "![tuned lens](mechanism_tuned_lens.png)",
    "",
    "![heads](mechanism_heads.png)",
    "",
    "![layer x position lens](mechanism_position_lens.png)",
    "",
  ]
  return lines
