#!/usr/bin/env bash
# Regenerates docs/results/ with the code of the commit it runs from (run it from a clean checkout: every
# results.json records the commit and whether the tree was dirty). Runs go to $RUNS (default runs/results);
# `copy` copies what the runs wrote (finished arms as they come) into docs/results/.
#
#   bash docs/results/regenerate.sh main      # the embedded default's 1000-step run (~7 min on 2 cores)
#   bash docs/results/regenerate.sh compare   # controlled comparison: base/SFT/dual/classifier x 2 formats x 5 seeds
#   bash docs/results/regenerate.sh depth     # classifier depth, dual w=0.7, symbolic, 2 seeds (reuses compare's arms)
#   bash docs/results/regenerate.sh sft_steps # symbolic SFT arms at 600 steps (SFT_STEPS="100 600 1000" for more), 2 seeds: where SFT levels off
#   bash docs/results/regenerate.sh grpo      # GRPO and GRPO+lens arms from compare's symbolic SFT arms, 3 seeds
#   bash docs/results/regenerate.sh grpo_control # grpo beside sft+more, its equal-budget control, 3 seeds
#   bash docs/results/regenerate.sh mechanism # is the classifier used? interventions, tuned lens, V/O on compare's arms
#   bash docs/results/regenerate.sh copy      # copy finished runs into docs/results/
#
# Re-running a command continues it: finished arms (same resolved config) are reused, a partly trained arm
# resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/results}
OUT=docs/results
CONFIG=configs/smollm2_135m.py
source docs/results/copy_runs.sh
# The dtypes the recorded runs used, pinned (the config's `auto` would pick float32 on a CPU without native bf16,
# which changes the numbers and every arm's config hash): bf16 weights and matmuls, a float32 residual stream.
DTYPES=(--config.model.param_dtype=bfloat16 --config.model.compute_dtype=bfloat16 --config.model.activation_dtype=float32)
# 300 steps per arm, evaluated on the whole held-out split (200 triples per operation, 72 for divide: 672 prompts).
ARM_FLAGS=("${DTYPES[@]}" --config.train.steps=300 --config.train.warmup_steps=20 --config.train.log_every=10
           --config.train.checkpoint_every=100 --config.train.table_steps=100,200,300)

