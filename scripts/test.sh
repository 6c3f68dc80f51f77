#!/usr/bin/env bash
# Set up (first time) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
LLMPIPE_EXTRAS=dev source scripts/setup.sh
python -m pytest "$@"
