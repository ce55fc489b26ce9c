#!/bin/sh
# bench-lock.sh: whole-process cost of taking and releasing a lock around a
# trivial command, latch against flock(1) and procmail's lockfile(1), from one
# run, printed as a table with ratios to flock(1).
#
# Usage: scripts/bench-lock.sh [RUNS]   (default 300; uses hyperfine when installed)
set -eu
runs=${1:-300}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$here" && CGO_ENABLED=0 go build -trimpath -o "$work/latch" .)
# One path each: flock(1) leaves its file behind, which would block the others.
latch_cmd="$work/latch lock --path $work/latch.lock -- true"
flock_cmd="flock $work/flock.lock true"
lockfile_cmd="lockfile $work/lockfile.lock && rm -f $work/lockfile.lock"

for tool in flock lockfile; do
	command -v "$tool" >/dev/null || { echo "bench-lock: $tool not installed" >&2; exit 1; }
done

if command -v hyperfine >/dev/null; then
	hyperfine -N --warmup 20 --runs "$runs" --export-json "$work/h.json" \
		-n latch "$latch_cmd" -n flock "$flock_cmd" -n lockfile "sh -c '$lockfile_cmd'" >&2 || \
	hyperfine --warmup 20 --runs "$runs" --export-json "$work/h.json" \
		-n latch "$latch_cmd" -n flock "$flock_cmd" -n lockfile "$lockfile_cmd" >&2
	# name mean_seconds per line
	sed -n 's/.*"command": *"\([^"]*\)".*/\1/p; s/.*"mean": *\([0-9.e-]*\).*/\1/p' "$work/h.json" | paste - - > "$work/means"
else
	: > "$work/means"
	for name in latch flock lockfile; do
		case $name in
		latch) c=$latch_cmd ;; flock) c=$flock_cmd ;; lockfile) c=$lockfile_cmd ;;
		esac
		s=$(date +%s%N)
		i=0
		while [ $i -lt "$runs" ]; do sh -c "$c"; i=$((i + 1)); done
		e=$(date +%s%N)
		awk -v k="$name" -v a="$e" -v b="$s" -v n="$runs" 'BEGIN { printf "%s %.9f\n", k, (a - b) / n / 1e9 }' >> "$work/means"
	done
fi
awk 'NR==FNR { m[$1]=$2; next } END {
	base = m["flock"]
	printf "%-10s %12s %10s\n", "command", "mean", "vs flock"
	n = split("latch flock lockfile", order, " ")
	for (i = 1; i <= n; i++) { k = order[i]; printf "%-10s %10.3f ms %9.2fx\n", k, m[k]*1000, m[k]/base }
}' "$work/means" "$work/means"
echo "latch binary: $(stat -c %s "$work/latch") bytes"
