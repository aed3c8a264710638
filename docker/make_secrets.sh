#!/bin/sh
# Writes the token files that docker/compose.yaml mounts as secrets, once:
#
#   docker/make_secrets.sh [DIR]      # DIR defaults to docker/secrets
#
#   DIR/worker_tokens   a worker token (ps_server --worker_tokens_file)
#   DIR/admin_tokens    an admin token (ps_server --admin_tokens_file, and
#                       psctl --token_file)
#
# Each file holds one line, "<token> <label>": 32 random bytes from
# /dev/urandom in hex, then a label the shard logs instead of the token.
# Existing files are kept, so running it again changes nothing.
#
# Docker Compose (without Swarm) bind-mounts secret files with the host file's
# owner and mode, and the shards run as an unprivileged user (uid 10001), so
# the files are made readable by all local users: keep DIR on a machine
# whose other users may see the tokens, or chown the files to uid 10001 and
# make them 0400. The folder is ignored by git (docker/.gitignore).
set -eu

dir=${1:-$(dirname "$0")/secrets}
mkdir -p "$dir"

new_token() {
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}

for kind in worker admin; do
  file="$dir/${kind}_tokens"
  if [ -s "$file" ]; then
    echo "kept $file"
    continue
  fi
  (umask 022 && printf '%s %s\n' "$(new_token)" "compose-$kind" >"$file")
  echo "wrote $file"
done
