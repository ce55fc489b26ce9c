#!/usr/bin/env bash
# latch's whole test suite, on a fresh Debian 12 machine (run as root: the
# tests take locks as other users, mount private tmpfs, boot containers and
# emulated boards). Stages:
#   deps     install the lock tools, QEMU, nspawn (scripts/deps.sh)
#   lint     gofmt, go vet, staticcheck
#   unit     go test ./... (native amd64; includes the real-systemd tests in nspawn)
#   build    the five static binaries and their .deb packages (build/)
#   cross    the suite for arm64, armv7, armv6 under qemu-user and 386 natively
#   board    power cuts on emulated arm64 and armv7 boards (qemu-system)
#   systemd-arm64  the real-systemd end-to-end test in an arm64 container (qemu-user)
#   systemd-armhf  the same in an armhf (32-bit ARMv7) container
# Usage: scripts/test.sh [stage...]   (default: all, in that order)
# The test totals are counted from `go test -json` events (their Action: pass,
# fail or skip of each test and subtest; scripts/testsum), kept in unit.json
# and cross.json next to the -v text of unit.txt and cross.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin CGO_ENABLED=0

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(deps lint unit build cross board systemd-arm64 systemd-armhf)
log=$(mktemp -d "${TMPDIR:-/tmp}/latch-test.XXXXXX")
failed=() passed=()
t0=$(date +%s)
go build -o "$log/testsum" ./scripts/testsum || { echo "test.sh: scripts/testsum does not build"; exit 1; }
testsum() { "$log/testsum" "$@"; }

stage() {
  local name=$1; shift
  local s; s=$(date +%s)
  printf '\n### stage %s\n' "$name"
  if "$@"; then passed+=("$name"); r=ok; else failed+=("$name"); r=FAILED; fi
  printf '### stage %s: %s in %ss\n' "$name" "$r" $(( $(date +%s) - s ))
}

lint() {
  local bad; bad=$(gofmt -l . | grep -v '^vendor/')
  if [ -n "$bad" ]; then echo "gofmt would change: $bad"; return 1; fi
  go vet ./... || return 1
  go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
}

build() {
  build/build.sh && build/deb.sh
}

# systemd_arch ARCH: the real-systemd end-to-end test in a Debian ARCH container.
systemd_arch() {
  scripts/nspawn/rootfs.sh "$1" || return 1
  LATCH_NSPAWN_ARCH=$1 go test -count=1 -timeout 20m -json -run TestSystemdEndToEnd ./systemd/e2e/ 2>&1 |
    tee -a "$log/unit.json" | testsum text | tee -a "$log/unit.txt" | grep -E '^\s*(--- |ok |FAIL|PASS|panic:)|_test.go:[0-9]+:'
  return "${PIPESTATUS[0]}"
}

board() {
  scripts/board/powercut.sh arm64 3 || return 1
  if [ -f scripts/board/workloads/agent.sh ]; then
    scripts/board/powercut.sh --workload agent arm64 20 || return 1
    scripts/board/powercut.sh --workload agent armv7 10 || return 1
  fi
}

unit() {
  if [ -x scripts/nspawn/rootfs.sh ] && [ "$(id -u)" = 0 ]; then
    scripts/nspawn/rootfs.sh amd64 || echo "warning: the nspawn rootfs could not be built: the real-systemd tests will skip"
  fi
  go test -count=1 -timeout 45m -parallel 4 -json ./... 2>&1 | tee "$log/unit.json" | testsum text | tee "$log/unit.txt" |
    grep -E '^(--- |ok |FAIL|PASS|panic:|\s+\S+_test.go:[0-9]+:)'
  local rc=${PIPESTATUS[0]}
  grep -E -- '--- SKIP' "$log/unit.txt" | sed 's/^/  /' | head -40
  return "$rc"
}

for s in "${stages[@]}"; do
  case $s in
    deps)  stage deps scripts/deps.sh ;;
    lint)  stage lint lint ;;
    unit)  stage unit unit ;;
    build) stage build build ;;
    cross) stage cross env LATCH_CROSS_OUT="$log/cross.txt" LATCH_CROSS_JSON="$log/cross.json" scripts/cross-test.sh ;;
    board) stage board board ;;
    systemd-arm64) stage systemd-arm64 systemd_arch arm64 ;;
    systemd-armhf) stage systemd-armhf systemd_arch armhf ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done

# The totals, from the test events (a missing file counts as none).
read -r np nf ns npf < <(testsum count "$log/unit.json")
read -r xp xf xs xpf < <(testsum count "$log/cross.json")
if [ $((nf + xf + npf)) -gt 0 ]; then
  printf '\nfailed tests:\n'
  testsum failures "$log/unit.json" | head -80
fi
printf '\nstages passed: %s\n' "${passed[*]:-none}"
printf 'stages failed: %s\n' "${failed[*]:-none}"
printf 'total time: %ss; go test output in %s/unit.txt and cross.txt, test events in unit.json and cross.json\n' $(( $(date +%s) - t0 )) "$log"
printf 'tests: %d passed, %d failed, %d skipped (native: %d/%d/%d; arm64, armv7, armv6 and 386: %d/%d/%d); packages failed: %d native, %d cross\n' \
  $((np + xp)) $((nf + xf)) $((ns + xs)) "$np" "$nf" "$ns" "$xp" "$xf" "$xs" "$npf" "$xpf"
[ ${#failed[@]} -eq 0 ]
