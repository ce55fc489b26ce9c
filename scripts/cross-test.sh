#!/usr/bin/env bash
# cross-test.sh [ARCH...] [-- PKG...]: run latch's whole test suite for the boards' CPUs.
#
# ARCH is arm64, armv7, armv6 (under qemu-user) or 386 (natively); default all
# four. PKG (default ./...) narrows the packages, as `go list` takes them. Each package's test binary is cross-compiled (`go test -c`) and run
# from the package's directory; armv6 runs with QEMU_CPU=arm1176, a CPU without
# ARMv7 instructions, which the script proves once by checking that a GOARM=7
# binary dies there with SIGILL while the GOARM=6 one runs.
#
# The test binaries see:
#   LATCH_CROSS=1      set for every ARCH: long randomized sweeps run short
#                      (the native amd64 suite runs them in full)
#   LATCH_EMULATED=1   set under qemu-user: a test that needs the host's own
#                      tools (systemd-nspawn, qemu-system, ...) must t.Skip with a
#                      message saying what was not tested
#   LATCH_BIN=PATH     the latch binary built for the same ARCH: a test that
#                      runs the latch binary must use it when set (there is no Go
#                      toolchain for a foreign ARCH under emulation), and build
#                      it only when LATCH_BIN is unset
# binfmt_misc gets qemu-aarch64 and qemu-arm registered (kernel-wide) when they
# are not, so that a test can exec a foreign binary or /proc/self/exe.
#
# LATCH_CROSS_TIMEOUT (default 10m) is each test binary's -test.timeout.
# LATCH_CROSS_JOBS (default 2) ARCHes run at a time, each printing its
# output when it ends; the packages of one ARCH run one after the other.
# Each test binary runs with -test.v=test2json through `go tool test2json`: its
# events go to PKG.json in the work directory, its -v text to PKG.log.
# LATCH_CROSS_OUT=FILE appends the -v text of every package's final run to
# FILE, each after a line "### cross ARCH PKG"; LATCH_CROSS_JSON=FILE appends
# their test events (scripts/test.sh counts the tests from those, by Action).
#
# qemu-user 7.2 now and then hangs a threaded process's fork for good (the
# child never reaches exec). A failed package whose own run shows it runs once
# more, said on stderr, and must then pass: the evidence is an orphaned copy of
# that run's emulated binaries (its environment carries the run's
# LATCH_CROSS_RUN token, so it cannot be another package's or another
# cross-test's) with every thread waiting on a futex, or that run's test
# binary timing out with a goroutine stuck in syscall.forkExec. The totals
# name every rerun and the tests its first run failed.
#
# Prints a table: arch, packages passed / failed / without tests, tests passed,
# failed and skipped (from the test events), reruns, time. Exits non-zero if
# any package fails. Logs stay in the work directory printed at the start when
# something fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
arches=() pkgargs=()
while (($#)); do
	if [[ $1 == -- ]]; then
		shift
		pkgargs=("$@")
		break
	fi
	arches+=("$1")
	shift
done
((${#arches[@]})) || arches=(arm64 armv7 armv6 386)
((${#pkgargs[@]})) || pkgargs=(./...)
work=$(mktemp -d "${TMPDIR:-/tmp}/latch-cross.XXXXXX")
echo "cross-test: ${arches[*]}; logs in $work"
go=$(command -v go)
# testsum reads the test events (scripts/testsum), built for this machine.
"$go" build -o "$work/testsum" ./scripts/testsum
testsum() { "$work/testsum" "$@"; }

# binfmt registers the qemu-user interpreters for ARM with the kernel.
binfmt() {
	local d=/proc/sys/fs/binfmt_misc name
	mountpoint -q "$d" || mount -t binfmt_misc binfmt_misc "$d"
	for name in qemu-aarch64 qemu-arm; do
		[[ -e $d/$name ]] && continue
		cat "/usr/lib/binfmt.d/$name.conf" >"$d/register"
	done
}

# goenv ARCH: the go environment for ARCH.
goenv() {
	case $1 in
	arm64) echo "GOARCH=arm64" ;;
	armv7) echo "GOARCH=arm GOARM=7" ;;
	armv6) echo "GOARCH=arm GOARM=6" ;;
	386) echo "GOARCH=386" ;;
	*) echo "cross-test: unknown ARCH $1 (want arm64, armv7, armv6 or 386)" >&2; return 2 ;;
	esac
}

# runner ARCH: the command prefix that runs an ARCH binary.
runner() {
	case $1 in
	arm64) echo "qemu-aarch64-static" ;;
	armv7) echo "qemu-arm-static" ;;
	armv6) echo "qemu-arm-static -cpu arm1176" ;;
	386) echo "" ;;
	esac
}

