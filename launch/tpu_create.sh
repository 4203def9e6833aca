#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# launch/tpu_create.sh -- create the TPU VM (skipped when it already exists).
#
# Usage:  PROJECT=my-proj ZONE=us-central2-b [ACCELERATOR_TYPE=v4-16] [SPOT=1] launch/tpu_create.sh
#
# Idempotent: an existing READY/CREATING VM is reused, a STOPPED one is started, and a
# PREEMPTED or TERMINATED one (Spot/preemptible VMs end up there) is deleted and created
# again (its local disk is gone: resume needs WORKDIR=gs://...).
# See launch/tpu_env.sh for all variables.
set -euo pipefail
# shellcheck source=tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"

state="$(tpu_state)"
case "${state}" in
  "") ;;
  PREEMPTED|TERMINATED)
    log "TPU VM ${TPU_NAME} is ${state}: deleting it to create it again"
    gcloud_run compute tpus tpu-vm delete "${TPU_NAME}" "${TPU_FLAGS[@]}" --quiet
    ;;
  STOPPED)
    log "TPU VM ${TPU_NAME} is STOPPED: starting it"
    gcloud_run compute tpus tpu-vm start "${TPU_NAME}" "${TPU_FLAGS[@]}"
    exit 0
    ;;
  *)
    log "TPU VM ${TPU_NAME} already exists (state ${state}); not creating it"
    exit 0
    ;;
esac

create_args=(compute tpus tpu-vm create "${TPU_NAME}" "${TPU_FLAGS[@]}"
  --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}")
[[ "${SPOT}" == 1 ]] && create_args+=(--spot)
[[ "${PREEMPTIBLE}" == 1 ]] && create_args+=(--preemptible)
[[ "${SPOT}" == 1 && "${PREEMPTIBLE}" == 1 ]] && die "set only one of SPOT=1 and PREEMPTIBLE=1"
read -r -a extra_create <<<"${TPU_CREATE_FLAGS}"
create_args+=(${extra_create[@]+"${extra_create[@]}"})

log "creating TPU VM ${TPU_NAME} (${ACCELERATOR_TYPE}, ${RUNTIME_VERSION}) in ${ZONE}"
gcloud_run "${create_args[@]}"
log "TPU VM ${TPU_NAME} created"
