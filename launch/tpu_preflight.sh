#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# launch/tpu_preflight.sh -- before a slice is created: does the training step fit its chips' HBM?
#
# Usage:  PROJECT=my-proj ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 PREFLIGHT_PYTHON=~/tpu_venv/bin/python \
#         [CONFIG=configs/tinyllama.py] [MODEL_PATH=...] [EXTRA_ARGS=...] launch/tpu_preflight.sh
#
# Runs here, needs no TPU: `$PREFLIGHT_PYTHON -m lazarus_jax.preflight --config $CONFIG --topology $ACCELERATOR_TYPE
# [--config.model.path=$MODEL_PATH] $EXTRA_ARGS` compiles the training step for the slice's compile-only devices
# (libtpu describes them) on abstract weights, with the mesh, batch and dtypes the job will use, and compares
# its per-chip memory with the chip's HBM. It fits: one line, exit 0. It does not: one line saying what to
# change, non-zero exit (tpu_run_all.sh with PREFLIGHT=1 then creates nothing).
# PREFLIGHT_PYTHON: a Python with this repo installed (pip install --no-deps -e .) and "jax[tpu]", in a venv
# of its own (libtpu is not a dependency of the CPU install). A hub id as the model needs the network here for
# its config.json and tokenizer (no weights are fetched).
# See launch/tpu_env.sh for all variables.
set -euo pipefail
# shellcheck source=tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"
[[ -n "${PREFLIGHT_PYTHON}" ]] || die "PREFLIGHT_PYTHON is not set: a Python with jax[tpu] and this repo installed (launch/README.md, pre-flight)"

read -r -a extra <<<"${EXTRA_ARGS}"
args=(-m lazarus_jax.preflight --config "${CONFIG}" --topology "${ACCELERATOR_TYPE}")
[[ -n "${MODEL_PATH}" ]] && args+=(--config.model.path="${MODEL_PATH}")
args+=(${extra[@]+"${extra[@]}"})
log "pre-flight: compiling the ${CONFIG} step for ${ACCELERATOR_TYPE} (no TPU needed)"
# Another libtpu process (a second check) may hold libtpu's lock file: compile-only use does not need it.
status=0
(cd "${REPO_ROOT}" && ALLOW_MULTIPLE_LIBTPU_LOAD=1 "${PREFLIGHT_PYTHON}" "${args[@]}") || status=$?
[[ "${status}" -eq 0 ]] || die "pre-flight failed (exit ${status}): not creating ${ACCELERATOR_TYPE} for this job"
