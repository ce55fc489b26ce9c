#!/bin/sh
# bench-api.sh: throughput, p99 latency and memory of the local API.
#
# Runs BenchmarkAPI (agent/api/bench_test.go): a real agent and API server,
# 16 keep-alive clients over the unix socket, GET /ping (the baseline),
# GET /v1/device and GET /metrics; prints req/s, p99 and peak RSS (VmHWM of
# the process holding agent, server and load generator), with each endpoint's
# throughput as a ratio of /ping's in the same run.
#
# With --size it also measures what prometheus/client_golang would add to the
# latch binary: it builds the tree as it is and a copy that links the library
# into the API package (using a temporary go.mod; the project's is untouched).
#
# Usage: scripts/bench-api.sh [--size] [N requests per endpoint, default 20000]
set -eu
cd "$(dirname "$0")/.."
size=0
if [ "${1:-}" = "--size" ]; then size=1; shift; fi
n=${1:-20000}

go test ./agent/api/ -run '^$' -bench '^BenchmarkAPI$' -benchtime "${n}x" -count 3 |
awk '
/^BenchmarkAPI\// {
	name = $1; sub(/^BenchmarkAPI\//, "/", name); sub(/-[0-9]+$/, "", name)
	for (i = 3; i < NF; i++) {
		if ($(i+1) == "req/s") rps[name] += $i
		if ($(i+1) == "p99-µs") { if ($i > p99[name]) p99[name] = $i }
		if ($(i+1) == "VmHWM-KiB") { if ($i > rss[name]) rss[name] = $i }
	}
	runs[name]++
	if (!(name in seen)) { order[++k] = name; seen[name] = 1 }
}
END {
	base = rps["/ping"] / runs["/ping"]
	printf "%-12s %10s %8s %10s %12s\n", "endpoint", "req/s", "x ping", "p99 (ms)", "VmHWM (MiB)"
	for (i = 1; i <= k; i++) {
		e = order[i]; r = rps[e] / runs[e]
		printf "%-12s %10.0f %8.2f %10.2f %12.1f\n", e, r, r / base, p99[e] / 1000, rss[e] / 1024
	}
}'

[ "$size" = 1 ] || exit 0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$tmp/latch" .
cp go.mod "$tmp/go.mod"; cp go.sum "$tmp/go.sum"
mkdir "$tmp/tree"; tar --exclude=./.git -cf - . | tar -xf - -C "$tmp/tree"
cat > "$tmp/tree/agent/api/zz_promsize.go" <<'GO'
package api

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// PromHandler links client_golang in as the metrics endpoint would.
func PromHandler() http.Handler {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "latch_update_state", Help: "h"}, []string{"state"})
	reg.MustRegister(g)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
GO
sed -i 's|^var nowFunc = time.Now|var nowFunc = time.Now\n\nvar _ = PromHandler|' "$tmp/tree/agent/api/metrics.go"
(cd "$tmp/tree" && go get -modfile="$tmp/go.mod" github.com/prometheus/client_golang/prometheus@v1.25.0 github.com/prometheus/client_golang/prometheus/promhttp@v1.25.0 >/dev/null 2>&1 &&
	CGO_ENABLED=0 go build -modfile="$tmp/go.mod" -trimpath -ldflags='-s -w' -o "$tmp/latch-prom" .)
a=$(stat -c %s "$tmp/latch"); b=$(stat -c %s "$tmp/latch-prom")
printf '\nlatch binary (-s -w): %d bytes hand-written metrics, %d bytes with client_golang: +%d bytes (+%.1f%%)\n' \
	"$a" "$b" $((b - a)) "$(echo "$a $b" | awk '{print ($2-$1)*100/$1}')"
