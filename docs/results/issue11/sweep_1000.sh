#!/usr/bin/env bash
# Issue 11 at the issue's scale on the embedded default: base vs SFT (w = 0) vs dual (w = 0.7, L = 16) on the
# cue-free `fewshot` format, 1000 steps (the config's schedule: warmup 50, batch 8, lr 5e-4, LoRA r32/alpha 64 on
# v,o), seeds 0-2, through the sweep (its tables pool seeds with intervals and pair dual with SFT and base).
# Evaluation: 50 held-out triples per operation per seed (as run.sh), the compute-or-copy section included.
# dtypes pinned to the 300-step runs' (bf16 weights and matmuls, float32 residual), whatever the CPU.
#
#   bash docs/results/issue11/sweep_1000.sh            # SEEDS="0" / "0,1" for a part; re-running resumes
#   bash docs/results/issue11/sweep_1000.sh copy       # copy the sweep tables, the arms' records and
#                                                      # mechanism_1000.sh's results into docs/results/issue11/
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-runs/issue11}
if [ "${1:-}" = copy ]; then
  OUT=docs/results/issue11/fewshot_1000
  source docs/results/copy_runs.sh
  copy_sweep_tables "$RUNS/fewshot_1000" "$OUT"
  copy_arm_records "$RUNS/fewshot_1000/arms" "$OUT/arms"
  for run in "$RUNS/mechanism_1000/"*/; do
    [ -f "$run/eval/results.json" ] || continue
    dest="$OUT/mechanism/$(basename "$run")"
    mkdir -p "$dest"
    cp "$run/eval/results.json" "$run/eval/report.md" "$run/eval/"mechanism_*.png "$dest/"
  done
  for seed in 0 1 2; do
    m=$OUT/mechanism
    [ -f "$m/dual-fewshot-s$seed/results.json" ] && [ -f "$m/sft-fewshot-s$seed/results.json" ] &&
      python docs/results/issue11/mechanism_pairs.py "$m/dual-fewshot-s$seed/results.json" "$m/sft-fewshot-s$seed/results.json" \
        > "$m/pairs-s$seed.md"
  done
  exit 0
fi
python -m lazarus_jax.sweep --config configs/smollm2_135m.py --workdir "$RUNS/fewshot_1000" \
  --config.model.param_dtype=bfloat16 --config.model.compute_dtype=bfloat16 --config.model.activation_dtype=float32 \
  --config.train.steps=1000 --config.train.table_steps=100,300,500,1000 --config.eval.max_examples_per_op=50 \
  --config.sweep.weights=0,0.7 --config.sweep.formats=fewshot --config.sweep.layer_fractions=0.55 \
  --config.sweep.seeds="${SEEDS:-0,1,2}"
