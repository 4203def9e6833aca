"""Cross-model tables of evaluate's `mechanism` sections: base vs SFT vs dual, per format and seed.

  python docs/results/mechanism_summary.py <runs>/mechanism [mechanism.png] > mechanism.md

Reads `<dir>/<arm>-<format>-s<seed>/eval/results.json` (regenerate.sh's `mechanism` stage) and prints markdown.
Every number is read from those files.
"""

from __future__ import annotations

import glob
import json
import os
import sys


def pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def ci(d) -> str:
  return f"{pct(d['accuracy'])} [{100 * d['ci_low']:.1f}, {100 * d['ci_high']:.1f}]"


def load(root: str) -> list[tuple[str, str, int, dict]]:
  runs = []
  for path in sorted(glob.glob(os.path.join(root, "*", "eval", "results.json"))):
    name = os.path.basename(os.path.dirname(os.path.dirname(path)))
    arm, fmt, seed = name.split("-")
    with open(path) as f:
      r = json.load(f)
    if r.get("mechanism"):
      runs.append((arm, fmt, int(seed[1:]), r))
  order = {"base": 0, "sft": 1, "dual": 2}
  return sorted(runs, key=lambda x: (x[1], x[2], order.get(x[0], 9)))


def section(r: dict) -> dict:
  mech = r["mechanism"]
  return mech["adapted"] if mech.get("adapted") else mech["base"]


def at_row(rows: list[dict], row: int) -> dict | None:
  return next((x for x in rows if x["row"] == row), None)


