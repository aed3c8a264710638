#!/usr/bin/env bash
# Checks the lock annotations (ABSL_GUARDED_BY, ABSL_EXCLUSIVE_LOCKS_REQUIRED,
# ...) of every .cc file under server/ and common/ but the tests (which
# read internals to check them): Debian's clang runs
# -fsyntax-only -Wthread-safety over each, with the flags the build compiles
# it with (BUILD_DIR/compile_commands.json). GCC ignores the annotations, so
# this is the only check they get. Fails, printing clang's diagnostics, on
# any thread-safety warning; exits 77 (ctest's skip) where clang is missing.
#
#   scripts/check_thread_safety.sh [BUILD_DIR]   # default: build
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=$(realpath "${1:-${BUILD_DIR:-build}}")
root=$PWD

clang=""
for c in clang++ clang++-14; do
  if command -v "$c" >/dev/null; then
    clang=$(command -v "$c")
    break
  fi
done
if [ -z "$clang" ]; then
  echo "check_thread_safety: clang++ is not installed; skipped"
  exit 77
fi
db="$build_dir/compile_commands.json"
if [ ! -f "$db" ]; then
  echo "check_thread_safety: no $db (configure the build first)" >&2
  exit 1
fi

# One response file per source: its compile command less the compiler, the
# output and -c. clang reads response files with the quoting written here.
rsp_dir=$(mktemp -d)
trap 'rm -rf "$rsp_dir"' EXIT
python3 - "$db" "$root" "$rsp_dir" <<'EOF'
import json, os, shlex, sys

db, root, out = sys.argv[1:]
for n, entry in enumerate(json.load(open(db))):
    source = os.path.join(entry["directory"], entry["file"])
    rel = os.path.relpath(source, root)
    if (not rel.startswith(("server/", "common/")) or not rel.endswith(".cc")
            or rel.endswith("_test.cc")):
        continue
    args = entry.get("arguments") or shlex.split(entry["command"])
    kept, skip = [], True  # the compiler (a launcher never gets here)
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-o", "-MF", "-MT", "-MQ"):
            skip = True
        elif arg not in ("-c", entry["file"], source):
            kept.append(arg)
    kept.append(source)
    quoted = ['"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"'
              for a in kept]
    with open(os.path.join(out, f"{n:04d}.rsp"), "w") as f:
        f.write("\n".join(quoted) + "\n")
EOF

shopt -s nullglob
rsps=("$rsp_dir"/*.rsp)
if [ "${#rsps[@]}" -eq 0 ]; then
  echo "check_thread_safety: no server/ or common/ sources in $db" >&2
  exit 1
fi
# Only the thread-safety warnings, as errors: the build's own warnings are
# GCC's business, and flags GCC knows and clang does not are ignored.
export CLANG="$clang"
# shellcheck disable=SC2016  # $CLANG and $1 are the inner shell's
printf '%s\0' "${rsps[@]}" |
  xargs -0 -n 1 -P "$(nproc)" sh -c \
    '"$CLANG" "@$1" -fsyntax-only -Wno-everything -Wthread-safety \
       -Werror=thread-safety 2>"$1.err" || touch "$1.failed"' sh || true
failed=("$rsp_dir"/*.failed)
for f in "${rsps[@]}"; do
  [ -s "$f.err" ] && cat "$f.err"
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "check_thread_safety: ${#failed[@]} of ${#rsps[@]} files fail" >&2
  exit 1
fi
echo "check_thread_safety: ${#rsps[@]} files pass -Wthread-safety"
