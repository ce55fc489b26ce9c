#!/bin/sh
# bench-containers.sh: latch's container path against the docker CLI, on one
# machine, with a dockerd and a docker-registry of its own (under a temp dir,
# own socket, free port; both stopped by pid at the end). Needs root, dockerd,
# docker, docker-registry, busybox-static and Go. Prints a table.
#
#   scripts/bench-containers.sh            # ~100 MB image (4 layers of 24 MB + busybox)
#   MB=20 scripts/bench-containers.sh      # smaller layers
set -eu
MB=${MB:-24}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/latch-bench-containers.XXXXXX)
sock=$work/docker.sock
D="docker -H unix://$sock"
dpid= rpid= apid=
cleanup() {
	[ -n "$apid" ] && kill "$apid" 2>/dev/null && wait "$apid" 2>/dev/null
	if [ -n "$dpid" ]; then
		$D ps -aq 2>/dev/null | xargs -r $D rm -f >/dev/null 2>&1 || true
		kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null || true
	fi
	[ -n "$rpid" ] && kill "$rpid" 2>/dev/null && wait "$rpid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT INT TERM
[ "$(id -u)" = 0 ] || { echo "bench-containers: needs root (dockerd)" >&2; exit 1; }

now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.2f\", $2 - $1}"; }
ts() { date -d "$1" +%s.%N; } # docker's RFC 3339 times

echo "building latch..." >&2
(cd "$here" && CGO_ENABLED=0 go build -o "$work/latch" .)

dockerd -H "unix://$sock" --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
	--iptables=false --ip-masq=false --ip-forward=false --bridge=none >"$work/dockerd.log" 2>&1 &
dpid=$!
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
mkdir -p "$work/reg"
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: %s}\n' "$work/reg" "$reg" >"$work/reg.yml"
docker-registry serve "$work/reg.yml" >"$work/reg.log" 2>&1 &
rpid=$!
for i in $(seq 100); do $D version >/dev/null 2>&1 && curl -fs "http://$reg/v2/" >/dev/null && break; sleep 0.1; done

echo "building the images..." >&2
mkdir -p "$work/base/bin" "$work/base/tmp" "$work/ctx"
cp /bin/busybox "$work/base/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/base/bin/$a"; done
tar -C "$work/base" -c . | $D import - bench/base:1 >/dev/null
for i in 1 2 3 4; do head -c $((MB << 20)) /dev/urandom >"$work/ctx/l$i"; done
head -c $((5 << 20)) /dev/urandom >"$work/ctx/small"
cat >"$work/ctx/Dockerfile" <<'DF'
FROM bench/base:1
COPY l1 /l1
COPY l2 /l2
COPY l3 /l3
COPY l4 /l4
COPY small /small
CMD ["/bin/sleep", "100000"]
DF
DOCKER_BUILDKIT=0 $D build -q -t "$reg/bench/app:1" "$work/ctx" >/dev/null
$D push -q "$reg/bench/app:1" >/dev/null
head -c $((5 << 20)) /dev/urandom >"$work/ctx/small" # the update: one 5 MB layer changes
DOCKER_BUILDKIT=0 $D build -q -t "$reg/bench/app:2" "$work/ctx" >/dev/null
$D push -q "$reg/bench/app:2" >/dev/null
ref1=$($D image inspect --format '{{index .RepoDigests 0}}' "$reg/bench/app:1")
ref2=$($D image inspect --format '{{index .RepoDigests 0}}' "$reg/bench/app:2")
id1=$($D image inspect --format '{{.Id}}' "$reg/bench/app:1")
size=$($D image inspect --format '{{.Size}}' "$reg/bench/app:1")
$D rmi -f "$reg/bench/app:1" "$reg/bench/app:2" bench/base:1 >/dev/null

# docker pull of image 1, from an empty engine.
t0=$(now); $D pull -q "$ref1" >/dev/null 2>&1; t1=$(now)
docker_pull=$(secs "$t0" "$t1")
$D rmi -f "$ref1" >/dev/null

