#!/usr/bin/env bash
# Installs, from Debian 12's own archive, whatever the build, the tests and the
# main job need and this machine lacks. Downloads nothing else.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git clang clang-format shellcheck
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev
  libspdlog-dev libcpp-httplib-dev nlohmann-json3-dev openssl pybind11-dev python3-dev
  python3 python3-grpcio python3-protobuf python3-numpy python3-torch
  python3-sklearn python3-matplotlib python3-yaml
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_deps: everything is installed"
  exit 0
fi

echo "install_deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  "${missing[@]}"
