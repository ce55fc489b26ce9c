#!/usr/bin/env bash
# Installs what latch's tests need on a Debian 12 machine (root): lock tools,
# qemu-user and qemu-system, systemd-nspawn and debootstrap, load tools, a
# container engine and registry, an MQTT broker (the tests start their own).
# Idempotent: installs only what is missing. Prints what it did.
set -euo pipefail

pkgs=(
  procmail            # lockfile(1)
  liblockfile-bin     # dotlockfile(1)
  python3-lockfile    # Python's hard-link based lockfile package
  python3-filelock
  util-linux          # flock(1), setpriv(1), unshare(1)
  qemu-user-static    # ARM test binaries
  qemu-system-arm     # emulated boards (arm64 and armv7)
  cpio                # initramfs
  xz-utils            # board kernel modules, if ever compressed
  e2fsprogs           # mkfs.ext4 for the boards' disks
  systemd-container   # systemd-nspawn
  debootstrap         # the nspawn rootfs
  dpkg-dev            # dpkg-deb
  file                # checks that the binaries are static
  curl
  wrk
  hyperfine
  docker.io           # dockerd 20.10 (Engine API 1.41): the container driver's tests start their own
  docker-registry     # distribution 2.8: the registry client's tests start their own
  busybox-static      # test images FROM scratch
  mosquitto           # MQTT 5 broker: the fleet tests start their own
  mosquitto-clients
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "deps: all present"
command -v npm >/dev/null || { echo "deps: npm is needed (node's lockfile package); install nodejs and npm" >&2; exit 1; }
# npm's lockfile package, for the real-tools lock test (the version is pinned
# by the committed package-lock.json).
cd "$(dirname "$0")/.."
if [ ! -d testdata/lock/npm/node_modules/lockfile ]; then
  echo "deps: npm ci in testdata/lock/npm"
  npm ci --prefix testdata/lock/npm --no-audit --no-fund --loglevel=error >/dev/null
fi
echo "deps: npm lockfile present"
