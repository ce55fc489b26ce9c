# The probe workload for powercut.sh: scripts/board/probe appends fsynced
# records to /data and replaces /data/state atomically; after each cut the next
# boot checks that every record and state the board reported as synced is whole.
#
# A workload file defines:
#   wl_files            mkinitramfs.sh arguments (SRC[:DEST]) for its programs and files
#   wl_append PHASE     the kernel command line for a boot; PHASE is first, next or last
#   wl_cut_marker       the console line the random cut moment counts from
#   wl_cut_max          the cut moment is uniform in [0, wl_cut_max) seconds after it
#   wl_after_cut LOG    read what the cut boot reported as durable (console LOG);
#                       set wl_durable to a short line saying it
#   wl_check LOG        on the next boot's console LOG: set wl_found to a short line
#                       saying what it found; return non-zero if anything durable was lost
# Both run in the calling shell (not in $(...)), so that state carries over.
wl_files=("$BOARD_DIR/probe")
wl_cut_marker="BOARD: ready"
wl_cut_max=${LATCH_BOARD_CUT_MAX:-4}
wl_synced=0 wl_state=0
# LATCH_BOARD_PROBE_NOSYNC=1: the probe skips its fsyncs but reports as before,
# a negative control under which this check must fail.
wl_env=
[[ ${LATCH_BOARD_PROBE_NOSYNC:-} == 1 ]] && wl_env=" latch.env=PROBE_NOSYNC=1"

wl_append() {
	case $1 in
	first) echo "latch.run=/bin/probe latch.arg=write latch.arg=/data$wl_env" ;;
	next) echo "latch.run=/bin/probe latch.arg=checkwrite latch.arg=/data$wl_env" ;;
	last) echo "latch.run=/bin/probe latch.arg=check latch.arg=/data$wl_env" ;;
	esac
}

wl_after_cut() {
	local s
	s=$(sed -n 's/^PROBE: synced \([0-9]*\).*/\1/p' "$1" | tail -1)
	wl_synced=${s:-$wl_synced} # nothing new: what an earlier boot made durable stays
	s=$(sed -n 's/^PROBE: state \([0-9]*\).*/\1/p' "$1" | tail -1)
	wl_state=${s:-$wl_state}
	wl_durable="synced=$wl_synced state=$wl_state"
}

wl_check() {
	local line records state
	if grep -q '^PROBE: FAIL' "$1"; then
		wl_found=$(grep -m1 '^PROBE: FAIL' "$1")
		return 1
	fi
	line=$(grep -m1 '^PROBE: check ' "$1") || { wl_found="no check line"; return 1; }
	records=$(sed -n 's/.*records=\([0-9]*\).*/\1/p' <<<"$line")
	state=$(sed -n 's/.* state=\([0-9]*\).*/\1/p' <<<"$line")
	wl_found=${line#PROBE: check }
	if ((records < wl_synced)); then
		wl_found+="; LOST: $wl_synced records were synced, $records are whole"
		return 1
	fi
	if ((state < wl_state)); then
		wl_found+="; LOST: state $wl_state was synced, the disk holds state $state"
		return 1
	fi
}
