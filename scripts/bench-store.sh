#!/bin/sh
# bench-store.sh: run the journal's benchmarks and print each against its
# raw-bbolt baseline from the same run.
#   scripts/bench-store.sh [go test -benchtime value, default 1s]
set -eu
cd "$(dirname "$0")/.."
go test ./store -run '^$' -bench . -benchtime "${1:-1s}" -count 1 |
awk '
/^Benchmark/ {
	name = $1; sub(/-[0-9]+$/, "", name)
	split(name, p, "/"); group = p[1]; sub_ = p[2]
	ns[name] = $3
	if (sub_ ~ /^raw-bbolt/) base[group] = $3
	order[++n] = name
}
END {
	printf "%-45s %14s %10s\n", "benchmark", "ns/op", "x baseline"
	for (i = 1; i <= n; i++) {
		name = order[i]; split(name, p, "/")
		r = (p[1] in base) ? sprintf("%.2f", ns[name] / base[p[1]]) : "-"
		printf "%-45s %14d %10s\n", name, ns[name], r
	}
}'
