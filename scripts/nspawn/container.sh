#!/bin/sh
# container.sh: shell helpers for a throw-away systemd container (the same recipe as the Go helper
# latch/systemd/internal/nspawn). Source it, or run it as a command:
#
#   . scripts/nspawn/container.sh
#   ct_boot NAME [ARCH]      boot an overlay of the cached rootfs (built when missing); prints the root folder
#   ct_exec NAME CMD...      run CMD inside (nsenter into the container's PID 1)
#   ct_copy NAME SRC DST     copy a host file into the container
#   ct_wait NAME             wait until systemd is running or degraded (60 s at most)
#   ct_reboot NAME           systemctl reboot inside, wait until it runs again
#   ct_stop NAME             power off, wait, unmount and delete the container's folder
#
#   scripts/nspawn/container.sh boot NAME    (same names without ct_)
#
# State lives in ${LATCH_CT_DIR:-/tmp/latch-ct}/NAME: root/ (the overlay), nspawn.pid, console.log.
# A reboot inside the container (nspawn exit status 133) boots it again on the same root.
set -eu

ct_dir() { echo "${LATCH_CT_DIR:-/tmp/latch-ct}/$1"; }

ct_pid1() {
	d=$(ct_dir "$1")
	[ -f "$d/nspawn.pid" ] || return 1
	pgrep -P "$(cat "$d/nspawn.pid")" -x systemd
}

ct_boot() {
	name=$1 arch=${2:-amd64}
	here=$(cd "$(dirname "$0")" 2>/dev/null && pwd)
	script=${LATCH_ROOTFS_SH:-$here/rootfs.sh}
	[ -f "$script" ] || script=scripts/nspawn/rootfs.sh
	rootfs=${LATCH_NSPAWN_ROOTFS:-$(sh "$script" "$arch")}
	d=$(ct_dir "$name")
	mkdir -p "$d/root" "$d/upper" "$d/work"
	mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$d/upper,workdir=$d/work" "$d/root"
	# The loop relaunches nspawn when the container reboots (exit status 133).
	(
		while :; do
			systemd-nspawn -q -b --register=no --keep-unit --console=passive --machine="$name" \
				-D "$d/root" >>"$d/console.log" 2>&1 &
			echo $! >"$d/nspawn.pid"
			rc=0
			wait $! || rc=$?
			[ "$rc" = 133 ] || break
		done
	) &
	echo $! >"$d/loop.pid"
	ct_wait "$name"
	echo "$d/root"
}

ct_wait() {
	i=0
	while [ $i -lt 600 ]; do
		if c=$(ct_pid1 "$1" 2>/dev/null); then
			s=$(nsenter -t "$c" -a systemctl is-system-running 2>/dev/null || true)
			case $s in running | degraded) return 0 ;; esac
		fi
		sleep 0.1
		i=$((i + 1))
	done
	echo "container $1 did not come up; console: $(ct_dir "$1")/console.log" >&2
	return 1
}

ct_reboot() {
	d=$(ct_dir "$1")
	before=$(cat "$d/nspawn.pid")
	ct_exec "$1" systemctl reboot || true
	i=0
	while [ "$(cat "$d/nspawn.pid")" = "$before" ]; do
		[ $i -lt 600 ] || { echo "container $1 did not reboot" >&2; return 1; }
		sleep 0.1
		i=$((i + 1))
	done
	ct_wait "$1"
}

ct_exec() {
	name=$1
	shift
	nsenter -t "$(ct_pid1 "$name")" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root LANG=C.UTF-8 "$@"
}

ct_copy() {
	d=$(ct_dir "$1")
	mkdir -p "$d/root$(dirname "$3")"
	cp -p "$2" "$d/root$3"
}

ct_stop() {
	d=$(ct_dir "$1")
	[ -d "$d" ] || return 0
	if [ -f "$d/loop.pid" ]; then
		loop=$(cat "$d/loop.pid")
		# Stop the relaunch loop first, so that the power-off is final.
		kill "$loop" 2>/dev/null || true
		ct_exec "$1" systemctl poweroff 2>/dev/null || true
		i=0
		while [ -f "$d/nspawn.pid" ] && kill -0 "$(cat "$d/nspawn.pid")" 2>/dev/null && [ $i -lt 300 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		kill -9 "$(cat "$d/nspawn.pid")" 2>/dev/null || true
	fi
	mountpoint -q "$d/root" && umount "$d/root"
	rm -rf "$d"
}

case ${0##*/} in
container.sh)
	[ $# -ge 1 ] || { sed -n '2,17p' "$0"; exit 2; }
	cmd=$1
	shift
	"ct_$cmd" "$@"
	;;
esac
