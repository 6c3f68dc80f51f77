#!/usr/bin/env bash
# Create .venv and install llmpipe with its dev extra. Idempotent: re-installs only when pyproject.toml
# changed. Sourced by demo.sh, test.sh and .ci/run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# LLMPIPE_EXTRAS=dev (set by test.sh) adds the test dependencies; the demo needs only the runtime ones.
EXTRAS="${LLMPIPE_EXTRAS:-}"
STAMP="$VENV/.llmpipe-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) extras=$EXTRAS"
# an install that already has the dev extra serves a runtime-only request too
if [ -z "$EXTRAS" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) extras=dev" ]; then
  WANT="$(cat "$STAMP")"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing llmpipe and its dependencies (about 2 minutes on a fresh machine; log: $VENV/install.log)"
  LOG="$VENV/install.log"
  PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
  {
    "${PIP[@]}" --upgrade pip &&
    # torch first, pinned: the CPU build of 2.13.0 lies on disk here; an open range pulls CUDA wheels.
    "${PIP[@]}" "torch==2.13.0" &&
    "${PIP[@]}" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  } > "$LOG" 2>&1 || { tail -40 "$LOG" >&2; echo "[setup] install failed (full log: $LOG)" >&2; exit 1; }
  "$VENV/bin/python" -c "import llmpipe, torch, prefect, dvc, mlflow, datasketch, tokenizers, pandas" \
    || { echo "[setup] install incomplete (log: $LOG)" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# Offline-friendly defaults: no telemetry, a generous start-up time for Prefect's ephemeral server.
export DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"
