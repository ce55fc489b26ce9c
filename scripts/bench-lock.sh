#!/usr/bin/env bash
# bench-lock.sh: whole-process cost of taking and releasing a lock around a
# trivial command: N runs each of `flock P true` and
# `latch lock --path P -- true`, from one invocation, alternating run by run
# so that a change of machine load falls on both, printed as a table with the
# total wall time of each, the median run, and the ratios to flock(1). Each
# run is timed with bash's $EPOCHREALTIME (no process is started to read the
# clock).
#
# P is measured on a tmpfs (/dev/shm), where a board's /tmp lock paths live,
# and on the file system of $TMPDIR: on a disk, latch also fsyncs the lock's
# holder record before linking it into place (so that an entry that outlives
# a power cut is never an anonymous lock), which flock(1) does not do.
#
# A third row is the floor of any Go locker: a minimal Go program (built here,
# standard library only) that does what flock(1) does and no more: create
# the file O_EXCL, flock it, fork and exec CMD, wait, unlink. What separates
# latch from it is latch's own start-up (a larger binary to map and
# initialize) and its checks (no symlink followed, the holder record); what
# separates it from flock(1) is Go's runtime start-up. A last row,
# `latch version`, is latch's start-up alone (no lock, no child).
#
# Usage: scripts/bench-lock.sh [N]   (default 200)
#   LATCH_BIN=path   time that latch binary instead of building this tree
set -euo pipefail
runs=${1:-200}
if [[ ! $runs =~ ^[1-9][0-9]*$ ]]; then
	echo "bench-lock: N must be a positive number of runs, got '$runs'" >&2
	exit 2
fi
flock=$(command -v flock) || { echo "bench-lock: flock(1) not installed (util-linux)" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
shm=
trap 'rm -rf "$work" ${shm:+"$shm"}' EXIT
if [[ -n ${LATCH_BIN:-} ]]; then
	latch=$LATCH_BIN
else
	latch=$work/latch
	(cd "$here" && CGO_ENABLED=0 go build -trimpath -o "$latch" .)
fi
"$latch" lock --path "$work/check.lock" -- true || { echo "bench-lock: $latch lock does not run" >&2; exit 1; }
mkdir -p "$work/floor"
cat >"$work/floor/main.go" <<'GO'
// floor: lock PATH around CMD the way flock(1) does, in Go, nothing more.
package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	path, argv := os.Args[1], os.Args[2:]
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		os.Exit(73)
	}
	if syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		os.Exit(73)
	}
	bin := argv[0]
	if !strings.Contains(bin, "/") {
		for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
			if p := filepath.Join(dir, bin); syscall.Access(p, 1) == nil {
				bin = p
				break
			}
		}
	}
	pid, err := syscall.ForkExec(bin, argv, &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}})
	code := 127
	if err == nil {
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err == nil {
			code = ws.ExitStatus()
		}
	}
	syscall.Unlink(path)
	os.Exit(code)
}
GO
printf 'module floor\n\ngo 1.21\n' >"$work/floor/go.mod"
(cd "$work/floor" && CGO_ENABLED=0 go build -trimpath -o "$work/floor-lock" .)
floor=$work/floor-lock
"$floor" "$work/check-floor.lock" true || { echo "bench-lock: the Go floor does not run" >&2; exit 1; }

# bench DIR LABEL: N runs of each, alternating; prints two table rows.
bench() {
	local fpath=$1/flock.lock lpath=$1/latch.lock gpath=$1/floor.lock # flock(1) leaves its file behind
	local i s m g e v
	local -a tf=() tl=() tg=() tv=()
	for ((i = 0; i < runs; i++)); do
		v=${EPOCHREALTIME/[.,]/}
		"$latch" version >/dev/null
		s=${EPOCHREALTIME/[.,]/}
		tv+=($((10#$s - 10#$v)))
		"$flock" "$fpath" true
		m=${EPOCHREALTIME/[.,]/}
		"$floor" "$gpath" true
		g=${EPOCHREALTIME/[.,]/}
		"$latch" lock --path "$lpath" -- true
		e=${EPOCHREALTIME/[.,]/}
		tf+=($((10#$m - 10#$s)))
		tg+=($((10#$g - 10#$m)))
		tl+=($((10#$e - 10#$g)))
	done
	{
		printf 'flock %s\n' "${tf[@]}"
		printf 'floor %s\n' "${tg[@]}"
		printf 'latch %s\n' "${tl[@]}"
		printf 'start %s\n' "${tv[@]}"
	} | sort -k1,1 -k2,2n | awk -v d="$2" -v n="$runs" '
		{ v[$1, ++c[$1]] = $2; sum[$1] += $2 }
		END {
			for (k in c) med[k] = (c[k] % 2) ? v[k, (c[k] + 1) / 2] : (v[k, c[k] / 2] + v[k, c[k] / 2 + 1]) / 2
			printf "%-10s %-28s %5d %10.1f ms %9.3f ms %7.2fx %8.2fx\n", d, "flock P true", n, sum["flock"] / 1e3, med["flock"] / 1e3, 1, 1
			printf "%-10s %-28s %5d %10.1f ms %9.3f ms %7.2fx %8.2fx\n", d, "Go floor: floor P true", n, sum["floor"] / 1e3, med["floor"] / 1e3,
				sum["floor"] / sum["flock"], med["floor"] / med["flock"]
			printf "%-10s %-28s %5d %10.1f ms %9.3f ms %7.2fx %8.2fx\n", d, "latch lock --path P -- true", n, sum["latch"] / 1e3, med["latch"] / 1e3,
				sum["latch"] / sum["flock"], med["latch"] / med["flock"]
			printf "%-10s %-28s %5d %10.1f ms %9.3f ms %7.2fx %8.2fx\n", d, "(latch version: start-up)", n, sum["start"] / 1e3, med["start"] / 1e3,
				sum["start"] / sum["flock"], med["start"] / med["flock"]
		}'
}

printf "%-10s %-28s %5s %13s %12s %8s %9s\n" "P on" "command" "runs" "total" "median run" "total/" "median/"
printf "%-10s %-28s %5s %13s %12s %8s %9s\n" "" "" "" "" "" "flock" "flock"
if [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]] && shm=$(mktemp -d -p /dev/shm 2>/dev/null); then
	bench "$shm" tmpfs
else
	echo "(no tmpfs at /dev/shm: the tmpfs rows are left out)"
fi
bench "$work" "$(stat -f -c %T "$work")"
echo "latch binary: $latch ($(stat -c %s "$latch") bytes); Go floor: $(stat -c %s "$floor") bytes; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
