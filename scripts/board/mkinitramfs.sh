#!/usr/bin/env bash
# mkinitramfs.sh ARCH OUT [SRC[:DEST]...]: pack the test board's initramfs.
#
# OUT (a gzipped newc cpio) holds /init (scripts/board/init built for ARCH),
# /dev/console, the kernel modules the disk needs with their load order (from
# kernel.sh ARCH), and each SRC at DEST (default /bin/NAME; a DEST ending in /
# keeps the name). A SRC that is a Go package directory (./scripts/board/probe)
# is built, static, for ARCH.
#
#   ARCH   arm64 or armv7
set -euo pipefail

arch=${1:?usage: mkinitramfs.sh arm64|armv7 OUT [SRC[:DEST]...]}
out=${2:?usage: mkinitramfs.sh arm64|armv7 OUT [SRC[:DEST]...]}
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case $arch in
arm64) goenv=(GOARCH=arm64) ;;
armv7) goenv=(GOARCH=arm GOARM=7) ;;
*) echo "mkinitramfs.sh: unknown ARCH $arch (want arm64 or armv7)" >&2; exit 2 ;;
esac
out=$(realpath -m "$out")
kdir=$("$here/kernel.sh" "$arch")

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,etc/board,lib/modules/board,proc,sys,tmp,run,data}
gobuild() { # gobuild PKG OUT: a static binary of PKG for ARCH
	(cd "$root" && env CGO_ENABLED=0 GOOS=linux "${goenv[@]}" go build -trimpath -ldflags "-s -w" -o "$2" "$1")
}
gobuild ./scripts/board/init "$stage/init"
mknod -m 600 "$stage/dev/console" c 5 1
cp "$kdir"/modules/*.ko "$stage/lib/modules/board/" 2>/dev/null || true
cp "$kdir/modules.load" "$stage/etc/board/modules.load"

for spec in "$@"; do
	src=${spec%%:*}
	dest=/bin/
	[[ $spec == *:* ]] && dest=${spec#*:}
	[[ $dest == */ ]] && dest=$dest$(basename "$src")
	mkdir -p "$stage$(dirname "$dest")"
	if [[ -d $src ]] && compgen -G "$src/*.go" >/dev/null; then
		gobuild "$(realpath --relative-to="$root" "$src" | sed 's|^|./|')" "$stage$dest"
	else
		cp -a "$src" "$stage$dest"
	fi
done

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . | LC_ALL=C sort | cpio --quiet -o -H newc | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
