#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# launch/tpu_delete.sh -- delete the TPU VM (asks for confirmation unless FORCE=1).
#
# Usage:  PROJECT=my-proj ZONE=us-central2-b TPU_NAME=lazarus-me [FORCE=1] launch/tpu_delete.sh
#
# Does nothing when the VM does not exist. Without FORCE=1 it asks on the terminal and
# refuses when there is no terminal to ask. See launch/tpu_env.sh for all variables.
set -euo pipefail
# shellcheck source=tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"

state="$(tpu_state)"
if [[ -z "${state}" ]]; then
  log "TPU VM ${TPU_NAME} does not exist in ${ZONE}; nothing to delete"
  exit 0
fi

if [[ "${FORCE}" != 1 ]]; then
  if [[ ! -t 0 ]]; then
    die "refusing to delete ${TPU_NAME} without confirmation (no terminal); set FORCE=1"
  fi
  read -r -p "Delete TPU VM ${TPU_NAME} (${state}) in ${PROJECT}/${ZONE}? [y/N] " answer
  case "${answer}" in
    y|Y|yes|YES) ;;
    *) log "not deleted"; exit 1 ;;
  esac
fi

gcloud_run compute tpus tpu-vm delete "${TPU_NAME}" "${TPU_FLAGS[@]}" --quiet
log "TPU VM ${TPU_NAME} deleted"
