# shellcheck shell=bash disable=SC2034  # (variables are used by the scripts that source this file)
# launch/tpu_env.sh -- shared settings and helpers for the launch/tpu_*.sh scripts.
#
# Usage:  source launch/tpu_env.sh   (each tpu_*.sh does this; not run directly)
#
# Everything is set through environment variables (no secrets, no hard-coded project
# or zone):
#
#   PROJECT            (required) GCP project id
#   ZONE               (required) zone with TPU quota, e.g. us-central2-b (v4), us-west4-a (v5e)
#   TPU_NAME           TPU VM name                                  [lazarus-<user>]
#   ACCELERATOR_TYPE   e.g. v4-8, v4-16, v5litepod-16, v6e-16       [v4-16]
#   RUNTIME_VERSION    TPU VM image; default derived from ACCELERATOR_TYPE
#                      (v4: tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite,
#                       v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)
#   SPOT=1             create a Spot TPU VM (--spot)                [0]
#   PREEMPTIBLE=1      create a preemptible TPU VM (--preemptible)  [0]
#   TPU_CREATE_FLAGS   extra words for `tpu-vm create` (e.g. "--network=x --internal-ips")
#   SSH_FLAGS          extra words for every `tpu-vm ssh`/`scp` (e.g. "--internal-ip")
#   REPO_URL           git URL to clone on the workers; empty = ship the local
#                      checkout (`git archive` of HEAD plus uncommitted tracked changes)
#   REPO_REF           branch/tag/commit to check out with REPO_URL  [main]
#   REMOTE_DIR         base directory on each worker, relative to $HOME  [lazarus]
#   PYTHON_VERSION     Python of the worker venv (made with uv)      [3.11]
#   JAX_PIP_SPEC       how jax is installed on the workers           [jax[tpu]]
#   CONFIG             training config                               [configs/tinyllama.py]
#   RUN_NAME           run name (workdir, logs, results)             [basename of CONFIG]
#   WORKDIR            workdir on the workers (or gs://...)          [single host: $HOME/<REMOTE_DIR>/runs/<RUN_NAME>;
#                      multi-host: gs://<bucket>/lazarus_jax/<TPU_NAME>/<RUN_NAME>/workdir, GCS_BUCKET required]
#   MODEL_PATH         --config.model.path (dir on the worker or hub id); for
#                      configs/tinyllama.py defaults to TinyLlama/TinyLlama-1.1B-Chat-v1.0
#   EXTRA_ARGS         extra `--config.<key>=<value>` words for train and evaluate
#   EVAL_EXTRA_ARGS    extra words for evaluate only
#   RESUME=1           pass --config.resume=True (continue the run in WORKDIR)  [0]
#   RUN_EVAL=0         skip the separate evaluation after training  [1]
#   GCS_BUCKET         bucket (gs://name or name) for results, required on multi-host slices; files go to
#                      gs://<bucket>/lazarus_jax/<TPU_NAME>/<RUN_NAME>/
#   RESULTS_DIR        local results directory                       [<repo>/results/<TPU_NAME>]
#   WITH_CHECKPOINTS=1 also collect checkpoints/                     [0]
#   FORCE=1            delete without asking                         [0]
#   KEEP=1             tpu_run_all.sh keeps the TPU VM at the end    [0]
#   PREFLIGHT=1        tpu_run_all.sh first runs tpu_preflight.sh and creates nothing
#                      when the step will not fit the slice's HBM    [0]
#   PREFLIGHT_PYTHON   Python with jax[tpu] + this repo, for tpu_preflight.sh
#   GCLOUD             gcloud executable                             [gcloud]
#
# Values are single words (no spaces); EXTRA_ARGS is split on whitespace.

set -euo pipefail

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${LAUNCH_DIR}/.." && pwd)"

[[ -n "${PROJECT:-}" ]] || die "PROJECT is not set (export PROJECT=<gcp-project-id>)"
[[ -n "${ZONE:-}" ]] || die "ZONE is not set (export ZONE=<zone>, e.g. us-central2-b)"

