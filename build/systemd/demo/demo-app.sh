#!/bin/sh
# A service of the demo application "demo", as a release ships it: latch installs this file as
# /opt/demo/@SERVICE@ (release @RELEASE@) and starts demo-@SERVICE@.service. The release and
# service names are filled in when a release is made from this template.
#
# It behaves like an application written for balenaOS: during a critical section it holds its
# update lock at $BALENA_APP_LOCK_PATH (/tmp/balena/updates.lock, which latch's drop-in bind-mounts
# onto the service's own lock directory /tmp/latch/services/demo/@SERVICE@), created exclusively
# like lockfile(1) does, and removes it afterwards:
#   SIGUSR1  enter the critical section (take the lock)
#   SIGUSR2  leave it (remove the lock)
# Once it is ready for those signals it writes "<release> <pid>" to /run/demo-@SERVICE@.running.
release=@RELEASE@
service=@SERVICE@
lock=${BALENA_APP_LOCK_PATH:-/tmp/balena/updates.lock}
held=

enter() {
	if [ -n "$held" ]; then
		return
	fi
	if (set -C && echo "demo-$service pid $$" >"$lock") 2>/dev/null; then
		held=1
		echo "demo-$service: critical section: took $lock"
	else
		echo "demo-$service: could not take $lock" >&2
	fi
}

leave() {
	if [ -n "$held" ]; then
		rm -f "$lock"
		held=
		echo "demo-$service: critical section over: removed $lock"
	fi
}

trap enter USR1
trap leave USR2
trap 'leave; exit 0' TERM INT

echo "demo-$service: release $release running as pid $$ (update lock $lock)"
echo "$release $$" >"/run/demo-$service.running"
while :; do
	# wait returns when a trapped signal arrives; the handler has run by then.
	sleep 3600 &
	wait $!
	kill $! 2>/dev/null
done
