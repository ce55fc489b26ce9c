#!/bin/sh
# e2e.sh [ARCH...]: run latch's end-to-end test on a real systemd (systemd/e2e,
# TestSystemdEndToEnd) for each ARCH (amd64 arm64 armhf; none = amd64): the .deb built from this
# tree, installed in a systemd-nspawn container of the cached Debian rootfs (built when missing by
# scripts/nspawn/rootfs.sh, a few minutes once per architecture).
#
# Needs root, systemd-container, debootstrap, dpkg-dev; foreign architectures also need
# qemu-user-static (binfmt_misc is registered by rootfs.sh). Extra go test flags: GOTESTFLAGS.
set -eu

cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || set -- amd64
rc=0
for arch in "$@"; do
	echo "== e2e.sh: $arch" >&2
	start=$(date +%s)
	# shellcheck disable=SC2086 # GOTESTFLAGS is a list of flags
	if ! LATCH_NSPAWN_ARCH=$arch go test ./systemd/e2e/ -run '^TestSystemdEndToEnd$' -count=1 -v \
		-timeout 30m ${GOTESTFLAGS:-}; then
		rc=1
	fi
	echo "== e2e.sh: $arch took $(($(date +%s) - start)) s" >&2
done
exit $rc
