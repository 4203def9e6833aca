#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# launch/tpu_collect.sh -- copy a run's results to results/<TPU_NAME>/ on this machine.
#
# Usage:  PROJECT=my-proj ZONE=us-central2-b [TPU_NAME=...] [RUN_NAME=tinyllama]
#         [WITH_CHECKPOINTS=1] [COLLECT_FROM=auto|worker|gcs] [RESULTS_DIR=...] launch/tpu_collect.sh
#
# COLLECT_FROM=worker: tars WORKDIR on worker 0 (without checkpoints/ unless
# WITH_CHECKPOINTS=1), copies it here and unpacks it into RESULTS_DIR, then copies the
# per-worker logs of every worker into RESULTS_DIR/logs/.
# COLLECT_FROM=gcs: `gcloud storage rsync` from the bucket (GCS_BUCKET, or WORKDIR=gs://...).
# auto (default): gcs when GCS_BUCKET is set or WORKDIR is on GCS, else worker.
# See launch/tpu_env.sh for all variables.
set -euo pipefail
# shellcheck source=tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"
need_workdir
COLLECT_FROM="${COLLECT_FROM:-auto}"
if [[ "${COLLECT_FROM}" == auto ]]; then
  if [[ -n "${GCS_PREFIX}" || "${WORKDIR}" == gs://* ]]; then COLLECT_FROM=gcs; else COLLECT_FROM=worker; fi
fi

mkdir -p "${RESULTS_DIR}"
case "${COLLECT_FROM}" in
  gcs)
    if [[ "${WORKDIR}" == gs://* ]]; then src="${WORKDIR}"; else src="${GCS_PREFIX}/workdir"; fi
    [[ -n "${src}" && "${src}" == gs://* ]] || die "COLLECT_FROM=gcs needs GCS_BUCKET or WORKDIR=gs://..."
    rsync_args=(storage rsync --recursive)
    [[ "${WITH_CHECKPOINTS}" == 1 ]] || rsync_args+=(--exclude='^checkpoints/')
    gcloud_run "${rsync_args[@]}" "${src}" "${RESULTS_DIR}"
    if [[ -n "${GCS_PREFIX}" ]]; then
      mkdir -p "${RESULTS_DIR}/logs"
      gcloud_run storage rsync --recursive "${GCS_PREFIX}/logs" "${RESULTS_DIR}/logs" \
        || log "warning: no logs in ${GCS_PREFIX}/logs"
    fi
    ;;
  worker)
    archive="collect_${RUN_NAME}.tar.gz"
    exclude=""
    [[ "${WITH_CHECKPOINTS}" == 1 ]] || exclude="--exclude=./checkpoints"
    tpu_ssh 0 "set -e; cd $(remote_workdir); tar -czf \"${REMOTE_ROOT}/${archive}\" ${exclude} ."
    tpu_scp 0 "${TPU_NAME}:${REMOTE_DIR}/${archive}" "${RESULTS_DIR}/${archive}"
    tar -xzf "${RESULTS_DIR}/${archive}" -C "${RESULTS_DIR}"
    rm -f "${RESULTS_DIR}/${archive}"
    tpu_scp all --recurse "${TPU_NAME}:${REMOTE_DIR}/logs" "${RESULTS_DIR}/" \
      || log "warning: could not copy the per-worker logs"
    ;;
  *) die "COLLECT_FROM must be auto, worker or gcs (got '${COLLECT_FROM}')" ;;
esac
log "results in ${RESULTS_DIR}"
