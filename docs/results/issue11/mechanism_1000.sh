#!/usr/bin/env bash
# Is the computed fewshot classifier used? evaluate's mechanism section (eval.mechanism.enabled) on sweep_1000.sh's
# 1000-step fewshot arms of one seed: dual (w = 0.7) with the base model in the same evaluation, then SFT (w = 0);
# 25 held-out prompts per operation, rows 0, 9, 15, 17 (= L + 1), 21, 30, one random-direction draw. Each section
# carries per-prompt outcomes, so dual - sft and dual - base pair prompt by prompt (`mechanism_pairs.py`).
#
#   bash docs/results/issue11/mechanism_1000.sh        # SEED=1 for another seed's arms; MODELS=sft for one
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-runs/issue11}
SEED=${SEED:-0}
ARMS=$RUNS/fewshot_1000/arms
FLAGS=(--config.model.param_dtype=bfloat16 --config.model.compute_dtype=bfloat16 --config.model.activation_dtype=float32
       --config.seed="$SEED" --config.data.format=fewshot --config.data.eval_format=fewshot --config.eval.probes=False
       --config.eval.max_examples_per_op=25 --config.eval.mechanism.enabled=True --config.eval.mechanism.max_examples_per_op=25
       --config.eval.mechanism.rows=0,9,15,17,21,30 --config.eval.mechanism.n_random=1)
for arm in ${MODELS:-dual sft}; do
  out=$RUNS/mechanism_1000/$arm-fewshot-s$SEED
  [ -f "$out/eval/results.json" ] && continue
  adapter=$(ls -d "$ARMS"/$arm-fewshot-*s$SEED-*/adapter | head -1)
  base=False; [ "$arm" = dual ] && base=True  # the base model once, in dual's evaluation (same prompts)
  mkdir -p "$out"
  python -m lazarus_jax.evaluate --config configs/smollm2_135m.py --workdir "$out" "${FLAGS[@]}" \
    --config.eval.adapter="$adapter" --config.eval.compare_base=$base
done
