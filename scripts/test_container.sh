#!/usr/bin/env bash
# Builds the container images and runs the compose cluster in real
# containers, with podman 4.3 from Debian 12, then removes all it made.
#
#   scripts/test_container.sh [--keep-images]
#
# What it does, in order (each step bounded in time; the first failure ends
# the run, and everything made is removed on any exit):
#
#  1. installs what is missing from Debian's archive: podman, runc, netavark,
#     aardvark-dns, iptables, debootstrap, docker-compose (1.29),
#     podman-compose (1.0.3); the engine runs with docker/containers.conf
#     (CONTAINERS_CONF), /etc/containers stays as it is;
#  2. takes the base image debian:bookworm-slim from the engine's store or a
#     registry, and where neither has it makes one with
#     docker/make_base_image.sh (debootstrap, 1 to 3 minutes);
#  3. checks what the build context holds (.dockerignore), then builds the
#     shard and worker images (docker/Dockerfile; the first build compiles
#     ps_server and psctl: about 6 minutes of 2 cores, while the worker's
#     Python packages are installed);
#  4. checks both images: they run as uid 10001, every shared library their
#     programs load resolves (ldd), the shard image has no Python, the worker
#     imports psclient.torch and stops at once on SIGTERM; one shard answers
#     its health check, from the host's loopback too, and stops with exit 0
#     and a final checkpoint; a shard whose checkpoint folder it cannot write
#     (a root-owned bind mount) is refused (see PS_STRICT_CHECKPOINT_DIR);
#  5. runs docker/compose.yaml (2 shards, 2 workers) with docker-compose 1.29
#     on podman's Docker API: podman without systemd runs no health checks,
#     so this script runs them (`podman healthcheck run`) once it has seen
#     that the health-gated workers wait; changes the learning rate with
#     `psctl lr set` while the workers train; checks that both workers
#     finish, that the shards stop with exit 0 and leave a final checkpoint
#     in their volumes;
#  6. starts the shards again from those volumes with podman-compose 1.0.3
#     and checks that they loaded the checkpoint: the variables' steps and
#     the learning rate set in 5 are back; stops them with exit 0;
#  7. removes the containers, volumes, network, images (with their build
#     layers) and base image that it made, and its temporary folder.
#
# --keep-images keeps the images and build layers (a second run then
# builds in seconds); containers, volumes and the rest still go.
#
# Exit status: 0 when every check passed, or when no container can be run
# here at all (not root, or no podman and no way to install it; the reason
# is printed as "test_container: SKIP: ..."); 1 when a check failed.
#
# Environment:
#   PS_CONTAINER_TEST=skip        skip (exit 0, says so)
#   PS_BASE_IMAGE=NAME            build on this image instead of step 2's
#   PS_STRICT_CHECKPOINT_DIR=0|1  1: a shard that starts with a checkpoint
#                                 folder it cannot write, or exits 0 after its
#                                 final checkpoint failed, fails the test; 0:
#                                 reported only (ps_server still does both)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

keep_images=0
for arg in "$@"; do
  case $arg in
    --keep-images) keep_images=1 ;;
    *) echo "usage: $0 [--keep-images]" >&2; exit 2 ;;
  esac
done

started=$SECONDS
log() { printf 'test_container: [%4ds] %s\n' "$((SECONDS - started))" "$*"; }
skipped=0
skip() { log "SKIP: $*"; skipped=1; exit 0; }
fail() { log "FAIL: $*"; exit 1; }
notes=()
note() { log "NOTE: $*"; notes+=("$*"); }

# ------------------------------------------------------------ 1. the engine
[ "${PS_CONTAINER_TEST:-}" = skip ] && skip "PS_CONTAINER_TEST=skip"
[ "$(uname -s)" = Linux ] || skip "containers need Linux"
[ "$(id -u)" -eq 0 ] ||
  skip "needs root: rootful podman (rootless needs /etc/subuid ranges this script does not set up)"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/ps-container-test.XXXXXX")
