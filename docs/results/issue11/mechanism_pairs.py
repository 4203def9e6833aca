"""Paired mechanism contrasts between two evaluations on the same prompts (mechanism_1000.sh's dual and SFT runs).

  python docs/results/issue11/mechanism_pairs.py DUAL/eval/results.json SFT/eval/results.json > pairs.md

Prints, as markdown: each model's clean answers and class ablation at L (the mechanism report's model table, base
from the dual evaluation included), then dual − sft and dual − base paired prompt by prompt: the class-ablation
effect (mechanism.ablation_contrast) and steering / patching (mechanism.intervention_contrast), rendered by the
report's own table code. Both evaluations must hold the same mechanism prompts (same seed and caps).
"""

import json
import sys

from lazarus_jax.analysis import mechanism
from lazarus_jax.reporting import mechanism_report


def main(dual_path: str, sft_path: str) -> None:
  dual, sft = (json.load(open(p))["mechanism"] for p in (dual_path, sft_path))
  models = {"base": dual["base"], "sft": sft["adapted"], "dual": dual["adapted"]}
  print("| model | clean answers | class ablation at L | verdict |\n|---|---|---|---|")
  for name, m in models.items():
    if m is None:
      continue
    at = next(r for r in m["ablation"]["rows"] if r["row"] == m["row"])
    print(
      f"| {name} | {mechanism_report.accuracy_ci(m['ablation']['clean']['answer_accuracy'])} | "
      f"{mechanism_report.accuracy_ci(at['class']['answer_accuracy'])} | {mechanism_report.used_verdict(at)} |"
    )
  for other in ("sft", "base"):
    if models[other] is None:
      continue
    pair = {
      "ablation_contrast": mechanism.ablation_contrast(models["dual"], models[other], ("dual", other)),
      "intervention_contrast": mechanism.intervention_contrast(models["dual"], models[other], ("dual", other)),
    }
    lines = mechanism_report.ablation_contrast_rows(pair)
    lines += mechanism_report.intervention_contrast_rows(pair, heading=not lines)
    print("\n".join(lines).replace("### Is the classifier used more after training?", f"### dual − {other}"))


if __name__ == "__main__":
  main(*sys.argv[1:])
