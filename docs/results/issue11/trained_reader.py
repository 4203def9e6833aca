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
from lazarus_jax.models.gguf_loader import embedded_gguf_path, load_gguf
from lazarus_jax.reporting import evaluate
from lazarus_jax.training.export import recorded_config


def main(run_dirs: list[str]) -> None:
  tok = load_gguf(embedded_gguf_path()).tokenizer
  print("| run | eval format | n | lens at L (recorded) | trained reader | lens beats it |")
  print("|---|---|---|---|---|---|")
  for run in run_dirs:
    with open(os.path.join(run, "results.json")) as f:
      res = json.load(f)
    s = settings.parse(recorded_config(res["provenance"]["config"], os.path.join(run, "results.json")))
    data = experiment.build_data(s, tok)
    if data.split["heldout_sha256"] != res["split"]["heldout_sha256"]:
      raise SystemExit(f"{run}: the rebuilt held-out split differs from the recorded one")
    examples = evaluate.select_examples(data.eval, data.seed_prompts, s.eval.max_examples_per_op, s.seed)
    labels = [t["label"] for t in res["class_targets"]["targets"]]
    reader = evaluate.trained_reader(tok, data.train, examples, labels, s)
    for fmt, lens in sorted(res["classifier_eval"]["by_format"].items()):
      r = reader[fmt]
      low, high = lens["ci_low"], lens["ci_high"]
      beats = "yes" if low > r["ci_high"] else "no"
      print(
        f"| {os.path.basename(os.path.normpath(run))} | {fmt} | {lens['n']} | {100 * lens['accuracy']:.1f}% "
        f"[{100 * low:.1f}, {100 * high:.1f}] | {100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.1f}, "
        f"{100 * r['ci_high']:.1f}] (fitted on {r['n_train']} {','.join(r['trained_formats'])} prompts) | {beats} |"
      )


if __name__ == "__main__":
  main(sys.argv[1:])