chmod 755 "$work"
project="pstest$$"
shard_image="localhost/ps-test-shard:$project"
worker_image="localhost/ps-test-worker:$project"
images_before="$work/images_before"
api_pid=""
up_pid=""
pump_pid=""
shard_build=""
made_base=""
cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  log "cleaning up"
  command -v podman >/dev/null || { rm -rf "$work"; exit "$status"; }
  # Background jobs of this script, and what they run (a shell function's
  # subshell does not pass the signal on); disowned first, so that bash does
  # not report them as "Terminated".
  stop_jobs "$pump_pid" "$up_pid" "$shard_build"
  # Every container, volume and network of this run is named after $project.
  for c in $(podman ps -a -q --filter "name=^$project" 2>/dev/null); do
    podman rm -f -v -t 0 "$c" >/dev/null 2>&1
  done
  for v in $(podman volume ls -q --filter "name=^${project}_" 2>/dev/null); do
    podman volume rm -f "$v" >/dev/null 2>&1
  done
  podman network rm -f "${project}_default" >/dev/null 2>&1
  stop_jobs "$api_pid"
  if [ "$keep_images" -eq 0 ] && [ -f "$images_before" ]; then
    # Every image that was not there at the start: ours, their build layers,
    # and a base image made or pulled here.
    podman images -a -q --no-trunc 2>/dev/null | sort -u |
      comm -13 "$images_before" - | xargs -r podman rmi -f >/dev/null 2>&1
    [ -n "$made_base" ] && podman rmi -f "$made_base" >/dev/null 2>&1
  fi
  umount_under "$work"
  rm -rf --one-file-system "$work"
  if [ "${#notes[@]}" -gt 0 ]; then
    log "notes:"
    printf '  - %s\n' "${notes[@]}"
  fi
  if [ "$skipped" -eq 1 ]; then
    log "skipped"
  elif [ "$status" -eq 0 ]; then
    log "PASS in $((SECONDS - started)) s"
  else
    log "FAILED (exit $status) after $((SECONDS - started)) s"
  fi
  exit "$status"
}
# Ends the background jobs $@ (empty ones skipped) and their children,
# waiting up to 10 s for each.
stop_jobs() {
  local pid
  for pid in "$@"; do
    [ -n "$pid" ] || continue
    pkill -P "$pid" 2>/dev/null
    disown "$pid" 2>/dev/null
    kill "$pid" 2>/dev/null
  done
  for pid in "$@"; do
    [ -n "$pid" ] || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
}
umount_under() {
  awk -v dir="$1/" 'index($2, dir) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

packages=(podman runc netavark aardvark-dns iptables debootstrap docker-compose podman-compose)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || skip "no apt-get to install ${missing[*]}"
  log "installing ${missing[*]}"
  if ! { apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           "${missing[@]}"; } >"$work/apt.log" 2>&1; then
    tail -n 20 "$work/apt.log"
    command -v podman >/dev/null || skip "podman cannot be installed (see above)"
    fail "cannot install ${missing[*]} (see above)"
  fi
fi


# The project's engine settings; default_ulimits lowered in a copy where this
# machine's hard limits are lower than the file's.
conf="$repo/docker/containers.conf"
hard_nofile=$(ulimit -Hn)
hard_nproc=$(ulimit -Hu)
adjusted=$(awk -v nofile="$hard_nofile" -v nproc="$hard_nproc" '
  match($0, /"(nofile|nproc)=[0-9]+:[0-9]+"/) {
    entry = substr($0, RSTART + 1, RLENGTH - 2); split(entry, kv, "[=:]")
    limit = (kv[1] == "nofile") ? nofile : nproc
    if (limit != "unlimited" && kv[2] + 0 > limit + 0) {
      sub(/"(nofile|nproc)=[0-9]+:[0-9]+"/, "\"" kv[1] "=" limit ":" limit "\"")
      changed = 1
    }
  }
  { print }
  END { exit changed ? 0 : 1 }' "$conf") && {
  printf '%s\n' "$adjusted" >"$work/containers.conf"
  conf="$work/containers.conf"
  log "default_ulimits lowered to this machine's hard limits (nofile $hard_nofile, nproc $hard_nproc)"
}
export CONTAINERS_CONF=$conf

# Only what this run makes is removed at the end: images are told apart by
# their ids, taken now.
podman images -a -q --no-trunc 2>/dev/null | sort -u >"$images_before" ||
  fail "podman does not start: $(podman info 2>&1 | tail -n 3)"
backend=$(podman info --format '{{.Host.NetworkBackend}}')
[ "$backend" = netavark ] ||
  fail "podman uses the $backend network backend, not netavark: it chose CNI before docker/containers.conf was used (podman system reset clears that)"


log "podman $(podman version --format '{{.Client.Version}}'), $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /'), podman-compose $(dpkg-query -W -f='${Version}' podman-compose); storage $(podman info --format '{{.Store.GraphDriverName}}')"

# Starts container $1 in the background: podman run -d --name $1 "${@:2}".
# podman's complaints that it cannot reach systemd to time health checks
# are expected here (see step 5) and left out.
start() {
  local name=$1; shift
  if ! podman run -d --name "$name" "$@" >/dev/null 2>"$work/start.log"; then
    cat "$work/start.log"
    fail "podman run $name"
  fi
  grep -v "unable to get systemd connection" "$work/start.log" >&2 || true
}

# Stops container $1 as compose would (SIGTERM, SIGKILL after 60 s).
stop_container() {
  timeout 90 podman stop -t 60 "$1" >/dev/null 2>"$work/stop.log" ||
    { cat "$work/stop.log"; fail "podman stop $1"; }
}

# Runs "$@" with a time limit, printing its output only when it fails.
quiet() {
  local seconds=$1 out="$work/quiet.log"; shift
  if ! timeout -k 10 "$seconds" "$@" >"$out" 2>&1; then
    tail -n 40 "$out"
    return 1
  fi
}

# ----------------------------------------------------------- 2. base image
base=${PS_BASE_IMAGE:-}
if [ -z "$base" ]; then
  if podman image exists debian:bookworm-slim; then
    base=debian:bookworm-slim
  elif timeout 120 podman pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
    base=docker.io/library/debian:bookworm-slim
    made_base=$base
    log "pulled $base"
  else
    base="localhost/ps-test-base:$project"
    log "no debian:bookworm-slim to pull: making $base with docker/make_base_image.sh"
    t=$SECONDS
    quiet 900 sh docker/make_base_image.sh podman "$base" || fail "make_base_image.sh"
    made_base=$base
    log "base image made in $((SECONDS - t)) s"
  fi
fi
log "base image: $base"

# ------------------------------------------------ 3. build context, images
# The context the engine sends for the repository root, with decoys for
# what must stay out of it: token files, .git, build trees, generated stubs.
context="$work/context"
mkdir -p "$context"
git ls-files -z --cached --others --exclude-standard 2>/dev/null |
  xargs -0 -r cp --parents -t "$context" 2>/dev/null || true
[ -f "$context/.dockerignore" ] || cp .dockerignore "$context/"
for decoy in docker/secrets/worker_tokens docker/k8s/secrets/admin_tokens .git/config \
             build/CMakeCache.txt out/result.txt client/python/psclient/_proto/ps_pb2.py \
             client/python/psclient/__pycache__/client.cpython-311.pyc; do
  mkdir -p "$context/$(dirname "$decoy")"
  echo decoy >"$context/$decoy"
done
printf 'FROM %s\nCOPY . /context\n' "$base" >"$work/Containerfile.context"
quiet 300 podman build -q -f "$work/Containerfile.context" -t "localhost/ps-test-context:$project" \
  "$context" || fail "building the context listing"
listing=$(podman run --rm --entrypoint find "localhost/ps-test-context:$project" /context -type f)
podman rmi -f "localhost/ps-test-context:$project" >/dev/null
for decoy in /context/docker/secrets/ /context/docker/k8s/secrets/ /context/.git/ \
             /context/build/ /context/out/ /context/client/python/psclient/_proto/ \
             /__pycache__/; do
  if grep -qF "$decoy" <<<"$listing"; then
    fail "the build context holds $decoy: $(grep -F "$decoy" <<<"$listing" | head -n 3 | tr '\n' ' ')"
  fi
done
for needed in CMakeLists.txt scripts/build.sh server/ps_server_main.cc docker/entrypoint.sh \
              docker/train_worker.py client/python/psclient/torch.py; do
  grep -qx "/context/$needed" <<<"$listing" || fail "the build context lacks $needed"
done
log "build context: $(wc -l <<<"$listing") files, no tokens, .git, build trees or stubs"
rm -rf "$context"

# The shard image (and the build stage, which compiles) and worker-base
# (mostly PyTorch's download and unpacking) at the same time, then the
# worker image from worker-base and the build stage's stubs, both cached.
# podman build of docker/Dockerfile's stage $1 (more options after it), its
# output in $work/build-$1.log; at most 40 minutes.
build() {
  local target=$1; shift
  timeout -k 10 2400 podman build --format docker --layers --build-arg "BASE_IMAGE=$base" \
    -f docker/Dockerfile --target "$target" "$@" . >"$work/build-$target.log" 2>&1
}
build_failed() { tail -n 40 "$work/build-$1.log"; fail "building $1"; }
image_size() { echo "$(( $(podman image inspect --format '{{.Size}}' "$1") / 1000000 )) MB"; }
t=$SECONDS
log "building the shard image and, meanwhile, worker-base"
build shard -t "$shard_image" &
shard_build=$!
build worker-base || build_failed worker-base
log "worker-base built in $((SECONDS - t)) s"
wait "$shard_build" || build_failed shard
shard_build=""
log "shard image built in $((SECONDS - t)) s: $(image_size "$shard_image")"
t=$SECONDS
build worker -t "$worker_image" || build_failed worker
log "worker image built in $((SECONDS - t)) s: $(image_size "$worker_image")"

# --------------------------------------------------------- 4. image checks
for image in "$shard_image" "$worker_image"; do
  user=$(podman image inspect --format '{{.Config.User}}' "$image")
  [ "$user" = "10001:10001" ] || fail "$image runs as '$user', not 10001:10001"
  uid=$(podman run --rm --no-healthcheck --entrypoint id "$image" -u)
  [ "$uid" = 10001 ] || fail "$image runs as uid $uid"
done
log "both images run as uid 10001"

ldd_out=$(podman run --rm --no-healthcheck --entrypoint ldd "$shard_image" /usr/local/bin/ps_server /usr/local/bin/psctl)
! grep -q "not found" <<<"$ldd_out" || fail "shard image: $(grep "not found" <<<"$ldd_out")"
if podman run --rm --no-healthcheck --entrypoint sh "$shard_image" -c 'ls /usr/bin/python3*' >/dev/null 2>&1; then
  fail "the shard image holds Python"
fi
health=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$shard_image")
grep -q psctl <<<"$health" || fail "the shard image has no HEALTHCHECK: $health"
log "shard image: every library of ps_server and psctl resolves, no Python, HEALTHCHECK kept"

# Every compiled Python module and library the worker's packages hold.
ldd_out=$(podman run --rm --entrypoint sh "$worker_image" -c \
  'find /usr/lib/python3/dist-packages /usr/lib/x86_64-linux-gnu /opt/ps/python -name "*.so*" -type f |
   xargs ldd 2>&1 | grep "not found" || true')
[ -z "$ldd_out" ] || fail "worker image: $(head -n 5 <<<"$ldd_out")"
versions=$(podman run --rm "$worker_image" python3 -c '
import grpc, numpy, torch
import psclient, psclient.torch
print(f"torch {torch.__version__}, numpy {numpy.__version__}, grpcio {grpc.__version__}")')
podman run --rm "$worker_image" python3 /opt/ps/examples/train_worker.py --help >/dev/null ||
  fail "train_worker.py --help fails in the worker image"
log "worker image: every library resolves, psclient.torch imports ($versions)"

# SIGTERM stops a worker at once (it is PID 1): it retries an unreachable
# shard, so it would otherwise run until the stop timeout's SIGKILL.
start "$project-sigterm" "$worker_image" python3 /opt/ps/examples/train_worker.py \
  --servers=127.0.0.1:9
sleep 3
t=$SECONDS
podman stop -t 30 "$project-sigterm" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$project-sigterm")
if [ "$code" != 143 ] || [ $((SECONDS - t)) -ge 10 ]; then
  fail "worker on SIGTERM: exit $code after $((SECONDS - t)) s (want 143 at once)"
fi
podman rm -f -v "$project-sigterm" >/dev/null 2>&1
log "a worker stops on SIGTERM at once (exit 143)"

# Runs a health check of container $1 as the engine would; 0 when healthy.
health_check() { podman healthcheck run "$1" >/dev/null 2>&1; }
health_status() { podman inspect --format '{{.State.Healthcheck.Status}}' "$1" 2>/dev/null; }
# Waits up to $2 seconds for container $1 to be healthy, running its check.
wait_healthy() {
  local deadline=$((SECONDS + $2))
  until health_check "$1"; do
    [ "$(podman inspect --format '{{.State.Running}}' "$1")" = true ] ||
      fail "$1 stopped: $(podman logs --tail 20 "$1" 2>&1)"
    [ "$SECONDS" -lt "$deadline" ] || fail "$1 not healthy after $2 s: $(podman logs --tail 20 "$1" 2>&1)"
    sleep 1
  done
}
exit_code() { podman inspect --format '{{.State.ExitCode}}' "$1"; }
# Whether container $1's log holds the text $2. (Read whole first: `podman
# logs | grep -q` fails under pipefail when grep stops reading early.)
logs_have() { grep -qF -- "$2" <<<"$(podman logs "$1" 2>&1)"; }
# Reads a `psctl --json` answer from stdin (after whatever a compose tool
# printed before it) and prints "rates": the shards' learning rates, or
# "steps": each variable's lowest and highest block step.
psctl_answer() {
  python3 -c '
import json, sys
text = sys.stdin.read()
start = text.find("{")
answer = json.JSONDecoder().raw_decode(text[start:])[0] if start >= 0 else {}
if sys.argv[1] == "rates":
    print(" ".join(sorted({str(s.get("config", {}).get("learning_rate"))
                           for s in answer.get("shards", [])})))
else:
    print(", ".join("%s steps %s..%s" % (v["name"], v["min_step"], v["max_step"])
                    for v in answer.get("variables", [])))
' "$1"
}

# One shard from the image's defaults, published on the host's loopback.
single="$project-single"
start "$single" -p 127.0.0.1::50051 "$shard_image" --num_shards=1 \
  --checkpoint_dir=/var/lib/ps/checkpoints
wait_healthy "$single" 60
port=$(podman port "$single" 50051/tcp)
port=${port%%$'\n'*}
port=${port##*:}
podman run --rm --no-healthcheck --network host --entrypoint psctl "$shard_image" \
  --servers="127.0.0.1:$port" --timeout_s=5 health >/dev/null ||
  fail "psctl health through the published port 127.0.0.1:$port"
stop_container "$single"
[ "$(exit_code "$single")" = 0 ] || fail "$single exited $(exit_code "$single")"
logs_have "$single" "at /var/lib/ps/checkpoints/ckpt-" ||
  fail "$single wrote no final checkpoint: $(podman logs --tail 10 "$single" 2>&1)"
log "one shard: healthy (podman healthcheck and psctl on 127.0.0.1:$port), SIGTERM -> final checkpoint, exit 0"

# A checkpoint folder the shard cannot write: a root-owned bind mount.
# ps_server must refuse to start (non-zero exit, naming the folder) rather
# than take pushes that its next restart would lose.
mkdir -m 755 "$work/root-owned"
rootdir="$project-rootdir"
start "$rootdir" -v "$work/root-owned:/var/lib/ps/checkpoints" "$shard_image" \
  --num_shards=1 --checkpoint_dir=/var/lib/ps/checkpoints
for _ in $(seq 10); do
  [ "$(podman inspect --format '{{.State.Running}}' "$rootdir")" = true ] || break
  sleep 1
done
[ "$(podman inspect --format '{{.State.Running}}' "$rootdir")" != true ] ||
  fail "ps_server started with a checkpoint folder it cannot write (root-owned bind mount)"
code=$(exit_code "$rootdir")
[ "$code" != 0 ] || fail "$rootdir stopped at start with exit 0"
logs_have "$rootdir" "checkpoint folder /var/lib/ps/checkpoints cannot be used" ||
  fail "$rootdir exited $code without naming the folder: $(podman logs --tail 5 "$rootdir" 2>&1)"
log "a shard refuses a checkpoint folder it cannot write: exit $code"
[ -z "$(ls -A "$work/root-owned")" ] || fail "something was written into the root-owned folder"
podman rm -f -v "$single" "$rootdir" >/dev/null 2>&1

# ------------------------------------------- 5. compose: docker-compose 1.29
sh docker/make_secrets.sh "$work/secrets" >/dev/null
free_ports=$(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
read -r PS_SHARD0_PORT PS_SHARD1_PORT PS_METRICS0_PORT PS_METRICS1_PORT <<<"$free_ports"
export PS_SHARD0_PORT PS_SHARD1_PORT PS_METRICS0_PORT PS_METRICS1_PORT
export PS_SHARD_IMAGE=$shard_image PS_WORKER_IMAGE=$worker_image PS_BASE_IMAGE=$base
export PS_SECRETS_DIR="$work/secrets"
compose_args=(-p "$project" -f docker/compose.yaml)
shards=("${project}_shard-0_1" "${project}_shard-1_1")
workers=("${project}_worker-0_1" "${project}_worker-1_1")

# podman's Docker API, for docker-compose.
podman system service --time=0 "unix://$work/podman.sock" >"$work/api.log" 2>&1 &
api_pid=$!
for _ in $(seq 50); do [ -S "$work/podman.sock" ] && break; sleep 0.2; done
[ -S "$work/podman.sock" ] || fail "podman system service did not start: $(cat "$work/api.log")"
dc() { DOCKER_HOST="unix://$work/podman.sock" timeout -k 10 "${DC_TIMEOUT:-180}" docker-compose "${compose_args[@]}" "$@"; }

log "compose (docker-compose): up shard-0 shard-1 worker-0 worker-1"
dc up -d --no-build shard-0 shard-1 worker-0 worker-1 >"$work/up.log" 2>&1 &
up_pid=$!
# docker-compose starts the shards, then waits for them to be healthy
# before it creates the workers. Does this engine run health checks?
for _ in $(seq 60); do
  [ "$(podman inspect --format '{{.State.Running}}' "${shards[1]}" 2>/dev/null)" = true ] && break
  sleep 1
done
sleep 15
statuses="$(health_status "${shards[0]}") $(health_status "${shards[1]}")"
if [ "$statuses" = "healthy healthy" ]; then
  log "the engine ran the shards' health checks itself"
elif podman container exists "${workers[0]}" || podman container exists "${workers[1]}"; then
  fail "the workers were created before the shards were healthy (health: $statuses)"
else
  note "podman without systemd runs no health checks: after 15 s the shards are '$statuses' and docker-compose holds the health-gated workers; this script runs the checks (podman healthcheck run), as a systemd timer would"
fi
# The checks every 5 s, as the compose file's interval says, until step 6.
(
  while true; do
    for c in "${shards[@]}"; do health_check "$c" || true; done
    sleep 5
  done
) 2>>"$work/pump.log" &
pump_pid=$!
for c in "${shards[@]}"; do wait_healthy "$c" 60; done
wait "$up_pid" || { cat "$work/up.log"; fail "docker-compose up"; }
log "shards healthy, workers started"

# The live change: once both workers have trained a while, while they run.
deadline=$((SECONDS + 120))
until logs_have "${workers[0]}" "step 200 " &&
      logs_have "${workers[1]}" "step 200 "; do
  [ "$SECONDS" -lt "$deadline" ] || fail "workers made no progress: $(podman logs --tail 5 "${workers[0]}" 2>&1)"
  sleep 1
done
dc run --rm -T psctl lr set 0.001 >"$work/lr.log" 2>&1 || { cat "$work/lr.log"; fail "psctl lr set"; }
for w in "${workers[@]}"; do
  [ "$(podman inspect --format '{{.State.Running}}' "$w")" = true ] ||
    fail "$w had finished before the learning rate changed: the change was not live"
done
rates=$(dc run --rm -T psctl --json optimizer get 2>/dev/null | psctl_answer rates)
[ "$rates" = "0.001" ] || fail "learning rates after psctl lr set: $rates"
log "psctl lr set 0.001 while both workers trained: every shard has it"

for w in "${workers[@]}"; do
  timeout 300 podman wait "$w" >/dev/null || fail "$w did not finish in 300 s"
  [ "$(exit_code "$w")" = 0 ] || fail "$w exited $(exit_code "$w"): $(podman logs --tail 10 "$w" 2>&1)"
  grep "done after" <<<"$(podman logs "$w" 2>&1)" | sed "s/^/    /"
done

steps_trained=$(dc run --rm -T psctl --json vars 2>/dev/null | psctl_answer steps)
[ -n "$steps_trained" ] || fail "psctl vars after training"
log "trained: $steps_trained"

# A cluster checkpoint (shard 0 coordinates it over --peers): only a
# checkpoint that every part completed is loaded at the next start.
dc run --rm -T psctl checkpoint >"$work/checkpoint.log" 2>&1 ||
  { cat "$work/checkpoint.log"; fail "psctl checkpoint"; }
log "psctl checkpoint: $(head -1 "$work/checkpoint.log")"

# Stop: SIGTERM, each shard writes its final checkpoint part and exits 0.
DC_TIMEOUT=180 dc stop >/dev/null 2>&1 || fail "docker-compose stop"
for i in 0 1; do
  c=${shards[$i]}
  [ "$(exit_code "$c")" = 0 ] || fail "$c exited $(exit_code "$c"): $(podman logs --tail 10 "$c" 2>&1)"
  logs_have "$c" "final checkpoint" || fail "$c logged no final checkpoint"
  volume=$(podman volume inspect --format '{{.Mountpoint}}' "${project}_checkpoints-$i")
  complete=$(find "$volume" -mindepth 1 -maxdepth 1 ! -name '*.tmp' | wc -l)
  [ "$complete" -gt 0 ] || fail "volume ${project}_checkpoints-$i holds no checkpoint"
  owner=$(stat -c %u "$volume")
  [ "$owner" = 10001 ] || fail "volume ${project}_checkpoints-$i is owned by uid $owner"
done
log "shards stopped: exit 0, a final checkpoint in each volume"
dc rm -f >/dev/null 2>&1 || fail "docker-compose rm"

# ------------------------------------------- 6. restart with podman-compose
pc() { timeout -k 10 180 podman-compose "${compose_args[@]}" "$@"; }
log "compose (podman-compose): up shard-0 shard-1 from the volumes"
pc up -d shard-0 shard-1 >"$work/pc-up.log" 2>&1 || { cat "$work/pc-up.log"; fail "podman-compose up"; }
for c in "${shards[@]}"; do
  wait_healthy "$c" 60
  logs_have "$c" "loaded checkpoint" ||
    fail "$c did not load its checkpoint: $(podman logs --tail 10 "$c" 2>&1)"
done
pc_psctl() { pc run --rm --no-deps -T psctl --json "$@" 2>/dev/null; }
rates=$(pc_psctl optimizer get | psctl_answer rates)
[ "$rates" = "0.001" ] || fail "learning rate after the restart: $rates (the checkpoint's is 0.001)"
steps_loaded=$(pc_psctl vars | psctl_answer steps)
[ "$steps_loaded" = "$steps_trained" ] ||
  fail "after the restart: $steps_loaded; before the stop: $steps_trained"
log "restarted shards loaded their checkpoints: variables, steps and learning rate 0.001 are back"
timeout 200 podman-compose "${compose_args[@]}" stop -t 60 >/dev/null 2>&1 || fail "podman-compose stop"
for c in "${shards[@]}"; do
  [ "$(exit_code "$c")" = 0 ] || fail "$c exited $(exit_code "$c") at the second stop"
done
log "shards stopped again: exit 0"
