#!/usr/bin/env bash
# Refresh requirements/runtime.lock and requirements/dev.lock: every package at an exact version with its
# hashes, resolved by uv for this machine's Python and platform (written into each lock's header, which
# scripts/setup.sh checks). Run after changing pyproject.toml's dependencies, then commit both locks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$ROOT/requirements"
PY="${PYTHON:-python3}"
PYV="$("$PY" -c 'import platform; print(platform.python_version())')"
PLAT="$("$PY" -c 'import platform, sys; print(f"{sys.platform}-{platform.machine()}")')"
# uv at requirements/uv.txt's version, the one setup.sh installs with, outside the project's venv; its hash
# is the linux-x86_64 wheel's, so on another platform the version alone
source "$ROOT/scripts/uv.sh"
[ "$PLAT" = linux-x86_64 ] || export LLMPIPE_UV_UNHASHED=1
llmpipe_uv || exit 1
# torch's CPU build is a local wheel (pip's find-links); outside this machine, point LLMPIPE_FIND_LINKS at yours
LINKS="${LLMPIPE_FIND_LINKS:-/opt/wheels}"
COMPILE=("$UV" pip compile --quiet --generate-hashes --python-version "$PYV" --override "$REQ/overrides.txt"
    --custom-compile-command "bash scripts/lock.sh")
[ -d "$LINKS" ] && COMPILE+=(--find-links "$LINKS")
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
"${COMPILE[@]}" --no-deps "$REQ/no-deps.in" -o "$TMP/no-deps.lock"
# dev first; the runtime lock takes dev's versions, so the two never disagree on a shared package
"${COMPILE[@]}" "$ROOT/pyproject.toml" --extra dev -o "$TMP/dev.body"
grep -E '^[A-Za-z0-9]' "$TMP/dev.body" | sed 's/ .*//' > "$TMP/dev.pins"
"${COMPILE[@]}" "$ROOT/pyproject.toml" --constraint "$TMP/dev.pins" -o "$TMP/runtime.body"
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