_default_user="$(id -un 2>/dev/null || echo user)"
_default_user="$(printf '%s' "${_default_user}" | tr -c 'a-z0-9\n' '-')"
TPU_NAME="${TPU_NAME:-lazarus-${_default_user}}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-16}"
if [[ -z "${RUNTIME_VERSION:-}" ]]; then
  case "${ACCELERATOR_TYPE}" in
    v2-*|v3-*|v4-*) RUNTIME_VERSION="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) RUNTIME_VERSION="v2-alpha-tpuv5-lite" ;;
    v5p-*) RUNTIME_VERSION="v2-alpha-tpuv5" ;;
    v6e-*) RUNTIME_VERSION="v2-alpha-tpuv6e" ;;
    *) die "RUNTIME_VERSION is not set and there is no default for ACCELERATOR_TYPE=${ACCELERATOR_TYPE}" ;;
  esac
fi
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
TPU_CREATE_FLAGS="${TPU_CREATE_FLAGS:-}"
SSH_FLAGS="${SSH_FLAGS:-}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-main}"
REMOTE_DIR="${REMOTE_DIR:-lazarus}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
JAX_PIP_SPEC="${JAX_PIP_SPEC:-jax[tpu]}"
CONFIG="${CONFIG:-configs/tinyllama.py}"
RUN_NAME="${RUN_NAME:-$(basename "${CONFIG}" .py)}"
if [[ -z "${MODEL_PATH:-}" && "$(basename "${CONFIG}")" == "tinyllama.py" ]]; then
  MODEL_PATH="TinyLlama/TinyLlama-1.1B-Chat-v1.0"
fi
MODEL_PATH="${MODEL_PATH:-}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
EVAL_EXTRA_ARGS="${EVAL_EXTRA_ARGS:-}"
RESUME="${RESUME:-0}"
RUN_EVAL="${RUN_EVAL:-1}"
GCS_BUCKET="${GCS_BUCKET:-}"
RESULTS_DIR="${RESULTS_DIR:-${REPO_ROOT}/results/${TPU_NAME}}"
WITH_CHECKPOINTS="${WITH_CHECKPOINTS:-0}"
FORCE="${FORCE:-0}"
KEEP="${KEEP:-0}"
PREFLIGHT="${PREFLIGHT:-0}"
PREFLIGHT_PYTHON="${PREFLIGHT_PYTHON:-}"
GCLOUD="${GCLOUD:-gcloud}"

