"""The trained reader (evaluate.trained_reader) for runs recorded before it existed, beside their lens at L.

The reader is input-only: a bag-of-tokens probe fitted on the run's training prompts and tested on its held-out
set. It needs the evaluation's config and the tokenizer, not the adapter, so it is recomputed here from the config
each results.json records (provenance.config; the held-out split is checked against the recorded one) and compared
with the lens accuracy that results.json holds.

  python docs/results/issue11/trained_reader.py docs/results/issue11/word_dual_s0 [more run dirs ...]
"""

from __future__ import annotations

import json
import os
import sys

from lazarus_jax import experiment, settings
from lazarus_jax.analysis import compute_or_copy
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.models.gguf_loader import embedded_gguf_path, load_gguf
from lazarus_jax.reporting import evaluate
from lazarus_jax.training.export import recorded_config


def main(run_dirs: list[str]) -> None:
  tok = load_gguf(embedded_gguf_path()).tokenizer
  print("| run | eval format | n | lens at L (recorded) | trained reader | lens − reader, paired | lens beats it |")
  print("|---|---|---|---|---|---|---|")
  for run in run_dirs:
    with open(os.path.join(run, "results.json")) as f:
      res = json.load(f)
    s = settings.parse(recorded_config(res["provenance"]["config"], os.path.join(run, "results.json")))
    data = experiment.build_data(s, tok)
    if data.split["heldout_sha256"] != res["split"]["heldout_sha256"]:
      raise SystemExit(f"{run}: the rebuilt held-out split differs from the recorded one")
    examples = evaluate.select_examples(data.eval, data.seed_prompts, s.eval.max_examples_per_op, s.seed)
    if [data_lib.example_key(e) for e in examples] != res["per_example"]["key"]:
      raise SystemExit(f"{run}: the rebuilt held-out examples differ from the recorded ones")
    labels = [t["label"] for t in res["class_targets"]["targets"]]
    reader = evaluate.trained_reader(tok, data.train, examples, labels, s)
    for fmt in sorted(res["classifier_eval"]["by_format"]):
      res["probes"]["by_format"][fmt]["bag_of_tokens_from_training"] = reader[fmt]
      row = compute_or_copy.format_row(res, fmt)  # as evaluate now reports it
      lens, r, d = row["lens"], row["bag_of_tokens_from_training"], row["lens_minus_trained_reader"]
      print(
        f"| {os.path.basename(os.path.normpath(run))} | {fmt} | {lens['n']} | {pct(lens)} | {pct(r)} (fitted on "
        f"{r['n_train']} {','.join(reader[fmt]['trained_formats'])} prompts) | {100 * d['mean_diff']:+.1f} pp "
        f"[{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}], McNemar p = {d['mcnemar_p']:.2g} | "
        f"{'yes' if row['beats_trained_reader'] else 'no'} |"
      )


def pct(d: dict) -> str:
  return f"{100 * d['accuracy']:.1f}% [{100 * d['ci_low']:.1f}, {100 * d['ci_high']:.1f}]"


if __name__ == "__main__":
  main(sys.argv[1:])
