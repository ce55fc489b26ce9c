#!/usr/bin/env bash
# powercut.sh [--workload NAME] ARCH N: N power cuts on the QEMU test board.
#
# Boots the board (ARCH arm64 or armv7) on a fresh ext4 disk with the workload
# (scripts/board/workloads/NAME.sh, default probe), kills qemu at a random
# moment, boots again from the same disk (the workload checks what survived and
# goes on), N times, then boots once more to check only. Prints a table of the
# cuts: the moment, what the board reported durable, what the next boot found.
# Exits non-zero if any boot found something durable lost. Besides the
# interface in workloads/probe.sh, a workload may set wl_check_marker: the
# console line (extended regex) that says its check has printed.
#
# The moments come from a seeded generator: the seed is printed, and
# LATCH_BOARD_SEED=SEED replays the same moments. The console logs stay in
# the work directory printed at the start (removed on success unless
# LATCH_BOARD_KEEP=1).
set -euo pipefail

workload=probe
if [[ ${1:-} == --workload ]]; then
	workload=$2
	shift 2
fi
arch=${1:?usage: powercut.sh [--workload NAME] arm64|armv7 N}
cuts=${2:?usage: powercut.sh [--workload NAME] arm64|armv7 N}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=run.sh
. "$here/run.sh"
wl_check_marker="^PROBE: (check|FAIL)|^BOARD: (exit|error)" # a workload may set its own
# shellcheck source=workloads/probe.sh
. "$here/workloads/$workload.sh"

seed=${LATCH_BOARD_SEED:-$((10#$(date +%N) % 32768))}
RANDOM=$seed
work=$(mktemp -d "${TMPDIR:-/var/tmp}/latch-powercut.XXXXXX")
echo "powercut: arch=$arch workload=$workload cuts=$cuts seed=$seed work=$work"
echo "powercut: replay with LATCH_BOARD_SEED=$seed $0 --workload $workload $arch $cuts"
t_all=$EPOCHREALTIME

"$here/mkinitramfs.sh" "$arch" "$work/initrd.gz" "${wl_files[@]}"
board_mkdisk "$work/disk.img" 64
trap 'board_cut 2>/dev/null || true' INT TERM

failed=0 failed_logs=()
rows=()
boot_timeout=180
for ((i = 1; i <= cuts + 1; i++)); do
	phase=next
	((i == 1)) && phase=first
	((i == cuts + 1)) && phase=last
	log=$work/boot-$i.log
	board_start "$arch" "$work/initrd.gz" "$work/disk.img" "$log" "$(wl_append $phase)"
	t0=$BOARD_T0
	if ! board_wait_marker "$log" "BOARD: ready" "$boot_timeout"; then
		board_cut
		echo "powercut: boot $i: the board did not get ready; console: $log" >&2
		sed 's/^/  | /' "$log" >&2
		exit 1
	fi
	ready=$(board_since "$t0")
	uptime=$(sed -n 's/^BOARD: ready uptime=\([0-9.]*\).*/\1/p' "$log")
	if ((i > 1)); then
		# Give the check a moment to print (it runs first on every boot).
		board_wait_marker "$log" "$wl_check_marker" 60 || true
		if wl_check "$log"; then verdict=ok; else verdict=FAIL; failed=1; failed_logs+=("$log"); fi
		rows[i - 1]+=" | $wl_found | $verdict"
	fi
	if [[ $phase == last ]]; then
		board_wait "$boot_timeout" || true
		break
	fi
	board_wait_marker "$log" "$wl_cut_marker" "$boot_timeout" || true
	ms=$((RANDOM % (wl_cut_max * 1000)))
	sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
	board_cut
	at=$(board_since "$t0")
	wl_after_cut "$log"
	echo "BOARD-HOST: power cut $i at ${at}s after start, $((ms / 1000)).$(printf %03d $((ms % 1000)))s after \"$wl_cut_marker\"" >>"$log"
	rows[i]="$i | ${ready}s (${uptime}s) | +$((ms / 1000)).$(printf %03d $((ms % 1000)))s | $wl_durable"
done

echo
echo "cut | boot to ready, host (guest uptime) | cut after \"$wl_cut_marker\" | reported durable | next boot found | verdict"
for ((i = 1; i <= cuts; i++)); do
	echo "${rows[i]}"
done
echo "powercut: $arch: $cuts cuts, seed $seed, $(board_since "$t_all")s in all"
if ((failed)); then
	# What the failing boots printed, so that a CI log alone explains the failure.
	for f in "${failed_logs[@]}"; do
		echo "powercut: console of the failing boot, $f (last 60 lines):"
		tail -n 60 "$f" | sed 's/^/  | /'
	done
	echo "powercut: FAIL: something durable was lost; console logs in $work" >&2
	exit 1
fi
if [[ ${LATCH_BOARD_KEEP:-} != 1 ]]; then
	rm -rf "$work"
fi
echo "powercut: $arch: every cut recovered"