def main(root: str) -> None:
  runs = load(root)
  if not runs:
    print(f"no mechanism results under {root}")
    return
  r0 = runs[0][3]
  L, k = r0["classifier_layer"], len(r0["class_targets"]["targets"])
  print("# Is the classifier used? Interventions, tuned lens and V/O on base, SFT and dual models\n")
  print(f"SmolLM2-135M-Instruct, compare's 300-step arms (SFT w = 0, dual w = 0.7 at L = {L}); "
        f"{section(r0)['n']} held-out prompts per run (a seeded random subset, 25 per operation); "
        "base measured on seed 0's prompts. Row r = residual after block r-1; "
        f"L is row {L + 1}. Intervals: 95% Wilson over prompts.\n")
  print("| run | commit | rows edited | random draws per control | tuned lens prompts x steps |")
  print("|---|---|---|---|---|")
  for arm, fmt, seed, r in runs:
    git, m = r["provenance"]["git"], r["provenance"]["config"]["eval"]["mechanism"]
    print(f"| {arm}-{fmt}-s{seed} | {git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''} | "
          f"{','.join(map(str, section(r)['rows']))} | {m['n_random']} | {m['tuned_lens_train']} x "
          f"{m['tuned_lens_steps']} |")
  print()

  print(f"## Ablation of the {k} class-word lens directions at the readout, row {L + 1} (after block {L})\n")
  print("| arm | format | seed | lens acc. at L | clean answers | class ablated | Gaussian random (mean) | "
        "random tokens (mean) | norm removed class / random / tokens | KL class / random / tokens |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for arm, fmt, seed, r in runs:
    s = section(r)
    a = at_row(s["ablation"]["rows"], L + 1)
    if a is None:
      continue
    print(f"| {arm} | {fmt} | {seed} | {pct(r['classifier_eval']['accuracy'])} | "
          f"{ci(s['ablation']['clean']['answer_accuracy'])} | {ci(a['class']['answer_accuracy'])} | "
          f"{pct(a['random_mean']['answer_accuracy'])} | {pct(a['random_tokens_mean']['answer_accuracy'])} | "
          f"{pct(a['class']['norm_fraction_removed'])} / {pct(a['random_mean']['norm_fraction_removed'])} / "
          f"{pct(a['random_tokens_mean']['norm_fraction_removed'])} | {a['class']['mean_kl_from_clean']:.3g} / "
          f"{a['random_mean']['mean_kl_from_clean']:.3g} / {a['random_tokens_mean']['mean_kl_from_clean']:.3g} |")

  print("\n## Ablation by row (runs may edit different rows: each cell names its row)\n")
  print("KL(clean || edited) of the final distribution, class-word directions vs random-token directions, and answer "
        "accuracy after the class ablation (clean first):\n")
  print("| arm | format | seed | KL class / random tokens, by row | answers: clean; class-ablated by row |")
  print("|---|---|---|---|---|")
  for arm, fmt, seed, r in runs:
    s = section(r)
    kl = ", ".join(f"r{x['row']}: {x['class']['mean_kl_from_clean']:.2g} / "
                   f"{x['random_tokens_mean']['mean_kl_from_clean']:.2g}" for x in s["ablation"]["rows"])
    acc = ", ".join(f"r{x['row']}: {pct(x['class']['answer_accuracy']['accuracy'])}" for x in s["ablation"]["rows"])
    print(f"| {arm} | {fmt} | {seed} | {kl} | {pct(s['ablation']['clean']['answer_accuracy']['accuracy'])}; {acc} |")

  print(f"\n## Steering at row {L + 1}: the answer becomes the model's own answer to the counterpart operation\n")
  alphas = [a["alpha"] for a in section(r0)["steering"]["alphas"]]
  print("| arm | format | seed | " + " | ".join(f"alpha {a:g}: class / random" for a in alphas) + " |")
  print("|---|---|---|" + "---|" * len(alphas))
  for arm, fmt, seed, r in runs:
    cells = [f"{pct(a['class']['target_output']['accuracy'])} / {pct(a['random']['target_output']['accuracy'])}"
             for a in section(r)["steering"]["alphas"]]
    print(f"| {arm} | {fmt} | {seed} | " + " | ".join(cells) + " |")

  print("\n## Activation patching: the answer follows the counterpart prompt's (first token follows), by row\n")
  print("Row 0 patches nothing (both prompts end in the same token): its first-token rate is the agreement of the two "
        "prompts' first tokens without any patch.\n")
  print("| arm | format | seed | by row: answer follows (first token follows) |")
  print("|---|---|---|---|")
  for arm, fmt, seed, r in runs:
    cells = [f"r{x['row']}: {pct(x['follows_source_output']['accuracy'])} "
             f"({pct(x['source_output_first_token']['accuracy'])})" for x in section(r)["patching"]["rows"]]
    print(f"| {arm} | {fmt} | {seed} | " + ", ".join(cells) + " |")

  print("\n## Tuned lens vs logit lens (held-out): KL(final || lens) and class-word accuracy at L and around it\n")
  n_rows = r0["model"]["n_layers"] + 1
  show = [x for x in (L - 5, L + 1, L + 6) if 0 <= x < n_rows]
  print("| arm | format | seed | coverage | " + " | ".join(
      f"row {x}: KL logit / tuned | row {x}: class acc. logit / tuned" for x in show) + " |")
  print("|---|---|---|---|" + "---|---|" * len(show))
  for arm, fmt, seed, r in runs:
    tl = section(r).get("tuned_lens")
    if not tl:
      continue
    cells = []
    for x in show:
      e = tl["rows"][x]
      cells.append(f"{e['logit']['kl']:.3g} / {e['tuned']['kl']:.3g} | "
                   f"{pct(e['logit']['class_accuracy'])} / {pct(e['tuned']['class_accuracy'])}")
    print(f"| {arm} | {fmt} | {seed} | {pct(tl['coverage_heldout'])} | " + " | ".join(cells) + " |")

  print("\n## What V/O learned: ΔOV class-word fraction (chance = k / D)\n")
  print("| arm | format | seed | chance | mean over heads (adapted blocks) | max (block, head) | "
        "blocks with a head above 10x chance | largest ‖ΔOV‖ (block, head) |")
  print("|---|---|---|---|---|---|---|---|")
  for arm, fmt, seed, r in runs:
    vo = r["mechanism"].get("vo")
    if not vo:
      continue
    frac = vo["delta_ov"]["class_fraction"]
    norm = vo["delta_ov"]["delta_norm"]
    cells = [(f, b, h) for b, row in enumerate(frac) for h, f in enumerate(row) if f is not None]
    best = max(cells)
    chance = vo["delta_ov"]["chance"]
    big = max((n, b, h) for b, row in enumerate(norm) for h, n in enumerate(row))
    blocks = sorted({b for f, b, _ in cells if f > 10 * chance})
    print(f"| {arm} | {fmt} | {seed} | {chance:.4f} | {sum(f for f, _, _ in cells) / len(cells):.4f} | "
          f"{best[0]:.3f} ({best[1]}, {best[2]}) | {', '.join(map(str, blocks)) or 'none'} | "
          f"{big[0]:.3g} ({big[1]}, {big[2]}) |")

  print("\n## Readout attention mass (mean over heads and over blocks L-3..L) on the operator and operand tokens\n")
  print("| arm | format | seed | operator | operand a | operand b |")
  print("|---|---|---|---|---|---|")
  for arm, fmt, seed, r in runs:
    att = section(r)["attention"]["mean_mass"]
    blocks = range(max(0, L - 3), L + 1)

    def mass(role, att=att, blocks=blocks):  # "—" where the format has no such token (word: no operator)
      if role not in att:
        return "—"
      return f"{sum(sum(att[role][b]) / len(att[role][b]) for b in blocks) / len(blocks):.3f}"

    print(f"| {arm} | {fmt} | {seed} | {mass('operator')} | {mass('operand_a')} | {mass('operand_b')} |")


def plot(root: str, path: str) -> None:
  """Cross-run figure: per format, (a) patching -- first token follows the counterpart prompt's, minus row 0 (no
  patch); (b) ablation -- KL(clean || class-ablated) divided by the random-token control's, by row; (c) the same KL
  per unit of squared norm removed, class vs random tokens."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = load(root)
  fmts = sorted({f for _, f, _, _ in runs})
  fig, axes = plt.subplots(len(fmts), 3, figsize=(16, 4 * len(fmts)), squeeze=False, constrained_layout=True)
  colors = {"base": "C0", "sft": "C2", "dual": "C3"}
  for i, fmt in enumerate(fmts):
    for arm, f, seed, r in runs:
      if f != fmt:
        continue
      s = section(r)
      ls = ["-", "--", ":"][seed % 3]
      label = f"{arm} s{seed}"
      p = s["patching"]["rows"]
      base0 = p[0]["source_output_first_token"]["accuracy"]
      axes[i, 0].plot([x["row"] for x in p], [x["source_output_first_token"]["accuracy"] - base0 for x in p], ls,
                      color=colors.get(arm), marker=".", label=label)
      a = s["ablation"]["rows"]
      ratio = [x["class"]["mean_kl_from_clean"] / max(x["random_tokens_mean"]["mean_kl_from_clean"], 1e-9) for x in a]
      axes[i, 1].semilogy([x["row"] for x in a], ratio, ls, color=colors.get(arm), marker=".", label=label)
      for key, mk in (("class", "o"), ("random_tokens_mean", "x")):
        per_norm = [x[key]["mean_kl_from_clean"] / max(x[key]["norm_fraction_removed"], 1e-9) for x in a]
        axes[i, 2].semilogy([x["row"] for x in a], per_norm, ls, color=colors.get(arm), marker=mk,
                            label=f"{label}: {key.replace('_mean', '')}")
    L = runs[0][3]["classifier_layer"]
    for ax in axes[i]:
      ax.axvline(L + 1, color="grey", lw=0.8, ls=":")
      ax.set_xlabel("residual row edited at the readout (row r = after block r-1)")
      ax.legend(fontsize=6)
    axes[i, 0].set(title=f"{fmt}: patching, first token follows the source (minus row 0)", ylabel="fraction")
    axes[i, 1].set(title=f"{fmt}: KL of class ablation / KL of random-token ablation", ylabel="ratio")
    axes[i, 2].set(title=f"{fmt}: KL per unit of squared norm removed", ylabel="nats / fraction removed")
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  root = sys.argv[1] if len(sys.argv) > 1 else "runs/results/mechanism"
  main(root)
  if len(sys.argv) > 2:
    plot(root, sys.argv[2])
