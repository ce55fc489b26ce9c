#!/bin/sh
# rootfs.sh [ARCH]: print the path of a cached Debian bookworm rootfs with systemd, building it
# first when it is missing.
#
# The cache lives outside the repository (LATCH_NSPAWN_CACHE, default /var/cache/latch/nspawn) as
# bookworm-<debarch>/. It is built once with debootstrap and then only ever copied: tests boot a
# copy, never the cache itself. A half-built cache is never used: the build goes to a temporary
# folder that is renamed into place only when debootstrap succeeded.
#
# The mirror is the one apt uses on this machine, read from its sources at run time.
# ARCH is a Debian architecture (amd64, arm64, armhf); foreign ones need qemu-user-static and
# binfmt_misc (registered here when missing).
set -eu

arch=${1:-amd64}
cache=${LATCH_NSPAWN_CACHE:-/var/cache/latch/nspawn}
dest=$cache/bookworm-$arch

if [ -x "$dest/lib/systemd/systemd" ] && [ -e "$dest/.latch-rootfs-ok" ]; then
	echo "$dest"
	exit 0
fi

[ "$(id -u)" = 0 ] || { echo "rootfs.sh: must run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap missing (apt-get install -y debootstrap)" >&2; exit 1; }

mirror=
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
	mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | head -1 | awk '{print $1}')
fi
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
	mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || { echo "rootfs.sh: cannot read the Debian mirror from apt's sources" >&2; exit 1; }

host=$(dpkg --print-architecture)
if [ "$arch" != "$host" ]; then
	case $arch in
	arm64) q=qemu-aarch64 ;;
	armhf | armel) q=qemu-arm ;;
	i386) q= ;;
	*) echo "rootfs.sh: unsupported architecture $arch" >&2; exit 1 ;;
	esac
	if [ -n "$q" ]; then
		mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
		if [ ! -e "/proc/sys/fs/binfmt_misc/$q" ]; then
			cat "/usr/lib/binfmt.d/$q.conf" >/proc/sys/fs/binfmt_misc/register
		fi
	fi
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build-$arch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "rootfs.sh: debootstrap bookworm $arch into $tmp (a few minutes)" >&2
debootstrap --arch="$arch" --variant=minbase --include=systemd,systemd-sysv,dbus \
	bookworm "$tmp/root" "$mirror" >&2
# A container boots faster and quieter without these, and a fixed machine-id is not wanted.
: >"$tmp/root/etc/machine-id"
touch "$tmp/root/.latch-rootfs-ok"
rm -rf "$dest"
mv "$tmp/root" "$dest"
echo "$dest"
