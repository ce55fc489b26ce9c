# The agent workload for powercut.sh: scripts/board/agentwl runs latch agent
# (exec driver) on the board's disk and drives one update of a two-service
# demo app per boot, with a user lock held during the download and released
# once the update is blocked; the host cuts the power during the download
# (odd cuts) or the apply (even cuts). Each next boot checks, before and after
# the agent's recovery, what survived (see agentwl's doc comment), and is
# told on its command line what the cut boot had seen durable: the last
# journal event seq and the release seen applied.
#
# Interface: see workloads/probe.sh. wl_check also picks the next cut's
# marker and window (wl_cut_marker, wl_cut_max), alternating the phases.
#
# LATCH_BOARD_CUT_DOWNLOAD and LATCH_BOARD_CUT_APPLY (seconds) override the
# windows; AGENTWL_RATE and AGENTWL_BIG (bytes) are passed to the board.
wl_files=("$BOARD_DIR/agentwl" "$BOARD_DIR/agentwl:/bin/sh" "$BOARD_DIR/../..:/bin/latch")
wl_check_marker="^AGENT: (check ok|FAIL|error)|^BOARD: (exit|error)"
wl_dl_marker="^AGENT: downloading"
wl_apply_marker="^AGENT: released"
wl_dl_max=${LATCH_BOARD_CUT_DOWNLOAD:-4}
wl_apply_max=${LATCH_BOARD_CUT_APPLY:-2}
wl_cut_marker=$wl_dl_marker
wl_cut_max=$wl_dl_max
wl_boot=1 wl_seq=0 wl_rel=0
wl_env=
[[ -n ${AGENTWL_RATE:-} ]] && wl_env+=" latch.env=AGENTWL_RATE=$AGENTWL_RATE"
[[ -n ${AGENTWL_BIG:-} ]] && wl_env+=" latch.env=AGENTWL_BIG=$AGENTWL_BIG"

wl_append() {
	echo "latch.run=/bin/agentwl latch.arg=$1 latch.arg=seq=$wl_seq latch.arg=release=$wl_rel latch.timeout=15m$wl_env"
}

# wl_after_cut LOG: the last durable line before the cut, and the phase the
# cut landed in (the last phase marker printed).
wl_after_cut() {
	local s phase
	s=$(sed -n 's/^AGENT: durable seq=\([0-9]*\) release=\([0-9]*\).*/\1 \2/p' "$1" | tail -1)
	if [[ -n $s ]]; then
		wl_seq=${s% *} wl_rel=${s#* }
	fi
	phase=$(grep -oE '^AGENT: (downloading|blocked|released|applying|applied|idle)' "$1" | tail -1)
	wl_durable="cut in ${phase#AGENT: } (after \"${wl_cut_marker#^AGENT: }\"); journal seq=$wl_seq, r$wl_rel applied"
}

# wl_check LOG: what the next boot found; fails on any FAIL line or a check
# that never came. Then chooses the next cut's phase.
wl_check() {
	local found check
	board_wait_marker "$1" "$wl_check_marker" 240 || true
	wl_boot=$((wl_boot + 1))
	if ((wl_boot % 2 == 0)); then
		wl_cut_marker=$wl_apply_marker wl_cut_max=$wl_apply_max
	else
		wl_cut_marker=$wl_dl_marker wl_cut_max=$wl_dl_max
	fi
	found=$(grep -m1 '^AGENT: found ' "$1" | sed 's/^AGENT: found //; s/journal=ok //; s/ drive=.*//')
	locks=$(grep -m1 '^AGENT: locks-at-ready ' "$1" | sed 's/^AGENT: //')
	if grep -qE '^AGENT: (FAIL|error)' "$1"; then
		wl_found="$found; $(grep -m1 -E '^AGENT: (FAIL|error)' "$1")"
		return 1
	fi
	check=$(grep -m1 '^AGENT: check ok ' "$1") || { wl_found="$found; no check line"; return 1; }
	wl_found="$found${locks:+ $locks} -> $(sed 's/^AGENT: check ok //; s/ requests=.*//' <<<"$check")"
	wl_found+=" $(grep -oE 'resumed=[0-9]+ from-zero=[0-9]+' <<<"$check")"
}
