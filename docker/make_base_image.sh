#!/bin/sh
# Makes the base image that docker/Dockerfile builds on, for machines that
# cannot pull debian:bookworm-slim from a registry:
#
#   docker/make_base_image.sh ENGINE NAME     # e.g. podman localhost/debian-minbase:bookworm
#
# then build with --build-arg BASE_IMAGE=NAME. The image is Debian 12's
# minimal system (debootstrap --variant=minbase bookworm, about 80 MB,
# fetched from the Debian mirror this machine's apt already uses),
# with the slim image's dpkg rules that skip documentation, manual pages and
# translations in every package installed later. ENGINE is podman or
# docker; the script needs root (debootstrap) and the debootstrap package.
#
# The mirror is the first one that this machine's apt sources (one-line or
# deb822) list for bookworm; DEBIAN_MIRROR=URL chooses another. The image's
# own apt sources name the same mirror, for bookworm and bookworm-updates.
# Takes 1 to 3 minutes, mostly downloading.
set -eu

if [ "$#" -ne 2 ]; then
  echo "usage: $0 ENGINE NAME   (ENGINE: podman or docker)" >&2
  exit 2
fi
engine=$1
name=$2
suite=bookworm

# Prints the first mirror URI that apt's sources list for $suite.
mirror_from_apt_sources() {
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    # deb [options] URI SUITE COMPONENTS...
    awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$file"
  done
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    # Paragraphs of "Field: value" lines; one with Types: deb, our suite and
    # not Enabled: no.
    awk -v suite="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = uris = suites = ""; enabled = "yes"
        for (n = 1; n <= NF; n++) {
          line = $n
          if (line ~ /^[ \t]*#/) continue
          key = tolower(line); sub(/:.*/, "", key)
          value = line; sub(/^[^:]*:[ \t]*/, "", value)
          if (key == "types") types = value
          else if (key == "uris") uris = value
          else if (key == "suites") suites = value
          else if (key == "enabled") enabled = tolower(value)
        }
        if (enabled == "no" || (" " types " ") !~ / deb /) next
        if ((" " suites " ") ~ (" " suite " ")) { split(uris, u, /[ \t]+/); print u[1]; exit }
      }' "$file"
  done
}

mirror=${DEBIAN_MIRROR:-$(mirror_from_apt_sources | head -n 1)}
if [ -z "$mirror" ]; then
  echo "$0: no Debian mirror for $suite in /etc/apt/sources.list{,.d}; set DEBIAN_MIRROR" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "$0: debootstrap is not installed (apt-get install debootstrap)" >&2
  exit 1
}

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/ps-base-rootfs.XXXXXX")
# debootstrap mounts /proc (and may bind-mount /dev) inside the tree while it
# runs: unmount whatever is still there before deleting, and never cross
# into another file system.
remove_rootfs() {
  awk -v dir="$rootfs/" 'index($2, dir) == 1 { print $2 }' /proc/mounts |
    sort -r | while read -r mount; do umount -l "$mount" || true; done
  rm -rf --one-file-system "$rootfs" "$rootfs.log"
}
trap remove_rootfs EXIT
trap 'exit 1' INT TERM

echo "make_base_image: debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -n 30 "$rootfs.log" >&2
  exit 1
}

# The slim image's rules: packages installed later leave out documentation,
# manual pages and translations (copyright files stay).
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
# apt-get update fetches no translated package descriptions (6 MB), and apt
# keeps neither the packages it installed nor its caches (about 80 MB per
# apt-get run otherwise), as in Debian's own images.
echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/no-languages"
cat >"$rootfs/etc/apt/apt.conf.d/clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
printf 'deb %s %s main\ndeb %s %s-updates main\n' \
  "$mirror" "$suite" "$mirror" "$suite" >"$rootfs/etc/apt/sources.list"
# The same for what debootstrap installed (about 45 MB), and what it left
# behind: package downloads and lists, logs.
find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/lintian/* \
  "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
find "$rootfs/var/log" -type f -delete

tar -C "$rootfs" -c . |
  "$engine" import --change 'CMD ["bash"]' - "$name" >/dev/null
echo "make_base_image: $name (Debian $suite minbase)"
