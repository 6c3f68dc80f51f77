# Sourced by scripts/setup.sh and scripts/lock.sh. llmpipe_uv sets UV to the path of uv at requirements/uv.txt's
# version, installing it first when missing; it returns 1, having said why on stderr, when it cannot.
# uv lives outside the project's venv (the environment must not depend on the tool that installs it), one
# directory per version under LLMPIPE_LOCK_TOOLS, shared by every clone on the machine: it is built in a
# directory of its own and moved into place in one step, so a set-up running beside another never sees half
# of one (uv is one static binary, so the moved venv's bin/uv still runs).
LLMPIPE_UV_TOOLS="${LLMPIPE_LOCK_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/llmpipe/lock-tools}"
LLMPIPE_UV_REQ="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/requirements/uv.txt"
LLMPIPE_UV_VERSION="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$LLMPIPE_UV_REQ")"
# `uv --version` prints "uv 0.13.9 (x86_64-unknown-linux-gnu)": the second word is the version
llmpipe_uv_in() { [ "$("$1/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" = "$LLMPIPE_UV_VERSION" ]; }
llmpipe_uv() {
  local dest="$LLMPIPE_UV_TOOLS/uv-$LLMPIPE_UV_VERSION" build
  if ! llmpipe_uv_in "$dest"; then
    mkdir -p "$LLMPIPE_UV_TOOLS" && build="$(mktemp -d "$LLMPIPE_UV_TOOLS/.build-XXXXXX")" || {
      echo "[uv] cannot write to $LLMPIPE_UV_TOOLS (LLMPIPE_LOCK_TOOLS)" >&2; return 1; }
    # hash-checked (requirements/uv.txt holds the linux-x86_64 wheel's hash); LLMPIPE_UV_UNHASHED=1, which
    # lock.sh sets on another platform only, takes the version alone
    if ! { "${PYTHON:-python3}" -m venv "$build" &&
           if [ "${LLMPIPE_UV_UNHASHED:-0}" = 1 ]; then
             "$build/bin/python" -m pip install -q --disable-pip-version-check "uv==$LLMPIPE_UV_VERSION"
           else
             "$build/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r "$LLMPIPE_UV_REQ"
           fi; } >&2; then
      rm -rf "$build"
      echo "[uv] could not install uv $LLMPIPE_UV_VERSION from $LLMPIPE_UV_REQ (the lines above say why)" >&2
      return 1
    fi
    if llmpipe_uv_in "$dest"; then
      rm -rf "$build"  # a set-up beside this one put it in place meanwhile: keep that one
    else
      # only a venv of ours (a broken one) is replaced; anything else there stays, and the check below says so
      if [ -f "$dest/pyvenv.cfg" ]; then rm -rf "$dest"; fi
      mv -T "$build" "$dest" 2>/dev/null || rm -rf "$build"
    fi
    [ -x "$dest/bin/uv" ] || { echo "[uv] $dest/bin/uv is missing after the install" >&2; return 1; }
  fi
  UV="$dest/bin/uv"
}
