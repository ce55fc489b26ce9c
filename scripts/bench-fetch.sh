#!/bin/sh
# bench-fetch.sh: download throughput of latch's Fetch against curl, from the
# same loopback HTTP server, and Fetch's peak resident memory while it
# downloads the file (it streams: the figure must not grow with the size).
#
# Usage: scripts/bench-fetch.sh [SIZE_MIB]   (default 1024, i.e. 1 GiB)
# Needs: go, curl, python3 (the server); /usr/bin/time -v if installed.
# Everything lives in a temporary directory under /tmp, removed at the end.
set -eu

size_mib=${1:-1024}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/latch-bench-fetch.XXXXXX)
server_pid=
cleanup() {
	[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "preparing a ${size_mib} MiB file in $work" >&2
mkdir -p "$work/srv" "$work/out"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/srv/blob"
sum=$(sha256sum "$work/srv/blob" | cut -d' ' -f1)

(cd "$root" && CGO_ENABLED=0 go test -c -o "$work/fetch.test" ./agent/fetch) >&2

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$work/srv" "$port" >/dev/null 2>&1 &
server_pid=$!
url="http://127.0.0.1:$port/blob"
i=0
until curl -fsS -o /dev/null -r 0-0 "$url" 2>/dev/null; do
	i=$((i + 1))
	[ "$i" -gt 100 ] && { echo "server did not start" >&2; exit 1; }
	sleep 0.1
done

now() { date +%s.%N; }
bytes=$((size_mib * 1024 * 1024))

# curl: the baseline.
t0=$(now)
curl -fsS -o "$work/out/curl" "$url"
t1=$(now)
rm -f "$work/out/curl"

# Fetch, measured by its own clock and by time(1) or /proc for the memory.
rm -f "$work/out/fetch" "$work/out/fetch.part"
if [ -x /usr/bin/time ]; then
	t2=$(now)
	LATCH_BENCH_URL=$url LATCH_BENCH_SHA256=$sum LATCH_BENCH_DEST="$work/out/fetch" \
		/usr/bin/time -v "$work/fetch.test" -test.run '^TestFetchFromEnv$' -test.v \
		>"$work/fetch.log" 2>"$work/time.log"
	t3=$(now)
	rss_kib=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$work/time.log")
else
	t2=$(now)
	LATCH_BENCH_URL=$url LATCH_BENCH_SHA256=$sum LATCH_BENCH_DEST="$work/out/fetch" \
		"$work/fetch.test" -test.run '^TestFetchFromEnv$' -test.v >"$work/fetch.log" 2>&1 &
	pid=$!
	rss_kib=0
	while kill -0 "$pid" 2>/dev/null; do
		hwm=$(sed -n 's/^VmHWM: *\([0-9]*\) kB/\1/p' "/proc/$pid/status" 2>/dev/null || true)
		[ -n "$hwm" ] && [ "$hwm" -gt "$rss_kib" ] && rss_kib=$hwm
		sleep 0.05
	done
	wait "$pid"
	t3=$(now)
fi
grep -q '^--- PASS' "$work/fetch.log" || { cat "$work/fetch.log" >&2; exit 1; }
got=$(sha256sum "$work/out/fetch" | cut -d' ' -f1)
[ "$got" = "$sum" ] || { echo "Fetch wrote a file with sha256 $got, want $sum" >&2; exit 1; }

awk -v b="$bytes" -v c0="$t0" -v c1="$t1" -v f0="$t2" -v f1="$t3" -v rss="$rss_kib" -v mib="$size_mib" 'BEGIN {
	c = c1 - c0; f = f1 - f0
	printf "%-24s %10s %10s\n", "download of " mib " MiB", "seconds", "MB/s"
	printf "%-24s %10.2f %10.1f\n", "curl -o", c, b / c / 1e6
	printf "%-24s %10.2f %10.1f\n", "latch Fetch (+sha256,", f, b / f / 1e6
	printf "%-24s\n", "  fsync, process start)"
	printf "Fetch / curl throughput: %.2f\n", (b / f) / (b / c)
	printf "Fetch peak RSS: %.1f MiB (file: %d MiB)\n", rss / 1024, mib
}'