# latch: download + load of image 1 (from the target's arrival to the image in the engine).
root=$work/dev
mkdir -p "$root"
target() { # release ref
	printf '{"apps":{"bench":{"release":"%s","services":{"app":{"image":"%s","network_mode":"none","stop_grace_period":"1s"}}}}}' "$1" "$2" >"$root/target.json.tmp"
	mv "$root/target.json.tmp" "$root/target.json"
}
api() { curl -fs --unix-socket "$root/run/latch/api.sock" "http://latch$1"; }
"$work/latch" agent --root "$root" --driver exec --target-file "$root/target.json" --docker-host "unix://$sock" \
	--insecure-registry "$reg" --health-wait 1s >"$work/agent.log" 2>&1 &
apid=$!
for i in $(seq 100); do api /v1/device >/dev/null 2>&1 && break; sleep 0.1; done
t0=$(now); target r1 "$ref1"
until $D image inspect "$id1" >/dev/null 2>&1; do sleep 0.05; done; t1=$(now)
latch_pull=$(secs "$t0" "$t1")
until api /v1/device | grep -q '"release":"bench=r1"'; do sleep 0.1; done
pulled1=$(api /metrics | awk '/^latch_image_pull_bytes_total/{print $2}')

# The update: one 5 MB layer changed.
old=latch_bench_app_r1
since=$(date +%s)
target r2 "$ref2"
until api /v1/device | grep -q '"release":"bench=r2"'; do sleep 0.1; done
pulled2=$(api /metrics | awk '/^latch_image_pull_bytes_total/{print $2}')
upd_bytes=$(awk "BEGIN{print $pulled2 - $pulled1}")
# The engine's events outlive the old container, which latch removes once the
# new one is healthy.
events=$($D events --since "$since" --until "$(date +%s)" --format '{{.Action}} {{.Actor.Attributes.name}} {{.TimeNano}}')
stopped=$(echo "$events" | awk -v n="$old" '$1 == "die" && $2 == n {print $3; exit}')
started=$(echo "$events" | awk '$1 == "start" && $2 == "latch_bench_app_r2" {print $3; exit}')
rss=$(awk '/VmHWM/{print $2}' "/proc/$apid/status")
kill "$apid"; wait "$apid" 2>/dev/null || true; apid=
latch_down=$(awk "BEGIN{printf \"%.2f\", ($started - $stopped) / 1e9}")

# docker stop && docker run, the same swap by hand.
$D rm -f latch_bench_app_r2 >/dev/null
$D run -d --name hand1 --network none "$ref1" >/dev/null 2>&1
$D stop -t 1 hand1 >/dev/null && $D run -d --name hand2 --network none "$ref2" >/dev/null 2>&1
hand_down=$(secs "$(ts "$($D inspect --format '{{.State.FinishedAt}}' hand1)")" "$(ts "$($D inspect --format '{{.State.StartedAt}}' hand2)")")

printf '\n%-52s %14s %14s %8s\n' "measure" "latch" "docker" "ratio"
printf '%-52s %14s %14s %8s\n' "pull of a $((size >> 20)) MiB image, $((4 + 2)) layers (s, wall)" "$latch_pull" "$docker_pull" "$(awk "BEGIN{printf \"%.2f\", $latch_pull / $docker_pull}")"
printf '%-52s %14s %14s %8s\n' "peak RSS of latch (KiB, VmHWM)" "$rss" "-" "-"
printf '%-52s %14s %14s %8s\n' "update changing one 5 MiB layer: bytes fetched" "$upd_bytes" "-" "-"
printf '%-52s %14s %14s %8s\n' "downtime, old stopped -> new running (s)" "$latch_down" "$hand_down" "$(awk "BEGIN{printf \"%.2f\", $latch_down / $hand_down}")"
