#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# launch/tpu_run_all.sh -- the whole batch job: [pre-flight ->] create -> setup -> train (+eval) -> collect -> delete.
#
# Usage:  PROJECT=my-proj ZONE=us-central2-b ACCELERATOR_TYPE=v4-16 [SPOT=1] [KEEP=1] \
#         [CONFIG=configs/tinyllama.py] [EXTRA_ARGS=...] [PREFLIGHT=1 PREFLIGHT_PYTHON=...] launch/tpu_run_all.sh
#
# PREFLIGHT=1 first compiles the step for the slice without a TPU (tpu_preflight.sh) and stops,
# creating nothing, when it will not fit the chips' HBM.
# Each step is its own script (launch/tpu_*.sh) and can be re-run alone. Results are
# collected even when training fails (logs), and the TPU VM is deleted at the end, also
# after a failure, unless KEEP=1. Exit status: that of the first failing step.
# Ctrl-C leaves the VM running: delete it with launch/tpu_delete.sh.
# See launch/tpu_env.sh for all variables.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Validate the variables before creating anything.
# shellcheck source=tpu_env.sh
source "${here}/tpu_env.sh"
need_workdir

if [[ "${PREFLIGHT}" == 1 ]]; then
  bash "${here}/tpu_preflight.sh" || exit $?
fi

status=0
bash "${here}/tpu_create.sh" || status=$?
if [[ "${status}" -eq 0 ]]; then
  bash "${here}/tpu_setup.sh" || status=$?
  if [[ "${status}" -eq 0 ]]; then
    bash "${here}/tpu_train.sh" || status=$?
  fi
  collect_status=0
  bash "${here}/tpu_collect.sh" || collect_status=$?
  if [[ "${collect_status}" -ne 0 ]]; then
    log "collect failed (exit ${collect_status})"
    [[ "${status}" -ne 0 ]] || status="${collect_status}"
  fi
fi

if [[ "${KEEP}" == 1 ]]; then
  log "KEEP=1: TPU VM ${TPU_NAME} left running; delete it with launch/tpu_delete.sh"
else
  FORCE=1 bash "${here}/tpu_delete.sh" || { log "delete failed"; [[ "${status}" -ne 0 ]] || status=1; }
fi
if [[ "${status}" -eq 0 ]]; then
  log "done: results in ${RESULTS_DIR}"
else
  log "failed (exit ${status}); whatever was collected is in ${RESULTS_DIR}"
fi
exit "${status}"
