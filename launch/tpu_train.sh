#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# launch/tpu_train.sh -- train on all TPU workers at once, then evaluate.
#
# Usage:  PROJECT=my-proj ZONE=us-central2-b [CONFIG=configs/tinyllama.py]
#         [EXTRA_ARGS="--config.train.steps=200"] [RESUME=1] [RUN_EVAL=0] launch/tpu_train.sh
#
# Runs on every worker (--worker=all), in $HOME/$REMOTE_DIR/repo with the venv:
#   python -m lazarus_jax.train --config $CONFIG --workdir $WORKDIR --config.distributed=True
#          [--config.model.path=$MODEL_PATH] [--config.resume=True] $EXTRA_ARGS
# (jax.distributed.initialize() finds the other workers by itself), each worker logging to
# $HOME/$REMOTE_DIR/logs/<RUN_NAME>_train_worker<N>.log. Then the evaluation,
#   python -m lazarus_jax.evaluate --config $CONFIG --workdir $WORKDIR ...
# on EVAL_WORKERS (default all: on a multi-host slice the TPU runtime needs every host, and
# process 0 = worker 0 writes $WORKDIR/eval/; set EVAL_WORKERS=0 on a single-host slice to
# run it on worker 0 alone). RESUME=1 continues the run in the same WORKDIR from its last
# checkpoint. With GCS_BUCKET set, every worker copies its logs to
# gs://<bucket>/lazarus_jax/<TPU_NAME>/<RUN_NAME>/logs/ (also after a failure), and worker 0 a local
# WORKDIR to .../workdir (a multi-host job's default WORKDIR is that bucket path already).
# See launch/tpu_env.sh for all variables.
set -euo pipefail
# shellcheck source=tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"
need_workdir
EVAL_WORKERS="${EVAL_WORKERS:-all}"
[[ "${EVAL_WORKERS}" == all || "${EVAL_WORKERS}" =~ ^[0-9]+$ ]] || die "EVAL_WORKERS must be 'all' or a worker index"

read -r -a extra <<<"${EXTRA_ARGS}"
read -r -a eval_extra <<<"${EVAL_EXTRA_ARGS}"
model_args=()
[[ -n "${MODEL_PATH}" ]] && model_args=(--config.model.path="${MODEL_PATH}")

train_flags=(--config.distributed=True ${model_args[@]+"${model_args[@]}"})
[[ "${RESUME}" == 1 ]] && train_flags+=(--config.resume=True)
train_flags+=(${extra[@]+"${extra[@]}"})
train_cmd="$(quote_words python -m lazarus_jax.train --config "${CONFIG}") --workdir $(remote_workdir) $(quote_words "${train_flags[@]}")"

eval_flags=(${model_args[@]+"${model_args[@]}"} ${extra[@]+"${extra[@]}"} ${eval_extra[@]+"${eval_extra[@]}"})
[[ "${EVAL_WORKERS}" == all ]] && eval_flags=(--config.distributed=True ${eval_flags[@]+"${eval_flags[@]}"})
eval_cmd="$(quote_words python -m lazarus_jax.evaluate --config "${CONFIG}") --workdir $(remote_workdir)"
[[ ${#eval_flags[@]} -gt 0 ]] && eval_cmd+=" $(quote_words "${eval_flags[@]}")"

upload_results() {
  [[ -n "${GCS_PREFIX}" ]] || return 0
  log "uploading logs and workdir to ${GCS_PREFIX}/"
  tpu_ssh all "${GCLOUD_REMOTE} storage cp \"${REMOTE_ROOT}/logs/${RUN_NAME}_\"*.log ${GCS_PREFIX}/logs/" \
    || log "warning: log upload failed"
  if [[ "${WORKDIR}" != gs://* ]]; then
    tpu_ssh 0 "${GCLOUD_REMOTE} storage rsync --recursive $(remote_workdir) ${GCS_PREFIX}/workdir" \
      || log "warning: workdir upload failed"
  fi
}
GCLOUD_REMOTE="gcloud"

log "training ${CONFIG} on ${TPU_NAME} (${ACCELERATOR_TYPE}), workdir ${WORKDIR}"
status=0
tpu_ssh all "${REMOTE_RUN} ${RUN_NAME}_train ${train_cmd}" || status=$?
if [[ "${status}" -ne 0 ]]; then
  log "training failed (exit ${status}); see ${REMOTE_ROOT}/logs/${RUN_NAME}_train_worker*.log on the workers"
elif [[ "${RUN_EVAL}" == 1 ]]; then
  log "evaluating on worker(s) ${EVAL_WORKERS}"
  tpu_ssh "${EVAL_WORKERS}" "${REMOTE_RUN} ${RUN_NAME}_eval ${eval_cmd}" || status=$?
  [[ "${status}" -eq 0 ]] || log "evaluation failed (exit ${status})"
fi
upload_results
exit "${status}"
