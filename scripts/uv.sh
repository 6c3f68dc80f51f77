# Sourced by scripts/setup.sh and scripts/lock.sh: llmpipe_uv puts uv at requirements/uv.txt's version in its
# own venv, outside the project's (the environment must not depend on the tool that installs it), and sets
# UV to its path; it returns 1, having said why on stderr, when it cannot.
LLMPIPE_UV_TOOLS="${LLMPIPE_LOCK_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/llmpipe/lock-tools}"
LLMPIPE_UV_VERSION="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../requirements/uv.txt")"
llmpipe_uv() {
  local tools="$LLMPIPE_UV_TOOLS" req
  req="$(dirname "${BASH_SOURCE[0]}")/../requirements/uv.txt"
  if [ "$("$tools/bin/uv" --version 2>/dev/null)" != "uv $LLMPIPE_UV_VERSION" ]; then
    # hash-checked where the lock's platform wheel is; LLMPIPE_UV_UNHASHED=1 (lock.sh on a new platform) takes the version alone
    { rm -rf "$tools" && "${PYTHON:-python3}" -m venv "$tools" &&
      if [ "${LLMPIPE_UV_UNHASHED:-0}" = 1 ]; then
        "$tools/bin/python" -m pip install -q --disable-pip-version-check "uv==$LLMPIPE_UV_VERSION"
      else
        "$tools/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r "$req"
      fi; } >&2 || { echo "[uv] could not install uv $LLMPIPE_UV_VERSION into $tools (requirements/uv.txt)" >&2; return 1; }
  fi
  UV="$tools/bin/uv"
}
