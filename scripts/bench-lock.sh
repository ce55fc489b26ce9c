#!/bin/sh
# bench-lock.sh: whole-process cost of taking and releasing a lock around a
# trivial command: N runs each of `flock P true` and
# `latch lock --path P -- true`, from one invocation, interleaved in blocks so
# that a change of machine load falls on both, printed as a table with the
# total wall time of each and the ratio to flock(1).
#
# P is measured on a tmpfs (/dev/shm), where a board's /tmp lock paths live,
# and on the file system of $TMPDIR: on a disk, latch also fsyncs the lock's
# holder record before linking it into place (so that an entry that outlives
# a power cut is never an anonymous lock), which flock(1) does not do.
#
# Usage: scripts/bench-lock.sh [N]   (default 200)
#   LATCH_BIN=path   time that latch binary instead of building this tree
set -eu
runs=${1:-200}
case $runs in '' | *[!0-9]* | 0) echo "bench-lock: N must be a positive number of runs, got '$runs'" >&2; exit 2 ;; esac
command -v flock >/dev/null || { echo "bench-lock: flock(1) not installed (util-linux)" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
shm=
trap 'rm -rf "$work" $shm' EXIT
if [ -n "${LATCH_BIN:-}" ]; then
	latch=$LATCH_BIN
else
	latch=$work/latch
	(cd "$here" && CGO_ENABLED=0 go build -trimpath -o "$latch" .)
fi
flock=$(command -v flock)
"$latch" lock --path "$work/check.lock" -- true || { echo "bench-lock: $latch lock does not run" >&2; exit 1; }

now() { date +%s%N; }

# bench DIR LABEL: N runs of each, in four interleaved blocks; prints a table row pair.
bench() {
	fpath=$1/flock.lock # one path each: flock(1) leaves its file behind
	lpath=$1/latch.lock
	tflock=0
	tlatch=0
	block=$(((runs + 3) / 4))
	n_done=0
	while [ "$n_done" -lt "$runs" ]; do
		n=$block
		[ $((n_done + n)) -gt "$runs" ] && n=$((runs - n_done))
		s=$(now)
		i=0
		while [ $i -lt "$n" ]; do "$flock" "$fpath" true; i=$((i + 1)); done
		e=$(now)
		tflock=$((tflock + e - s))
		s=$(now)
		i=0
		while [ $i -lt "$n" ]; do "$latch" lock --path "$lpath" -- true; i=$((i + 1)); done
		e=$(now)
		tlatch=$((tlatch + e - s))
		n_done=$((n_done + n))
	done
	awk -v d="$2" -v n="$runs" -v f="$tflock" -v l="$tlatch" 'BEGIN {
		printf "%-12s %-28s %5d %10.1f ms %8.3f ms %8.2fx\n", d, "flock P true", n, f / 1e6, f / n / 1e6, 1
		printf "%-12s %-28s %5d %10.1f ms %8.3f ms %8.2fx\n", d, "latch lock --path P -- true", n, l / 1e6, l / n / 1e6, l / f
	}'
}

printf "%-12s %-28s %5s %13s %11s %9s\n" "P on" "command" "runs" "total" "per run" "vs flock"
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && shm=$(mktemp -d -p /dev/shm 2>/dev/null); then
	bench "$shm" tmpfs
else
	echo "(no tmpfs at /dev/shm: the tmpfs rows are left out)"
fi
bench "$work" "$(stat -f -c %T "$work")"
echo "latch binary: $latch ($(stat -c %s "$latch") bytes); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