# prove_armv6 proves that armv6 runs on a CPU without ARMv7 instructions: a
# GOARM=7 binary must die with SIGILL where the GOARM=6 build of it runs.
prove_armv6() {
	local d=$work/armv6-proof rc
	mkdir -p "$d"
	cat >"$d/main.go" <<'GO'
package main

import (
	"fmt"
	"sync/atomic"
)

func main() {
	var n atomic.Int32
	n.Add(1)
	fmt.Println("ran", n.Load())
}
GO
	printf 'module proof\n\ngo 1.21\n' >"$d/go.mod"
	(cd "$d" && CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 "$go" build -o v7 . &&
		CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=6 "$go" build -o v6 .)
	rc=0
	{ (qemu-arm-static -cpu arm1176 "$d/v7") >/dev/null 2>&1; } 2>/dev/null || rc=$? # the group keeps the shell's crash notice quiet
	if ((rc != 128 + 4)); then
		echo "cross-test: FAIL: a GOARM=7 binary under -cpu arm1176 exited $rc, want SIGILL ($((128 + 4)))" >&2
		return 1
	fi
	if ! out=$(qemu-arm-static -cpu arm1176 "$d/v6" 2>&1) || [[ $out != "ran 1" ]]; then
		echo "cross-test: FAIL: a GOARM=6 binary under -cpu arm1176: $out" >&2
		return 1
	fi
	echo "cross-test: armv6 CPU checked: GOARM=7 dies with SIGILL under arm1176, GOARM=6 runs"
}

# emulator_hang LOG: the test binary timed out with a goroutine stuck in
# syscall.forkExec for minutes: qemu-user's fork hang, not a test failure.
emulator_hang() {
	grep -q '^panic: test timed out' "$1" &&
		grep -A10 -E '^goroutine [0-9]+ \[syscall, [0-9]+ minutes\]:' "$1" | grep -q 'syscall\.forkExec'
}

# emulated BIN...: the pids of processes still running one of the emulated
# binaries BIN (qemu-user, invoked directly or through binfmt).
emulated() {
	local b
	for b in "$@"; do
		pgrep -f -x -- "(/usr/libexec/qemu-binfmt/[a-z0-9]+-binfmt-P $b |qemu-[a-z0-9]+-static( -cpu [a-z0-9]+)? )$b( .*)?" || true
	done
}

# ours TOKEN PID: whether PID's environment carries LATCH_CROSS_RUN=TOKEN,
# that is whether it was started by the run of that token (a fork that never
# reached exec keeps its parent's environment).
ours() {
	grep -qzxF "LATCH_CROSS_RUN=$1" "/proc/$2/environ" 2>/dev/null
}

