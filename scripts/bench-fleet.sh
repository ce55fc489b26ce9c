#!/bin/sh
# bench-fleet.sh: N real agents (exec driver, each under its own --root, a
# client certificate each, a root of trust) on one TLS mosquitto of its own
# (under a temp dir, a free port, stopped by pid), against the same N agents
# polling a static HTTP server with --poll 5s. Needs root, mosquitto,
# mosquitto_sub, openssl, python3 and Go. Prints a table.
#
#   scripts/bench-fleet.sh              # 100 agents, a 60 s idle period
#   N=20 IDLE=30 scripts/bench-fleet.sh
#   TMPFS=1 scripts/bench-fleet.sh      # the agents' journals on a tmpfs (no shared disk)
#
# Figures:
# - publish -> applied: from just before `latch fleet publish` (or before the
#   new target.json is in place for the pollers) to the moment the release's
#   start command ran on each agent (it appends the time to a file); for the
#   fleet also to the moment the broker delivered the agent's state showing the
#   release applied (idle, kiosk=2) to a subscriber. p50 and p99 over agents.
# - idle messages: over IDLE seconds with the fleet settled, the PUBLISH
#   messages a subscriber on latch/# receives live (mosquitto_sub -R: the
#   retained ones it gets on subscribing are not counted), and
#   the packets of any kind the broker counts received ($SYS, which includes
#   the agents' keep-alive pings), less the bench's own clients; per agent,
#   scaled to an hour. For the pollers, the GET requests the HTTP server
#   logged over min(IDLE, 30) seconds, scaled the same way.
# - idle RSS and CPU of one agent with --fleet, and of one agent without it
#   (--target-file), from /proc/PID/status and /proc/PID/stat over IDLE seconds.
# - binary size (go build -ldflags='-s -w', CGO_ENABLED=0) of this tree, of
#   the commit before the agent's fleet wiring (the operator's latch fleet is
#   in), and of the commit before any fleet code.
set -eu
# TMPFS=1: every agent's journal on a tmpfs of a private mount namespace, so
# that N agents do not queue for one disk's fsyncs (each board has its own).
if [ "${TMPFS:-0}" = 1 ]; then
	exec unshare -m --propagation private env TMPFS=inside "$0" "$@"
fi
N=${N:-100}
IDLE=${IDLE:-60}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/latch-bench-fleet.XXXXXX)
[ "${TMPFS:-0}" = inside ] && mount -t tmpfs tmpfs "$work"
chmod 755 "$work"
mpid= hpid= spid=
cleanup() {
	for f in "$work"/pids.*; do
		[ -f "$f" ] || continue
		while read -r p; do kill "$p" 2>/dev/null || true; done <"$f"
	done
	for p in $spid $hpid $mpid; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	cd /
	if [ "${TMPFS:-0}" = inside ]; then umount "$work" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT INT TERM
[ "$(id -u)" = 0 ] || { echo "bench-fleet: needs root (mosquitto drops to its user; the agents run as root)" >&2; exit 1; }
for tool in mosquitto mosquitto_sub openssl python3 go; do
	command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "bench-fleet: $tool is missing" >&2; exit 1; }
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

