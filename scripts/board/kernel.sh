#!/usr/bin/env bash
# kernel.sh ARCH: fetch Debian's kernel for a QEMU -M virt board and the modules
# its virtual disk needs, into the board cache (reused when already there).
#
#   ARCH     arm64 (linux-image-cloud-arm64) or armv7 (linux-image-armmp, armhf)
#   output   $LATCH_BOARD_CACHE/kernel-ARCH/ (default /var/cache/latch/board):
#              vmlinuz       the kernel image for qemu -kernel
#              modules/      the .ko files, decompressed, that the disk needs
#              modules.load  their names in load order (dependencies first)
#              version       the kernel package that was unpacked
#   prints   the directory on stdout (everything else goes to stderr).
#
# The disk is a virtio-blk device on virtio-mmio with an ext4 file system; ext4
# needs crc32c through the crypto API, which it requests by name at mount time
# (there is no modprobe on the board), so that module is loaded up front.
set -euo pipefail

arch=${1:?usage: kernel.sh arm64|armv7}
cache=${LATCH_BOARD_CACHE:-/var/cache/latch/board}
case $arch in
arm64) debarch=arm64 meta=linux-image-cloud-arm64 ;;
armv7) debarch=armhf meta=linux-image-armmp ;;
*) echo "kernel.sh: unknown ARCH $arch (want arm64 or armv7)" >&2; exit 2 ;;
esac
dir=$cache/kernel-$arch
if [[ -s $dir/vmlinuz && -s $dir/modules.load && -d $dir/modules ]]; then
	echo "$dir"
	exit 0
fi

log() { echo "kernel.sh: $*" >&2; }
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

if ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
	log "adding dpkg architecture $debarch"
	dpkg --add-architecture "$debarch"
fi
if ! apt-cache show "$meta:$debarch" >/dev/null 2>&1; then
	# A mirror caught mid-sync fails an index now and then: try again.
	for try in 1 2 3; do
		log "apt-get update (for $debarch), try $try"
		apt-get "${apt_opts[@]}" update -qq >&2 && apt-cache show "$meta:$debarch" >/dev/null 2>&1 && break
		sleep $((try * 10))
	done
fi
# The meta package depends on the versioned image package.
pkg=$(apt-cache depends "$meta:$debarch" | sed -n 's/^ *Depends: *\(linux-image-[^ :]*\).*/\1/p' | head -1)
[[ -n $pkg ]] || { log "cannot find the image package that $meta:$debarch depends on"; exit 1; }

mkdir -p "$cache"
work=$(mktemp -d "$cache/.kernel-$arch.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt-get download drops privileges to _apt
log "downloading $pkg:$debarch"
(cd "$work" && apt-get "${apt_opts[@]}" download -qq "$pkg:$debarch" >&2)
dpkg -x "$work"/*.deb "$work/x"

kver=$(ls "$work/x/lib/modules" | head -1)
mods=$work/x/lib/modules/$kver
vmlinuz=$(ls "$work"/x/boot/vmlinuz-* | head -1)
config=$(ls "$work"/x/boot/config-* | head -1)
out=$work/out
mkdir -p "$out/modules"
cp "$vmlinuz" "$out/vmlinuz"
cp "$config" "$out/config"
echo "$pkg $kver" >"$out/version"

# The names the disk needs; each is built in (modules.builtin) or a module whose
# dependencies are read from its own .modinfo "depends=" field (the package
# ships no modules.dep: depmod runs at install time).
want=(virtio_mmio virtio_blk crc32c_generic ext4)
declare -A path=() seen=()
while IFS= read -r f; do
	n=$(basename "$f"); n=${n%%.ko*}; path[${n//-/_}]=$f
done < <(find "$mods/kernel" -name '*.ko*')
unpack() { # unpack FILE: the module's bytes on stdout, decompressed
	case $1 in
	*.ko.xz) xz -dc "$1" ;;
	*.ko.zst) zstd -qdc "$1" ;;
	*.ko.gz) gzip -dc "$1" ;;
	*) cat "$1" ;;
	esac
}
: >"$out/modules.load"
add() { # add NAME: its dependencies first, then itself
	local name=${1//-/_} f deps d
	[[ -n ${seen[$name]:-} ]] && return 0
	seen[$name]=1
	f=${path[$name]:-}
	if [[ -z $f ]]; then
		if grep -qE "/${name//_/[-_]}\.ko$" "$mods/modules.builtin"; then
			log "$name is built into $kver"
			return 0
		fi
		log "$name is neither a module nor built into $kver"
		exit 1
	fi
	unpack "$f" >"$out/modules/$name.ko"
	deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$out/modules/$name.ko" | head -1 | cut -d= -f2)
	for d in ${deps//,/ }; do add "$d"; done
	echo "$name.ko" >>"$out/modules.load"
}
for name in "${want[@]}"; do add "$name"; done
log "$kver: modules to load: $(tr '\n' ' ' <"$out/modules.load")"

rm -rf "$dir"
mv "$out" "$dir"
echo "$dir"
