#!/usr/bin/env bash
# The main job: installs what is missing, builds, then
#  1. trains a digits classifier on a 2-shard parameter server (loopback, sync
#     mode) with 2 Python workers, once per update rule, and ends with a table
#     and a plot of the loss curves under out/ (examples/train_digits.py);
#  2. trains a fastText-style classifier of Debian package sections (name and
#     short description from `apt-cache dumpavail`) on a 2^24 x 32 hashed
#     embedding held as a sparse table on 2 shards, with 2 async workers,
#     beside the same model trained locally with torch; it prints both
#     accuracies, the rows the shards created and the bytes per step, and
#     plots the training curves under out/ (examples/train_text.py).
# Arguments go to train_digits.py (see --help), e.g. --rule=adam or
# --steps=300; those after a `--` go to train_text.py, e.g. -- --workers=4.
set -euo pipefail
cd "$(dirname "$0")/.."
digits_args=()
text_args=()
while [ "$#" -gt 0 ]; do
  if [ "$1" = "--" ]; then
    shift
    text_args=("$@")
    break
  fi
  digits_args+=("$1")
  shift
done
bash scripts/install_deps.sh
bash scripts/build.sh ps_server psctl psclient_stubs psclient_core
export PS_BUILD_DIR="$PWD/${BUILD_DIR:-build}"
start=$SECONDS
echo "==== Part 1: digits, six update rules (sync) ===="
/usr/bin/python3 examples/train_digits.py "${digits_args[@]+"${digits_args[@]}"}"
echo
echo "==== Part 2: package sections from text, a remote embedding table (async) ===="
/usr/bin/python3 examples/train_text.py "${text_args[@]+"${text_args[@]}"}"
echo
echo "Main job: both parts trained in $((SECONDS - start)) s"
