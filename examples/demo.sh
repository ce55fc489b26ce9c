#!/usr/bin/env bash
# latch's main job on the bundled example, on this machine, without root:
# a two-service kiosk app runs release 2026.11.1; release 2026.11.2 arrives
# while the kiosk holds its update lock (a payment in progress); latch
# downloads it at once but waits, and applies it the moment the lock is
# released. Everything lives under one temporary folder (--root).
#
# Usage: examples/demo.sh [--keep]     (--keep leaves the folder for a look)
set -euo pipefail
cd "$(dirname "$0")/.."
keep=${1:-}

work=$(mktemp -d "${TMPDIR:-/tmp}/latch-demo.XXXXXX")
root=$work/device
mkdir -p "$root"/{opt,run,var/log}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building latch"
CGO_ENABLED=0 go build -o "$work/latch" .
latch=$work/latch
export LATCH_ROOT=$root # every latch command below finds the device here

# target RELEASE: the target state asking for that release of the kiosk,
# with file:// sources, their sha256, and exec-driver commands.
target() {
  local rel=$1 svcs="" sep=""
  for s in backend ui; do
    local src=$PWD/examples/kiosk/$rel/$s
    local sum; sum=$(sha256sum "$src" | cut -d' ' -f1)
    local bin=$root/opt/kiosk/$s pid=$root/run/$s.pid
    svcs+="$sep\"$s\": {
        \"files\": [{\"source\": \"file://$src\", \"sha256\": \"$sum\", \"path\": \"$bin\", \"mode\": \"0755\"}],
        \"start\": \"setsid $bin >> $root/var/log/$s.log 2>&1 < /dev/null & echo \$! > $pid\",
        \"stop\": \"if [ -f $pid ]; then p=\$(cat $pid); kill \$p 2>/dev/null; while kill -0 \$p 2>/dev/null; do sleep 0.1; done; rm -f $pid; fi\",
        \"health\": \"kill -0 \$(cat $pid)\"
      }"
    sep=", "
  done
  cat <<EOF
{"apps": {"kiosk": {"release": "$rel", "services": {$svcs}}},
 "config": {"KIOSK_URL": "http://localhost:8080"}}
EOF
}
publish() { target "$1" > "$work/target.json.tmp" && mv "$work/target.json.tmp" "$work/target.json"; }

wait_release() {
  for _ in $(seq 300); do
    if "$latch" status --json 2>/dev/null | grep -q "\"release\": *\"kiosk=$1\""; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for kiosk $1; agent log:" >&2; cat "$work/agent.log" >&2; return 1
}

say "starting the agent with release 2026.11.1 (exec driver, state in $root)"
publish 2026.11.1
"$latch" agent --driver exec --target-file "$work/target.json" --health-wait 1s > "$work/agent.log" 2>&1 &
agent=$!
cleanup() {
  kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  for s in backend ui; do [ -f "$root/run/$s.pid" ] && kill "$(cat "$root/run/$s.pid")" 2>/dev/null; done
  if [ "$keep" = --keep ]; then echo "left in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
wait_release 2026.11.1
"$latch" status

say "the kiosk starts a payment: it takes its update lock for 5 seconds"
"$latch" lock --service kiosk/ui -- sleep 5 &
locker=$!
for _ in $(seq 50); do "$latch" locks --json | grep -q '"state": *"held"' && break; sleep 0.1; done
"$latch" locks

say "release 2026.11.2 is published: latch downloads it, then waits for the lock"
publish 2026.11.2
for _ in $(seq 100); do "$latch" status --json | grep -q '"update_downloaded": *true' && break; sleep 0.1; done
"$latch" status

say "the payment ends: the lock is released and latch applies the update at once"
wait "$locker"
wait_release 2026.11.2
"$latch" status
say "what happened (latch journal)"
"$latch" journal --limit 12
say "the services' own logs"
tail -n 3 "$root"/var/log/*.log
