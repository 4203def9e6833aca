#!/usr/bin/env bash
# The issue-11 measurements on the embedded default (SmolLM2-135M-Instruct), as run on 2026-11-27 on the shared
# 2-core CPU (AMD EPYC, AVX2 + AVX512-BF16, no AMX; dtypes auto -> bf16 weights and matmuls, float32 residual).
# Runs go to $RUNS (default runs/issue11); every run is 300 steps, batch 8, lr 5e-4, LoRA r32/alpha 64 on v,o,
# L = 16, seed 0 unless named. Evaluation: 50 held-out triples per operation (a seeded random subset, the seed's
# prompts included), every format on the same triples.
#
#   bash docs/results/issue11/run.sh        # all of it, in order (each step is skipped when its output exists)
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-runs/issue11}
CONFIG=configs/smollm2_135m.py
TRAIN=(--config.train.steps=300 --config.eval.enabled=False)
EVAL=(--config.data.eval_format=all --config.eval.max_examples_per_op=50)

train() {  # train <name> <overrides...>
  local w=$RUNS/$1; shift
  [ -f "$w/adapter/adapter_model.safetensors" ] || python -m lazarus_jax.train --config $CONFIG "${TRAIN[@]}" "$@" --workdir "$w"
}
evaluate() {  # evaluate <name> <overrides...>
  local w=$RUNS/$1; shift
  [ -f "$w/eval/results.json" ] || python -m lazarus_jax.evaluate --config $CONFIG "${EVAL[@]}" "$@" --workdir "$w"
}

# fewshot: dual (w = 0.7) with the base model measured in the same evaluation, then SFT (w = 0).
train fewshot_dual_s0 --config.data.format=fewshot --config.classifier.weight=0.7
evaluate fewshot_dual_s0 --config.data.format=fewshot --config.classifier.weight=0.7
train fewshot_sft_s0 --config.data.format=fewshot --config.classifier.weight=0
evaluate fewshot_sft_s0 --config.data.format=fewshot --config.classifier.weight=0 --config.eval.compare_base=False
# word: dual (the base model on word is in fewshot_dual_s0's evaluation: same triples, same cap, same seed).
train word_dual_s0 --config.data.format=word --config.classifier.weight=0.7
evaluate word_dual_s0 --config.data.format=word --config.classifier.weight=0.7 --config.eval.compare_base=False
# Target control: arbitrary words (multiply -> " river", ...) on fewshot, dual; train + evaluation on fewshot.
w=$RUNS/fewshot_dual_arbitrary_s0
[ -f "$w/eval/results.json" ] || python -m lazarus_jax.train --config $CONFIG --config.train.steps=300 \
  --config.data.format=fewshot --config.classifier.weight=0.7 --config.classifier.target_set=arbitrary \
  --config.data.eval_format=fewshot --config.eval.max_examples_per_op=50 --config.eval.compare_base=False --workdir "$w"
# A second seed of fewshot dual (another split, LoRA init and batch order), base measured on its split.
w=$RUNS/fewshot_dual_s1
[ -f "$w/eval/results.json" ] || python -m lazarus_jax.train --config $CONFIG --config.train.steps=300 --config.seed=1 \
  --config.data.format=fewshot --config.classifier.weight=0.7 --config.data.eval_format=fewshot \
  --config.eval.max_examples_per_op=50 --workdir "$w"
