#!/usr/bin/env bash
# Refresh requirements/runtime.lock and requirements/dev.lock: every package at an exact version with its
# hashes, resolved by uv for this machine's Python and platform (written into each lock's header, which
# scripts/setup.sh checks). Run after changing pyproject.toml's dependencies, then commit both locks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$ROOT/requirements"
PY="${PYTHON:-python3}"
UV_VERSION=0.13.9
# uv lives in its own venv, outside the project's (the lock must not depend on the tool that makes it)
TOOLS="${LLMPIPE_LOCK_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/llmpipe/lock-tools}"
if [ "$("$TOOLS/bin/uv" --version 2>/dev/null)" != "uv $UV_VERSION" ]; then
  "$PY" -m venv "$TOOLS" && "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
PYV="$("$PY" -c 'import platform; print(platform.python_version())')"
PLAT="$("$PY" -c 'import platform, sys; print(f"{sys.platform}-{platform.machine()}")')"
# torch's CPU build is a local wheel (pip's find-links); outside this machine, point LLMPIPE_FIND_LINKS at yours
LINKS="${LLMPIPE_FIND_LINKS:-/opt/wheels}"
UV=("$TOOLS/bin/uv" pip compile --quiet --generate-hashes --python-version "$PYV" --override "$REQ/overrides.txt"
    --custom-compile-command "bash scripts/lock.sh")
[ -d "$LINKS" ] && UV+=(--find-links "$LINKS")
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
"${UV[@]}" --no-deps "$REQ/no-deps.in" -o "$TMP/no-deps.lock"
# dev first; the runtime lock takes dev's versions, so the two never disagree on a shared package
"${UV[@]}" "$ROOT/pyproject.toml" --extra dev -o "$TMP/dev.body"
grep -E '^[A-Za-z0-9]' "$TMP/dev.body" | sed 's/ .*//' > "$TMP/dev.pins"
"${UV[@]}" "$ROOT/pyproject.toml" --constraint "$TMP/dev.pins" -o "$TMP/runtime.body"
for kind in runtime dev; do
  {
    echo "# python: $PYV"
    echo "# platform: $PLAT"
    cat "$TMP/$kind.body"
    echo "# installed with --no-deps (requirements/no-deps.in)"
    grep -v '^#' "$TMP/no-deps.lock"
  } > "$TMP/$kind.lock"
  mv "$TMP/$kind.lock" "$REQ/$kind.lock"
  echo "[lock] $REQ/$kind.lock: $(grep -cE '^[A-Za-z0-9]' "$REQ/$kind.lock") packages"
done
