#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (the README's second
# command, and what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" -j 2 --output-on-failure --timeout 600
