#!/usr/bin/env bash
# launch/remote_run.sh -- runs ON EACH TPU WORKER: one command in the repo with the venv,
# its output also appended to a per-worker log. Installed by launch/tpu_setup.sh into
# $HOME/$REMOTE_DIR/bin/ and called by launch/tpu_train.sh.
#
# Usage (on the worker):  bash $HOME/lazarus/bin/remote_run.sh LOG_NAME COMMAND [ARGS...]
#   -> log file $HOME/lazarus/logs/LOG_NAME_worker<N>.log, exit status of COMMAND.
set -euo pipefail

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 2 ]] || die "usage: remote_run.sh LOG_NAME COMMAND [ARGS...]"
log_name="$1"
shift

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "${root}/venv/bin/python" ]] || die "no venv in ${root} on $(hostname); run launch/tpu_setup.sh first"

# Worker index from the TPU VM metadata, else from the hostname (...-w-N), else 0.
worker="$(curl -sf -m 2 -H 'Metadata-Flavor: Google' \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null || true)"
if [[ ! "${worker}" =~ ^[0-9]+$ ]]; then
  worker="$(hostname | sed -n 's/.*-w-\([0-9][0-9]*\)$/\1/p')"
fi
worker="${worker:-0}"

mkdir -p "${root}/logs"
log_file="${root}/logs/${log_name}_worker${worker}.log"
cd "${root}/repo"
# shellcheck source=/dev/null
source "${root}/venv/bin/activate"
printf '### %s host=%s worker=%s: %s\n' "$(date -u +%FT%TZ)" "$(hostname)" "${worker}" "$*" >>"${log_file}"
set +e
"$@" 2>&1 | tee -a "${log_file}"
status="${PIPESTATUS[0]}"
set -e
printf '### exit status %s\n' "${status}" >>"${log_file}"
exit "${status}"
