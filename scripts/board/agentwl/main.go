// Command agentwl is the QEMU test board's power-cut workload that drives
// latch itself: on every boot it starts `latch agent` (exec driver) on the
// board's disk, checks what the previous boot's power cut left, and drives
// one more update of a two-service demo app, with a user lock held and then
// released, so that the host can cut the power during the download or the
// apply.
//
// It guarantees nothing to the product; it is the judge. On every boot after
// a cut it checks, and prints FAIL for any breach:
//   - the journal opens (read with latch/store before the agent starts);
//   - the locks of an interrupted apply exist, and are the agent's, when
//     READY=1 arrives on its NOTIFY_SOCKET;
//   - the update completes or rolls back, once (one "applied" event per release);
//   - the demo app's files are whole: each is byte for byte the old or the new
//     release's file, and after recovery all are the running release's;
//   - nothing the previous boot saw journalled is lost (the host passes the
//     last event seq and the release it saw applied on the kernel command line);
//   - no exec step ran while the service's lock was not the agent's (VIOLATION);
//   - a file the journal held as staged is never requested again.
//
// Usage on the board (run by the board's init, or by latch's exec driver):
//
//	agentwl first|next|last [seq=N] [release=K]   one boot of the scenario
//	agentwl step stop|start APP/SERVICE FILE       an exec-driver step: log it, fsynced
//	agentwl health FILE                            an exec-driver health check
//	sh -c 'CMD ARG...'                             installed as /bin/sh too: runs CMD
//	                                               (the board has no shell)
//
// Console markers, one a line, for scripts/board/workloads/agent.sh:
//
//	AGENT: found ...        what the journal and the disk held before the agent started
//	AGENT: ready ...        READY=1: boot-to-ready times, memory, the locks found
//	AGENT: check ok ...     the recovery was checked and nothing was lost
//	AGENT: FAIL MSG         a breach of the guarantees above
//	AGENT: downloading release=rK   target rK published (cut marker of the download phase)
//	AGENT: blocked ...      downloaded, waiting for the user lock
//	AGENT: released         the user lock is gone (cut marker of the apply phase)
//	AGENT: applying / AGENT: applied release=rK ...
//	AGENT: durable seq=N release=K   the journal holds events up to N and release rK applied
//
// Environment: AGENTWL_ROOT prefixes every path (tests run it off the board),
// LATCH_BIN names the latch binary (default /bin/latch), AGENTWL_RATE caps
// the release server in bytes per second (default 2 MiB/s) and AGENTWL_BIG
// sets the large file's size in bytes (default 4 MiB).
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"latch/agent/lock"
)

func main() {
	if filepath.Base(os.Args[0]) == "sh" {
		os.Exit(shim(os.Args[1:]))
	}
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "first", "next", "last":
		os.Exit(runBoot(os.Args[1], os.Args[2:]))
	case "step":
		if len(os.Args) != 5 {
			usage()
		}
		err = step(newLayout(), os.Args[2], os.Args[3], os.Args[4], os.Getenv("BALENA_APP_LOCK_PATH"))
	case "health":
		if len(os.Args) != 3 {
			usage()
		}
		err = health(os.Args[2])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "agentwl: %v\n", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: agentwl first|next|last [seq=N] [release=K] | step stop|start APP/SERVICE FILE | health FILE")
	os.Exit(2)
}

// shim is /bin/sh on the board: it runs `sh -c 'CMD ARG...'` by splitting
// CMD on spaces (no quoting, no operators: the commands agentwl writes into
// the target state need none) and exec'ing it.
func shim(args []string) int {
	if len(args) < 2 || args[0] != "-c" {
		fmt.Fprintln(os.Stderr, "sh (agentwl): only sh -c 'CMD ARG...' is supported")
		return 2
	}
	f := strings.Fields(args[1])
	if len(f) == 0 {
		return 0
	}
	path := f[0]
	if !strings.Contains(path, "/") {
		path = "/bin/" + path
	}
	err := syscall.Exec(path, f, os.Environ())
	fmt.Fprintf(os.Stderr, "sh (agentwl): exec %s: %v\n", path, err)
	return 127
}

// step is an exec-driver stop or start: it appends "VERB APP/SERVICE HEADER"
// to the commands log, HEADER being the first line of the installed file, and
// a VIOLATION line first when the service's lock is not the agent's. The log
// is fsynced before the step returns, so a line survives any later cut.
func step(l layout, verb, svc, file, lockPath string) error {
	if verb != "stop" && verb != "start" {
		return fmt.Errorf("step %q: want stop or start", verb)
	}
	var lines []string
	rec, err := os.ReadFile(lockPath)
	if r, ok := lock.ParseRecord(rec); err != nil || !ok || r.Role != lock.RoleAgent {
		lines = append(lines, fmt.Sprintf("VIOLATION %s %s: lock %s is not the agent's", verb, svc, lockPath))
	}
	lines = append(lines, fmt.Sprintf("%s %s %s", verb, svc, header(file)))
	if err := appendSync(l.commandsLog(), strings.Join(lines, "\n")+"\n"); err != nil {
		return fmt.Errorf("step %s %s: %w", verb, svc, err)
	}
	return nil
}

// health passes when FILE is one of the demo app's files.
func health(file string) error {
	h := header(file)
	if _, _, ok := parseHeader(h); !ok {
		return fmt.Errorf("health %s: header %q is not a demo file's", file, h)
	}
	return nil
}

// header is the first line of file, "-" when there is none.
func header(file string) string {
	f, err := os.Open(file)
	if err != nil {
		return "-"
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return "-"
	}
	return strings.TrimSuffix(line, "\n")
}

// appendSync appends s to path and fsyncs it.
func appendSync(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("append to %s: %w", path, err)
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return fmt.Errorf("append to %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

// writeAtomic replaces path with data: temp file, fsync, rename, fsync dir.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("fsync dir of %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir of %s: %w", path, err)
	}
	return nil
}

// countViolations returns the VIOLATION lines of the commands log.
func countViolations(b []byte) []string {
	var out []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("VIOLATION")) {
			out = append(out, string(line))
		}
	}
	return out
}

var errNoDrive = errors.New("no drive record")
