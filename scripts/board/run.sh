#!/usr/bin/env bash
# run.sh: boot the QEMU test board (-M virt, arm64 or armv7) once.
#
#   run.sh [flags] ARCH INITRD
#     --disk FILE        raw ext4 image attached as /dev/vda (cache=none); none if omitted
#     --log FILE         the console log (default: a temporary file, printed at the end)
#     --append ARGS      more kernel command line, e.g. "latch.run=/bin/probe latch.arg=write"
#     --timeout SECS     kill the board after SECS and exit 124 (default 300)
#     --cut-after SECS   power cut: kill qemu SECS (may be fractional) after the cut marker
#     --cut-marker RE    the console line (extended regex) the cut counts from (default "BOARD: ready")
#
# Exit status: the workload's (from the "BOARD: exit N" marker); 0 after a power
# cut; 124 on timeout; 125 if the board failed before the workload ran (kernel,
# modules, disk).
#
# Sourced (". run.sh") it only defines the board_* functions below, for scripts
# that run several boots (powercut.sh). Environment: BOARD_SMP (default 2),
# BOARD_MEM (MiB, default 512), LATCH_BOARD_CACHE (see kernel.sh).

BOARD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# board_mkdisk FILE [MIB]: a fresh ext4 image of MIB MiB (default 64).
board_mkdisk() {
	rm -f "$1"
	truncate -s "${2:-64}M" "$1"
	mkfs.ext4 -q -F -E nodiscard "$1"
}

# board_start ARCH INITRD DISK LOG APPEND: start qemu in the background, its
# console going to LOG. Sets BOARD_PID and BOARD_T0 (start, epoch seconds).
board_start() {
	local arch=$1 initrd=$2 disk=$3 log=$4 append=$5 kdir
	kdir=$("$BOARD_DIR/kernel.sh" "$arch") || return 1
	local qemu=(-M virt -smp "${BOARD_SMP:-2}" -m "${BOARD_MEM:-512}" -no-reboot
		-display none -monitor none -nic none -serial "file:$log"
		-kernel "$kdir/vmlinuz" -initrd "$initrd"
		-append "console=ttyAMA0 panic=-1 quiet $append")
	if [[ -n $disk ]]; then
		qemu+=(-drive "file=$disk,if=none,id=d,format=raw,cache=none" -device virtio-blk-device,drive=d)
	fi
	: >"$log"
	BOARD_T0=$EPOCHREALTIME
	case $arch in
	arm64) qemu-system-aarch64 -cpu cortex-a53 "${qemu[@]}" 2>"$log.qemu" </dev/null & ;;
	armv7) qemu-system-arm -cpu cortex-a15 "${qemu[@]}" 2>"$log.qemu" </dev/null & ;;
	*) echo "run.sh: unknown ARCH $arch (want arm64 or armv7)" >&2; return 2 ;;
	esac
	BOARD_PID=$!
}

# board_alive: whether the board's qemu is still running.
board_alive() { kill -0 "$BOARD_PID" 2>/dev/null; }

# board_wait_marker LOG RE SECS: wait until a console line matches RE; fails
# if the board stops or SECS pass first. The console is a file that only
# grows, so it is polled.
board_wait_marker() {
	local log=$1 re=$2 deadline
	deadline=$(($(date +%s) + $3))
	until grep -qE -- "$re" "$log"; do
		if ! board_alive; then
			grep -qE -- "$re" "$log"
			return
		fi
		(($(date +%s) < deadline)) || return 1
		sleep 0.02
	done
}

# board_cut: the power cut. SIGKILL leaves the guest no moment to flush
# anything; what qemu already wrote to the image (cache=none) stays.
board_cut() {
	kill -KILL "$BOARD_PID" 2>/dev/null
	wait "$BOARD_PID" 2>/dev/null || true
	return 0
}

# board_wait SECS: wait for the board to power off; kill it after SECS.
# Returns 0, or 124 on timeout.
board_wait() {
	local deadline=$(($(date +%s) + $1))
	while board_alive; do
		if (($(date +%s) >= deadline)); then
			board_cut
			return 124
		fi
		sleep 0.05
	done
	wait "$BOARD_PID" 2>/dev/null || true
	return 0
}

# board_status LOG: the workload's exit status from the console, or 125 when
# there is none.
board_status() {
	local n
	n=$(sed -n 's/^BOARD: exit \([0-9]*\).*/\1/p' "$1" | tail -1)
	echo "${n:-125}"
}

# board_since T: seconds since T (an EPOCHREALTIME), 3 decimals.
board_since() {
	awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'
}

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
	return 0
fi

set -euo pipefail
disk= log= append= timeout=300 cut= marker="BOARD: ready"
while (($#)); do
	case $1 in
	--disk) disk=$2; shift 2 ;;
	--log) log=$2; shift 2 ;;
	--append) append=$2; shift 2 ;;
	--timeout) timeout=$2; shift 2 ;;
	--cut-after) cut=$2; shift 2 ;;
	--cut-marker) marker=$2; shift 2 ;;
	-*) echo "run.sh: unknown flag $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
arch=${1:?usage: run.sh [flags] arm64|armv7 INITRD}
initrd=${2:?usage: run.sh [flags] arm64|armv7 INITRD}
if [[ -z $log ]]; then
	log=$(mktemp --suffix=.console)
	trap 'cat "$log"; rm -f "$log" "$log.qemu"' EXIT
fi
board_start "$arch" "$initrd" "$disk" "$log" "$append"
trap 'board_cut' INT TERM
if [[ -n $cut ]]; then
	if ! board_wait_marker "$log" "$marker" "$timeout"; then
		board_cut
		echo "run.sh: no console line matching \"$marker\" (board stopped or timed out)" >&2
		exit 125
	fi
	sleep "$cut"
	board_cut
	echo "run.sh: power cut ${cut}s after \"$marker\", $(board_since "$BOARD_T0")s after start" >&2
	exit 0
fi
rc=0
board_wait "$timeout" || rc=$?
if ((rc == 124)); then
	echo "run.sh: timeout after ${timeout}s" >&2
	exit 124
fi
exit "$(board_status "$log")"