# hung_forks TOKEN BIN...: once the test binary of the run TOKEN has ended,
# describe the copies of BIN that a fork of that run left behind when it hung
# in the emulator: started by that run, orphaned, every thread waiting on a
# futex, still running BIN since it never reached exec.
hung_forks() {
	local token=$1 pid t all out=
	shift
	for pid in $(emulated "$@"); do
		ours "$token" "$pid" || continue
		all=1
		for t in /proc/"$pid"/task/*; do
			[[ $(cat "$t/wchan" 2>/dev/null) == futex_do_wait ]] || all=
		done
		if [[ -n $all && $(awk '/^PPid:/ {print $2}' /proc/"$pid"/status 2>/dev/null) == 1 ]]; then
			out+="pid $pid, orphaned, every thread in futex_do_wait: $(tr '\0' ' ' </proc/"$pid"/cmdline | cut -c1-160); "
		fi
	done
	printf '%s' "$out"
}

# reap BIN...: kill what is left of the emulated binaries once a test binary
# ended (a copy that a hung fork left behind never reached exec).
reap() {
	local pid
	for pid in $(emulated "$@"); do
		kill -KILL "$pid" 2>/dev/null || true
	done
}

# run_pkg: run the package's test binary $bin from $pdir as the run $token:
# its test events in $json, its -v text in $log; the status is the binary's.
run_pkg() {
	local rc
	(cd "$pdir" && env "${testenv[@]}" LATCH_CROSS_RUN="$token" "${run[@]}" "$bin" -test.short -test.v=test2json \
		-test.timeout="${LATCH_CROSS_TIMEOUT:-10m}") 2>&1 | "$go" tool test2json -t -p "$p" >"$json"
	rc=${PIPESTATUS[0]}
	testsum text "$json" >"$log"
	return "$rc"
}

# failed_tests JSON: the names of the tests that failed in JSON, comma-separated.
failed_tests() {
	local names
	names=$(testsum failures "$1" | sed -n 's/^--- FAIL: \([^ ]*\) .*/\1/p' | paste -sd, | sed 's/,/, /g')
	printf '%s' "${names:-no test failed (the binary itself did)}"
}

for a in "${arches[@]}"; do goenv "$a" >/dev/null; done
if [[ " ${arches[*]} " == *" arm"* ]]; then
	binfmt
