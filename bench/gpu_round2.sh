#!/usr/bin/env bash
# bench/gpu_round2.sh -- the GPU measurements of issue 14 in ONE invocation, most important first, each part
# bounded so that a short lease still returns what finished (JSON lines under $OUT, one file per side).
#   OUT=/some/dir bash bench/gpu_round2.sh [deadline seconds, default 540]
# A ours at 64x128 (einsum / cuDNN attention x scanned / unrolled layers) + a profile of the fastest
# B torch + PEFT eager (SDPA) at 64x128 and 16x1024 + its largest batch at seq 1024
# C ours at 16x1024 + our largest batch at seq 1024 (compiled memory within the device's)
# D torch.compile at 64x128 (its compile of the 22 layers + backward takes minutes: one shape)
# E how cost grows: batch, sequence length, backward depth (adapters from layer 0 / 11 / 20)
# F XLA's dynamic-slice fusion flag on the scanned step
set -uo pipefail
OUT="${OUT:?set OUT}"
DEADLINE="${1:-540}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
[ -d .whl ] && python -m pip install -q --no-deps --no-index .whl/*.whl >/dev/null 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # lazarus_jax from this tree (the scripts run from bench/)
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; python -c "import jax, torch; print('jax', jax.__version__, 'torch', torch.__version__)"; } >> "$OUT/log.txt" 2>&1
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95  # torch may use the whole device: give XLA the same room
part() {  # part NAME CAP command...
  local name=$1 cap=$2; shift 2
  local left=$((DEADLINE - SECONDS - 5))
  (( left < 20 )) && { echo "skip $name: ${left}s left" >> "$OUT/log.txt"; return; }
  (( cap > left )) && cap=$left
  echo "[$SECONDS s] $name (cap ${cap}s)" >> "$OUT/log.txt"
  BENCH_PART=$name timeout -k 5 "$cap" "$@" >> "$OUT/run.log" 2>&1
  echo "[$SECONDS s] $name rc=$?" >> "$OUT/log.txt"
}
V4=einsum,cudnn,einsum-unroll,cudnn-unroll
T="${TINY:+--tiny}"  # TINY=1: a CPU dry run of this script (tiny shapes; cuDNN parts then record errors)
part A 150 python bench/gpu_tinyllama.py --shapes 64x128 --variants $V4 --steps 20 --profile "$OUT/trace" $T --json-dir "$OUT"
part B 90 python bench/gpu_torch_peer.py --shapes 64x128,16x1024 --modes eager --steps 20 --max-batch-seq 1024 $T --json-dir "$OUT"
part C 130 python bench/gpu_tinyllama.py --shapes 16x1024 --variants einsum,cudnn,cudnn-unroll --steps 10 --max-batch-seq 1024 --max-batch-variants einsum,cudnn $T --json-dir "$OUT"
part D 150 python bench/gpu_torch_peer.py --shapes 64x128 --modes compile --steps 20 $T --json-dir "$OUT"
part E1 80 python bench/gpu_tinyllama.py --shapes 8x128,32x128,128x128,16x16,16x256,16x512 --variants cudnn --steps 10 $T --json-dir "$OUT"
part E2 40 python bench/gpu_tinyllama.py --shapes 64x128 --variants cudnn --steps 10 --lora-start 11,20 $T --json-dir "$OUT"
part F 50 env XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=true python bench/gpu_tinyllama.py --shapes 64x128 --variants einsum,cudnn --steps 20 $T --json-dir "$OUT"
find "$OUT/trace" -name '*.trace.json.gz' -exec cp {} "$OUT/" \; 2>/dev/null; rm -rf "$OUT/trace"
echo "[$SECONDS s] done" >> "$OUT/log.txt"
