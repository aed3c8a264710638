#!/usr/bin/env bash
# The main job: installs what is missing, builds, then trains a digits
# classifier on a 2-shard parameter server (loopback, sync mode) with 2 Python
# workers, once per update rule, and ends with a table and a plot of the loss
# curves under out/. Arguments go to examples/train_digits.py (see --help),
# e.g. --rule=adam or --steps=300.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh ps_server psctl psclient_stubs psclient_core
export PS_BUILD_DIR="$PWD/${BUILD_DIR:-build}"
exec /usr/bin/python3 examples/train_digits.py "$@"