now() { date +%s.%N; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "building latch (this tree and two older commits)..." >&2
size_of() { # size_of DIR: the stripped static binary's bytes
	(cd "$1" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/size.bin" . ) && stat -c %s "$work/size.bin"
}
(cd "$here" && CGO_ENABLED=0 go build -o "$work/latch" .)
L=$work/latch
size_head=$(size_of "$here")
size_wired="?" size_nofleet="?"
if git -C "$here" rev-parse -q --verify HEAD >/dev/null 2>&1; then
	wiring=$(git -C "$here" log --format=%H --diff-filter=A -- agent/fleetlink.go | tail -1)
	first=$(git -C "$here" log --format=%H --diff-filter=A -- agent/fleet/device.go | tail -1)
	for c in "$wiring" "$first"; do
		[ -n "$c" ] || continue
		mkdir -p "$work/src-$c"
		git -C "$here" archive "$c^" | tar -x -C "$work/src-$c"
	done
	[ -n "$wiring" ] && size_wired=$(size_of "$work/src-$wiring")
	[ -n "$first" ] && size_nofleet=$(size_of "$work/src-$first")
fi

echo "certificates for the broker, $N devices and the operator..." >&2
pki=$work/pki
mkdir -p "$pki" && cd "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=bench-ca \
	-keyout ca.key -out ca.pem 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >broker.ext
printf 'extendedKeyUsage=clientAuth\n' >client.ext
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout broker.key -out broker.csr 2>/dev/null
openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile broker.ext -out broker.pem 2>/dev/null
i=0
while [ $i -lt "$N" ]; do
	id=$(printf 'dev-%03d' $i)
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$id" -keyout "$id.key" -out "$id.csr" 2>/dev/null
	openssl x509 -req -in "$id.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out "$id.pem" 2>/dev/null
	i=$((i + 1))
done
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=operator -keyout operator.key -out operator.csr 2>/dev/null
openssl x509 -req -in operator.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out operator.pem 2>/dev/null
printf 'user operator\ntopic readwrite latch/#\ntopic read $SYS/#\n\npattern readwrite latch/devices/%%u/#\npattern read latch/fleets/#\n' >acl

port=$(freeport)
cat >mosquitto.conf <<EOF
listener $port 127.0.0.1
user root
sys_interval 1
persistence false
cafile $pki/ca.pem
certfile $pki/broker.pem
keyfile $pki/broker.key
require_certificate true
use_identity_as_username true
acl_file $pki/acl
EOF
"$MOSQUITTO" -c "$pki/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
mpid=$!
OPSUB="-h 127.0.0.1 -p $port --cafile $pki/ca.pem --cert $pki/operator.pem --key $pki/operator.key"
OP="--broker mqtts://127.0.0.1:$port --mqtt-ca $pki/ca.pem --mqtt-cert $pki/operator.pem --mqtt-key $pki/operator.key"
for i in $(seq 100); do mosquitto_sub $OPSUB -t '$SYS/broker/version' -C 1 -W 1 >/dev/null 2>&1 && break; sleep 0.1; done

echo "keys, root of trust, releases..." >&2
pub=$work/pub
mkdir -p "$pub" && cd "$pub"
$L key gen root1 >/dev/null
$L key gen ci >/dev/null
$L root init --root-key root1.pub --root-threshold 1 --targets-key ci.pub --targets-threshold 1 \
	--fleet bench --expires 30d -o root.json >/dev/null
$L root sign --key root1.key root.json >/dev/null
release() { # release R: build/target.json of release R (start appends the time to $FLEETBENCH_DEV/applied-R)
	cat >"draft-$1.json" <<EOF
{"apps": {"kiosk": {"release": "$1", "services": {"ui": {
  "start": "date +%s.%N >> \"\$FLEETBENCH_DEV/applied-$1\"", "stop": "true"}}}}}
EOF
	$L release build --out build --base-url http://127.0.0.1:1/unused --root root.json --key ci.key "draft-$1.json" >/dev/null
}

# start_agents MODE: N agents, MODE fleet (--fleet) or poll (--target-url, --poll 5s)
start_agents() {
	: >"$work/pids.$1"
	i=0
	while [ $i -lt "$N" ]; do
		id=$(printf 'dev-%03d' $i)
		r=$work/$1/$id
		mkdir -p "$r"
		if [ "$1" = fleet ]; then
			src="--fleet mqtts://127.0.0.1:$port --fleet-name bench --mqtt-ca $pki/ca.pem --mqtt-cert $pki/$id.pem --mqtt-key $pki/$id.key"
		else
			src="--target-url http://127.0.0.1:$hport/target.json --poll 5s"
		fi
		FLEETBENCH_DEV=$r NOTIFY_SOCKET= $L agent --root "$r" --driver exec --health-wait 50ms \
			--trust-root "$pub/root.json" --device-id "$id" $src >"$r/agent.log" 2>&1 &
		echo $! >>"$work/pids.$1"
		i=$((i + 1))
	done
}
stop_agents() {
	while read -r p; do kill "$p" 2>/dev/null || true; done <"$work/pids.$1"
	while read -r p; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done <"$work/pids.$1"
	rm -f "$work/pids.$1"
}
# wait_applied MODE R: until every agent's start of release R ran (120 s at most)
wait_applied() {
	deadline=$(($(date +%s) + 120))
	while :; do
		n=$(ls "$work/$1"/*/applied-"$2" 2>/dev/null | wc -l)
		[ "$n" -ge "$N" ] && return 0
		[ "$(date +%s)" -gt "$deadline" ] && { echo "bench-fleet: only $n of $N $1 agents applied release $2 within 120s" >&2; exit 1; }
		sleep 0.2
	done
}
# stats T0 FILES...: p50 and p99 of (first line of each file - T0), in ms
stats() {
	t0=$1
	shift
	python3 - "$t0" "$@" <<'EOF'
import sys
t0 = float(sys.argv[1])
d = sorted((float(open(f).readline()) - t0) * 1000 for f in sys.argv[2:])
p = lambda q: d[min(len(d) - 1, int(round(q * (len(d) - 1))))]
print("%.0f %.0f" % (p(0.50), p(0.99)))
EOF
}

echo "fleet: $N agents on the broker..." >&2
start_agents fleet
release 1
$L fleet publish $OP --fleet bench build/target.json >/dev/null
wait_applied fleet 1
sleep 2 # the states of release 1 settle
release 2
mosquitto_sub $OPSUB -t 'latch/devices/+/state' -F '%U %t %p' >"$work/states.log" 2>/dev/null &
spid=$!
sleep 1
t0=$(now)
$L fleet publish $OP --fleet bench build/target.json >/dev/null
wait_applied fleet 2
fleet_applied=$(stats "$t0" "$work"/fleet/*/applied-2)
# the first state per device that shows kiosk=2 idle, as the subscriber got it
deadline=$(($(date +%s) + 60))
while :; do
	fleet_state=$(python3 - "$t0" "$N" "$work/states.log" <<'EOF'
import json, sys
t0, n = float(sys.argv[1]), int(sys.argv[2])
first = {}
for line in open(sys.argv[3]):
    parts = line.split(" ", 2)
    if len(parts) < 3:
        continue
    try:
        ts, st = float(parts[0]), json.loads(parts[2])
    except ValueError:
        continue
    dev = parts[1].split("/")[2]
    if st.get("release") == "kiosk=2" and st.get("status") == "idle" and dev not in first:
        first[dev] = (ts - t0) * 1000
if len(first) < n:
    print("")
else:
    d = sorted(first.values())
    p = lambda q: d[min(len(d) - 1, int(round(q * (len(d) - 1))))]
    print("%.0f %.0f" % (p(0.50), p(0.99)))
EOF
)
	[ -n "$fleet_state" ] && break
	[ "$(date +%s)" -gt "$deadline" ] && { echo "bench-fleet: not every state showed kiosk=2 idle within 60s" >&2; exit 1; }
	sleep 0.5
done
kill $spid 2>/dev/null || true
wait $spid 2>/dev/null || true
spid=

echo "fleet idle for ${IDLE}s: messages, RSS and CPU..." >&2
# one agent without --fleet beside, for its idle cost
offroot=$work/off
mkdir -p "$offroot"
cp build/target.json build/target.json.sig "$offroot/"
FLEETBENCH_DEV=$offroot NOTIFY_SOCKET= $L agent --root "$offroot" --driver exec --health-wait 50ms \
	--trust-root "$pub/root.json" --device-id dev-off --target-file "$offroot/target.json" >"$offroot/agent.log" 2>&1 &
echo $! >"$work/pids.off"
offpid=$!
sleep 3
sys() { mosquitto_sub $OPSUB -t "$1" -C 1 -W 3 2>/dev/null || echo 0; }
onpid=$(head -1 "$work/pids.fleet")
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
recv0=$(sys '$SYS/broker/messages/received')
pubrecv0=$(sys '$SYS/broker/publish/messages/received')
mosquitto_sub $OPSUB -R -t 'latch/#' -F '%t' >"$work/idle.log" 2>/dev/null &
spid=$!
on_cpu0=$(cpu "$onpid") off_cpu0=$(cpu "$offpid")
sleep "$IDLE"
on_cpu1=$(cpu "$onpid") off_cpu1=$(cpu "$offpid")
on_rss=$(rss "$onpid") off_rss=$(rss "$offpid")
kill $spid 2>/dev/null || true
wait $spid 2>/dev/null || true
spid=
recv1=$(sys '$SYS/broker/messages/received')
pubrecv1=$(sys '$SYS/broker/publish/messages/received')
idle_pub=$(wc -l <"$work/idle.log")
tck=$(getconf CLK_TCK)
stop_agents off
stop_agents fleet

echo "polling: $N agents, --poll 5s, a static HTTP server..." >&2
site=$work/site
mkdir -p "$site"
hport=$(freeport)
(cd "$site" && exec python3 -m http.server "$hport" --bind 127.0.0.1 >"$work/http.log" 2>&1) &
hpid=$!
for i in $(seq 100); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$hport/')" 2>/dev/null && break; sleep 0.1; done
release 3
cp build/target.json.sig "$site/target.json.sig.tmp" && mv "$site/target.json.sig.tmp" "$site/target.json.sig"
cp build/target.json "$site/target.json.tmp" && mv "$site/target.json.tmp" "$site/target.json"
start_agents poll
wait_applied poll 3
sleep 6 # every poller has polled release 3 again
release 4
cp build/target.json "$site/target.json.new"
cp build/target.json.sig "$site/target.json.sig.new"
t0=$(now)
mv "$site/target.json.sig.new" "$site/target.json.sig"
mv "$site/target.json.new" "$site/target.json"
wait_applied poll 4
poll_applied=$(stats "$t0" "$work"/poll/*/applied-4)
pwin=$((IDLE < 30 ? IDLE : 30))
sleep 6
req0=$(grep -c '"GET ' "$work/http.log" || true)
sleep "$pwin"
req1=$(grep -c '"GET ' "$work/http.log" || true)
stop_agents poll

set -- $fleet_applied
fa50=$1 fa99=$2
set -- $fleet_state
fs50=$1 fs99=$2
set -- $poll_applied
pa50=$1 pa99=$2
agents_recv=$(python3 -c "print(max(0, $recv1 - $recv0))")
python3 - <<EOF
n, idle = $N, $IDLE
def ratio(a, b):
    return "%.1fx" % (a / b) if b else "-"
print("%-52s %12s %12s %8s" % ("", "fleet", "poll 5s", "ratio"))
print("%-52s %12s %12s %8s" % ("publish -> start ran, p50 (ms)", "$fa50", "$pa50", ratio($pa50, $fa50)))
print("%-52s %12s %12s %8s" % ("publish -> start ran, p99 (ms)", "$fa99", "$pa99", ratio($pa99, $fa99)))
print("%-52s %12s %12s" % ("publish -> state applied at the broker, p50/p99 (ms)", "$fs50/$fs99", "-"))
own = 6  # the bench's own clients between the two \$SYS reads: CONNECT, SUBSCRIBE, PINGREQ, DISCONNECT of its subscriber
pkts = max(0, $agents_recv - own)
print("%-52s %12.1f %12s" % ("idle PUBLISH from the agents, per agent-hour", $idle_pub / n * 3600 / idle, "-"))
print("%-52s %12.1f %12s" % ("idle packets the broker received, per agent-hour", pkts / n * 3600 / idle, "-"))
print("%-52s %12s %12.0f" % ("idle HTTP requests from the agents, per agent-hour", "-", ($req1 - $req0) / n * 3600 / $pwin))
tck = $tck
on_cpu = ($on_cpu1 - $on_cpu0) / tck / idle * 100
off_cpu = ($off_cpu1 - $off_cpu0) / tck / idle * 100
print("%-52s %12s %12s %8s" % ("", "--fleet", "no --fleet", "ratio"))
print("%-52s %12d %12d %8s" % ("idle RSS of one agent (KiB)", $on_rss, $off_rss, ratio($on_rss, $off_rss)))
print("%-52s %11.3f%% %11.3f%%" % ("idle CPU of one agent, over %ds" % idle, on_cpu, off_cpu))
print("%-52s %12s %12s %12s" % ("binary size, -s -w (bytes)", "this tree", "before wiring", "no fleet"))
print("%-52s %12s %12s %12s" % ("", "$size_head", "$size_wired", "$size_nofleet"))
print("(N=%d agents, one TLS mosquitto, every process on this machine's %s cores; idle period %ds; journals on %s)" % (n, "$(nproc)", idle, "tmpfs" if "${TMPFS:-0}" == "inside" else "this disk"))
EOF