# Everything that ends up inside a remote shell command must be a plain word.
_plain_word='^[A-Za-z0-9_./:@%+=,-]+$'
[[ "${TPU_NAME}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "TPU_NAME='${TPU_NAME}' must be lowercase letters, digits and dashes"
[[ "${REMOTE_DIR}" =~ ${_plain_word} && "${REMOTE_DIR}" != /* ]] || die "REMOTE_DIR='${REMOTE_DIR}' must be a plain path relative to \$HOME"
[[ "${RUN_NAME}" =~ ${_plain_word} ]] || die "RUN_NAME='${RUN_NAME}' must be a single plain word"
[[ "${CONFIG}" =~ ${_plain_word} ]] || die "CONFIG='${CONFIG}' must be a plain path relative to the repository"
[[ -f "${REPO_ROOT}/${CONFIG}" || -n "${REPO_URL}" ]] || die "CONFIG=${CONFIG} not found in ${REPO_ROOT}"
command -v "${GCLOUD}" >/dev/null 2>&1 || die "'${GCLOUD}' not found on PATH (install the Google Cloud SDK or set GCLOUD)"

if [[ -n "${GCS_BUCKET}" ]]; then
  GCS_PREFIX="gs://${GCS_BUCKET#gs://}"
  GCS_PREFIX="${GCS_PREFIX%/}/lazarus_jax/${TPU_NAME}/${RUN_NAME}"
else
  GCS_PREFIX=""
fi

# More than 8 in the type's name (TensorCores for v2-v4/v5p, chips for v5e/v6e) is more than one host.
_type_size="${ACCELERATOR_TYPE##*-}"
if [[ "${_type_size}" =~ ^[0-9]+$ && "${_type_size}" -gt 8 ]]; then MULTI_HOST=1; else MULTI_HOST=0; fi
# The workdir. Every host of a slice must see the same checkpoints (orbax writes each host's shards and
# process 0 the metadata), and a preempted VM loses its disk: a multi-host job defaults to the bucket.
WORKDIR_PROBLEM=""
if [[ -z "${WORKDIR:-}" ]]; then
  if [[ "${MULTI_HOST}" == 1 && -n "${GCS_PREFIX}" ]]; then
    WORKDIR="${GCS_PREFIX}/workdir"
  elif [[ "${MULTI_HOST}" == 1 ]]; then
    WORKDIR_PROBLEM="${ACCELERATOR_TYPE} has more than one host and a local WORKDIR on each is not shared storage: set GCS_BUCKET=<bucket> (the workdir becomes gs://<bucket>/lazarus_jax/${TPU_NAME}/${RUN_NAME}/workdir) or WORKDIR=gs://..."
    WORKDIR=""
  else
    # Literal $HOME: expanded by the worker's shell, not here.
    # shellcheck disable=SC2016
    WORKDIR='$HOME/'"${REMOTE_DIR}/runs/${RUN_NAME}"
  fi
fi
[[ -z "${WORKDIR}" || "${WORKDIR}" =~ ^(\$HOME/)?[A-Za-z0-9_./:@%+=,-]+$ ]] || die "WORKDIR='${WORKDIR}' must be a plain path (absolute, \$HOME/..., or gs://...)"

# need_workdir: called by the scripts that use WORKDIR (train, collect, run_all before it creates anything).
need_workdir() { [[ -z "${WORKDIR_PROBLEM}" ]] || die "${WORKDIR_PROBLEM}"; }

# Paths on the workers (the ssh command runs in $HOME).
# shellcheck disable=SC2016
REMOTE_ROOT='$HOME/'"${REMOTE_DIR}"
REMOTE_RUN="bash \"${REMOTE_ROOT}/bin/remote_run.sh\""

read -r -a _ssh_extra <<<"${SSH_FLAGS}"
TPU_FLAGS=(--project="${PROJECT}" --zone="${ZONE}")
SSH_COMMON=("${TPU_FLAGS[@]}" --strict-host-key-checking=no ${_ssh_extra[@]+"${_ssh_extra[@]}"})

# gcloud with the command echoed to stderr first.
gcloud_run() {
  log "+ ${GCLOUD} $*"
  "${GCLOUD}" "$@"
}

# The TPU VM's state (READY, CREATING, PREEMPTED, ...), or empty when it does not exist.
tpu_state() {
  "${GCLOUD}" compute tpus tpu-vm describe "${TPU_NAME}" "${TPU_FLAGS[@]}" \
    --format='value(state)' 2>/dev/null || true
}

# tpu_ssh WORKER COMMAND: run COMMAND (a shell string) on one worker or on all.
tpu_ssh() {
  local worker="$1" command="$2"
  gcloud_run compute tpus tpu-vm ssh "${TPU_NAME}" "${SSH_COMMON[@]}" \
    --ssh-flag=-oServerAliveInterval=60 --worker="${worker}" --command="${command}"
}

# tpu_scp WORKER ARGS...: gcloud compute tpus tpu-vm scp with the common flags.
tpu_scp() {
  local worker="$1"
  shift
  gcloud_run compute tpus tpu-vm scp "${SSH_COMMON[@]}" --worker="${worker}" "$@"
}

# quote_words WORD...: shell-quote each word for a remote command line.
quote_words() {
  local out="" word
  for word in "$@"; do
    out+="$(printf '%q' "${word}") "
  done
  printf '%s' "${out% }"
}

# The workdir as it appears in a remote command (double-quoted so $HOME expands there).
remote_workdir() { printf '"%s"' "${WORKDIR}"; }
