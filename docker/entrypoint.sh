#!/bin/sh
# The image's entrypoint: runs ps_server with the arguments given.
#
#   ps-entrypoint [PS_SERVER_FLAGS...]
#
# Every argument goes to ps_server unchanged, after two defaults suited to a
# container: --host=0.0.0.0 --port=50051. Flags given later win, so
# --port=7000 or --host=127.0.0.1 on the command line replace them.
#
# One value is understood here: --shard_index=from_hostname becomes
# --shard_index=N, where N is the number after the last '-' in the host name.
# A Kubernetes StatefulSet names its pods <name>-0, <name>-1, ... and sets the
# host name to the pod name, so each replica serves the shard of its ordinal.
#
# ps_server replaces this shell (exec), so it receives SIGTERM directly and
# writes its final checkpoint before the container stops.
set -eu

# Sets $ordinal from the host name, or exits.
ordinal_from_hostname() {
  # HOSTNAME is set in every container (Docker, Kubernetes); uname -n is the
  # same name where it is not.
  # shellcheck disable=SC3028
  host=${HOSTNAME:-$(uname -n)}
  ordinal=${host##*-}
  case $ordinal in
    '' | *[!0-9]*)
      echo "ps-entrypoint: --shard_index=from_hostname needs a host name" \
        "ending in -<ordinal> (a StatefulSet pod such as shard-0); got" \
        "'$host'" >&2
      exit 2
      ;;
  esac
  # "007" is 7: strip leading zeros but keep a lone 0.
  while [ "${#ordinal}" -gt 1 ] && [ "${ordinal#0}" != "$ordinal" ]; do
    ordinal=${ordinal#0}
  done
}

for arg do
  shift
  case $arg in
    --shard_index=from_hostname)
      ordinal_from_hostname
      arg="--shard_index=$ordinal"
      ;;
  esac
  set -- "$@" "$arg"
done

exec ps_server --host=0.0.0.0 --port=50051 "$@"