fi
mapfile -t pkgs < <("$go" list "${pkgargs[@]}")
# run_arch ARCH: every package's tests for ARCH. Its table row goes to
# $work/ARCH.row, its reruns to ARCH.reruns, its -v text and test events to
# ARCH.out and ARCH.events; it fails if a package failed.
run_arch() {
	local a=$1
	t0=$EPOCHREALTIME
	read -ra genv <<<"$(goenv "$a")"
	read -ra run <<<"$(runner "$a")"
	dir=$work/$a
	mkdir -p "$dir"
	pass=0 fail=0 none=0 reruns=0 tpass=0 tfail=0 tskip=0
	if [[ $a == armv6 ]] && ! prove_armv6; then
		fail=$((fail + 1))
	fi
	# LATCH_CROSS: the randomized crash test runs its long sweep in the native
	# amd64 suite; the other CPUs run a short one.
	testenv=(LATCH_CROSS=1)
	if [[ $a != 386 ]]; then
		testenv+=(LATCH_EMULATED=1)
	fi
	[[ $a == armv6 ]] && testenv+=(QEMU_CPU=arm1176)
	if env CGO_ENABLED=0 GOOS=linux "${genv[@]}" "$go" build -trimpath -o "$dir/latch" . >"$dir/latch.build.log" 2>&1; then
		testenv+=(LATCH_BIN="$dir/latch")
	else
		echo "cross-test: $a: the latch binary does not build (LATCH_BIN unset); see $dir/latch.build.log" >&2
	fi
	for p in "${pkgs[@]}"; do
		name=${p//\//_}
		bin=$dir/$name.test
		log=$dir/$name.log json=$dir/$name.json
		token="$a:$p:1:$$:$RANDOM"
		if ! env CGO_ENABLED=0 GOOS=linux "${genv[@]}" "$go" test -c -o "$bin" "$p" >"$log" 2>&1; then
			echo "FAIL $a $p (build)"
			sed 's/^/    /' "$log"
			fail=$((fail + 1))
			continue
		fi
		if [[ ! -e $bin ]]; then
			none=$((none + 1))
			continue
		fi
		pdir=$("$go" list -f '{{.Dir}}' "$p")
		rc=0
		run_pkg || rc=$?
		hung=
		if ((rc != 0)) && [[ -n ${run[*]} ]]; then
			hung=$(hung_forks "$token" "$bin" "$dir/latch")
			if [[ -z $hung ]] && emulator_hang "$log"; then
				hung="the test binary: a goroutine stuck in syscall.forkExec until the timeout"
			fi
		fi
		reap "$bin" "$dir/latch"
		if [[ -n $hung ]]; then
			# qemu-user (7.2) now and then hangs a threaded process's fork for
			# good: the child never reaches exec. That is the emulator, not
			# latch; the package runs once more and must then pass in full.
			mv "$log" "$log.hung"
			mv "$json" "$json.hung"
			first=$(failed_tests "$json.hung")
			echo "RERUN $a $p: the emulator hung a fork before exec ($hung); first run failed: $first; running the package again" >&2
			reruns=$((reruns + 1))
			echo "$a $p: first run failed: $first" >>"$work/$a.reruns"
			token="$a:$p:2:$$:$RANDOM"
			rc=0
			run_pkg || rc=$?
			reap "$bin" "$dir/latch"
		fi
		read -r np nf ns _ <<<"$(testsum count "$json")"
		tpass=$((tpass + np)) tfail=$((tfail + nf)) tskip=$((tskip + ns))
		if [[ -n ${LATCH_CROSS_OUT:-} ]]; then
			{ echo "### cross $a $p"; cat "$log"; } >>"$work/$a.out"
		fi
		if [[ -n ${LATCH_CROSS_JSON:-} ]]; then
			cat "$json" >>"$work/$a.events"
		fi
		if ((rc == 0)); then
			pass=$((pass + 1))
		else
			echo "FAIL $a $p (exit $rc)"
			testsum failures "$json" | head -60 | sed "s/\$/   [$a]/"
			fail=$((fail + 1))
		fi
	done
	printf '%-6s %6d %6d %8d %7d/%d/%d %6d %8ss\n' "$a" "$pass" "$fail" "$none" "$tpass" "$tfail" "$tskip" "$reruns" \
		"$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')" >"$work/$a.row"
	((fail == 0))
}

# The architectures run LATCH_CROSS_JOBS (default 2) at a time, each in its own
# directory with its own binaries (packages within one run one after the
# other, as in the native suite); each one's output is printed when it ends.
jobs_max=${LATCH_CROSS_JOBS:-2}
running=() started=()
failed=0
for a in "${arches[@]}"; do
	while ((${#running[@]} >= jobs_max)); do
		wait -n || true
		still=()
		for b in "${running[@]}"; do
			if [[ -f $work/$b.rc ]]; then
				cat "$work/$b.stdout"
			else
				still+=("$b")
			fi
		done
		running=("${still[@]}")
	done
	echo "cross-test: $a started"
	(
		rc=0
		run_arch "$a" >"$work/$a.stdout" 2>&1 || rc=$?
		echo "$rc" >"$work/$a.rc"
	) &
	running+=("$a") started+=("$a")
done
wait
for b in "${running[@]}"; do cat "$work/$b.stdout"; done
for a in "${started[@]}"; do
	[[ $(cat "$work/$a.rc" 2>/dev/null) == 0 ]] || failed=1
done
rows=() rerun_notes=()
for a in "${started[@]}"; do
	[[ -f $work/$a.row ]] && rows+=("$(cat "$work/$a.row")")
	[[ -f $work/$a.reruns ]] && mapfile -t -O "${#rerun_notes[@]}" rerun_notes <"$work/$a.reruns"
	if [[ -n ${LATCH_CROSS_OUT:-} && -f $work/$a.out ]]; then cat "$work/$a.out" >>"$LATCH_CROSS_OUT"; fi
	if [[ -n ${LATCH_CROSS_JSON:-} && -f $work/$a.events ]]; then cat "$work/$a.events" >>"$LATCH_CROSS_JSON"; fi
done

echo
printf '%-6s %6s %6s %8s %13s %6s %9s\n' arch passed failed no-tests tests-p/f/s reruns time
printf '%s\n' "${rows[@]}"
if ((${#rerun_notes[@]})); then
	printf 'reruns: %d (%s)\n' "${#rerun_notes[@]}" "$(printf '%s; ' "${rerun_notes[@]}" | sed 's/; $//')"
else
	echo "reruns: 0"
fi
if ((failed)); then
	echo "cross-test: FAIL; logs in $work" >&2
	exit 1
fi
rm -rf "$work"