case "${1:-}" in
  main)
    python -m lazarus_jax.train --config "$CONFIG" --workdir "$RUNS/smollm2_1000_steps" "${DTYPES[@]}" ;;
  compare)
    python -m lazarus_jax.sweep --config "$CONFIG" --workdir "$RUNS/compare" "${ARM_FLAGS[@]}" \
      --config.sweep.weights=0,0.7,1 --config.sweep.formats=symbolic,semantic --config.sweep.layer_fractions=0.55 \
      --config.sweep.seeds=0,1,2,3,4 ;;
  depth)
    # The depth sweep shares the comparison's arms directory: its 0.55, SFT and base arms are the same runs.
    mkdir -p "$RUNS/compare/arms" "$RUNS/depth"
    [ -e "$RUNS/depth/arms" ] || ln -s ../compare/arms "$RUNS/depth/arms"
    python -m lazarus_jax.sweep --config "$CONFIG" --workdir "$RUNS/depth" "${ARM_FLAGS[@]}" \
      --config.sweep.weights=0,0.7 --config.sweep.formats=symbolic \
      --config.sweep.layer_fractions=0.25,0.4,0.55,0.7,0.85 --config.sweep.seeds=0,1 ;;
  sft_steps)
    for steps in ${SFT_STEPS:-600}; do
      mkdir -p "$RUNS/compare/arms" "$RUNS/sft_steps_$steps"
      [ -e "$RUNS/sft_steps_$steps/arms" ] || ln -s ../compare/arms "$RUNS/sft_steps_$steps/arms"
      python -m lazarus_jax.sweep --config "$CONFIG" --workdir "$RUNS/sft_steps_$steps" "${DTYPES[@]}" --config.train.steps=$steps \
        --config.train.warmup_steps=20 --config.train.log_every=10 --config.train.checkpoint_every=100 \
        --config.train.table_steps=$((steps / 2)),$steps --config.sweep.weights=0 --config.sweep.include_base=False \
        --config.sweep.formats=symbolic --config.sweep.layer_fractions=0.55 --config.sweep.seeds=0,1
    done ;;
  grpo)
    # GRPO and GRPO+lens arms (40 rounds each, lr 1e-4) from the comparison's symbolic SFT arms, seeds 0-2; the
    # base/SFT/dual arms are the comparison's own (shared arms directory, same hashes).
    mkdir -p "$RUNS/compare/arms" "$RUNS/grpo"
    [ -e "$RUNS/grpo/arms" ] || ln -s ../compare/arms "$RUNS/grpo/arms"
    python -m lazarus_jax.sweep --config "$CONFIG" --workdir "$RUNS/grpo" "${ARM_FLAGS[@]}" \
      --config.sweep.weights=0,0.7 --config.sweep.formats=symbolic --config.sweep.layer_fractions=0.55 \
      --config.sweep.seeds=0,1,2 --config.sweep.grpo_arms=grpo,grpo+lens --config.sweep.grpo_steps=40 ;;
  grpo_control)
    # GRPO's equal-budget control (issue 13): the grpo arm (40 rounds) beside sft+more (the same SFT adapter, 40
    # more supervised steps at the same lr, on the same batches), symbolic, seeds 0-2; SFT and base arms as compare's.
    mkdir -p "$RUNS/compare/arms" "$RUNS/grpo_control"
    [ -e "$RUNS/grpo_control/arms" ] || ln -s ../compare/arms "$RUNS/grpo_control/arms"
    python -m lazarus_jax.sweep --config "$CONFIG" --workdir "$RUNS/grpo_control" "${ARM_FLAGS[@]}" \
      --config.sweep.weights=0 --config.sweep.formats=symbolic --config.sweep.layer_fractions=0.55 \
      --config.sweep.seeds=0,1,2 --config.sweep.grpo_arms=grpo,sft+more --config.sweep.grpo_steps=40 ;;
  mechanism)
    # evaluate's `mechanism` section (eval.mechanism.enabled) on compare's 300-step arms: base, SFT (w = 0) and dual
    # (w = 0.7, L = 16), 25 held-out prompts per operation. MECH_RUNS lists format:seed pairs, most important first.
    # MECH_EXTRA: more flags (e.g. fewer rows: --config.eval.mechanism.rows=0,9,15,17,21,30 --config.eval.mechanism.n_random=1).
    MFLAGS=("${DTYPES[@]}" --config.eval.mechanism.enabled=True --config.eval.probes=False --config.eval.compare_base=False
            --config.eval.max_examples_per_op=25 ${MECH_EXTRA:-})
    for run in ${MECH_RUNS:-symbolic:0 semantic:0 symbolic:1 semantic:1 symbolic:2}; do
      fmt=${run%%:*}; seed=${run##*:}
      for arm in base sft dual; do
        out="$RUNS/mechanism/$arm-$fmt-s$seed"
        [ -f "$out/eval/results.json" ] && continue
        if [ "$arm" = base ]; then
          [ "$seed" = 0 ] || continue  # one base model: measured on seed 0's prompts
          adapter=none
        else
          pattern="$RUNS/compare/arms/$arm-$fmt-s$seed-*"
          [ "$arm" = dual ] && pattern="$RUNS/compare/arms/$arm-$fmt-f0.55-s$seed-*"
          # (if, not &&: a failed grep on the last directory must not fail the pipeline under pipefail)
          adapter=$(for d in $pattern; do if grep -q '"steps": 300,' "$d/config.json"; then echo "$d/adapter"; fi; done | head -1)
          [ -n "$adapter" ] || { echo "no 300-step $arm arm for $fmt seed $seed under $RUNS/compare/arms" >&2; continue; }
        fi
        mkdir -p "$out"
        python -m lazarus_jax.evaluate --config "$CONFIG" --workdir "$out" "${MFLAGS[@]}" --config.seed="$seed" \
          --config.data.format="$fmt" --config.eval.adapter="$adapter"
      done
    done
    python docs/results/mechanism_summary.py "$RUNS/mechanism" > "$RUNS/mechanism/mechanism.md" ;;
  copy)
    if [ -d "$RUNS/smollm2_1000_steps/eval" ]; then
      mkdir -p "$OUT/smollm2_1000_steps"
      cp "$RUNS/smollm2_1000_steps/eval/"{results.json,report.md,*.png} "$OUT/smollm2_1000_steps/"
      cp "$RUNS/smollm2_1000_steps/training_table.md" "$OUT/smollm2_1000_steps/"
    fi
    for dir in "$RUNS/compare" "$RUNS/depth" "$RUNS/sft_steps_"* "$RUNS/grpo" "$RUNS/grpo_control"; do
      [ -d "$dir" ] || continue
      copy_sweep_tables "$dir" "$OUT/$(basename "$dir")"
    done
    [ -d "$RUNS/compare/arms" ] && python docs/results/sft_curve.py "$RUNS/compare/arms" > "$OUT/sft_curve.md"
    for run in "$RUNS/mechanism/"*/; do
      [ -f "$run/eval/results.json" ] || continue
      dest="$OUT/mechanism/$(basename "$run")"
      mkdir -p "$dest"
      cp "$run/eval/results.json" "$dest/"
      # report.md and figures re-rendered from results.json by this checkout's report code (numbers unchanged)
      python -c "import json, sys; from lazarus_jax.reporting import report; report.write_report(json.load(open(sys.argv[1])), sys.argv[2])" \
        "$dest/results.json" "$dest"
    done
    if [ -d "$RUNS/mechanism" ]; then
      python docs/results/mechanism_summary.py "$RUNS/mechanism" "$OUT/mechanism/mechanism.png" > "$OUT/mechanism/mechanism.md"
    fi
    copy_arm_records "$RUNS/compare/arms" "$OUT/arms" ;;
  *)
    echo "usage: bash docs/results/regenerate.sh main|compare|depth|sft_steps|grpo|grpo_control|mechanism|copy" >&2; exit 2 ;;
esac
