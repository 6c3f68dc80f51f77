#!/usr/bin/env bash
# Set up (first time) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
apt_ok() { command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; }
# The dev extra's llama-cpp-python is an sdist that compiles llama.cpp (cmake, ninja, a C++ compiler);
# the installer (uv, else pip) caches the built wheel, so this costs minutes once per machine.
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null || ! command -v g++ >/dev/null; then
  if apt_ok; then
    mkdir -p .venv
    echo "[test] installing cmake, ninja and g++ to build llama.cpp for the GGUF test (log: .venv/apt-build.log)"
    { $SUDO apt-get install -y -q cmake ninja-build g++ || { $SUDO apt-get update -q && $SUDO apt-get install -y -q cmake ninja-build g++; }; } \
      > .venv/apt-build.log 2>&1 || echo "[test] could not install the build tools (see .venv/apt-build.log)"
  fi
fi
LLMPIPE_EXTRAS=dev source scripts/setup.sh
# The MLflow UI test drives Debian's Chromium headless (tests/integration/test_mlflow_ui.py). Install it with its
# driver when missing and apt is usable (root, or sudo without a password); otherwise that test skips.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if apt_ok; then
    echo "[test] installing Debian's chromium and chromium-driver for the MLflow UI test (log: .venv/apt.log)"
    { $SUDO apt-get install -y -q chromium chromium-driver || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver; }; } \
      > .venv/apt.log 2>&1 || echo "[test] could not install chromium (see .venv/apt.log); the MLflow UI test will skip"
  fi
fi
python -m pytest "$@"
