// Command probe is the board harness's first power-cut workload: it appends
// records to a file with an fsync after each and reports every record the disk
// has acknowledged, so that the host can cut power at any moment and check,
// on the next boot, that nothing acknowledged was lost.
//
// Usage, on the board (paths are on the board's disk):
//
//	probe write DIR        append records to DIR/records and replace DIR/state atomically
//	probe check DIR        check DIR/records and DIR/state, then exit
//	probe checkwrite DIR   check, drop the torn tail, then go on writing
//
// Record i (from 1) is a 4 KiB block whose bytes depend only on i, so a record
// is whole exactly when it equals record(i). DIR/state is replaced every
// stateEvery records by write-temp, fsync, rename, fsync-directory, and holds
// two blocks (so a torn write would show) naming the last record written.
//
// Console lines, one a line:
//
//	PROBE: synced N        record N and all before it are on the disk (after fsync)
//	PROBE: state N         DIR/state naming record N is on the disk (after the dir fsync)
//	PROBE: check records=N torn=B state=S   what the check found: N whole records in a row,
//	                       B bytes after them, the state file naming record S (0 = none)
//	PROBE: FAIL MSG        the check found damage no power cut may cause
//
// With PROBE_NOSYNC=1 in its environment it skips every fsync but reports as
// before: the negative control that shows the host's check catches loss.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	recordSize = 4096
	stateSize  = 2 * 4096
	stateEvery = 8
	maxRecords = 1 << 20
)

// record returns the bytes of record i.
func record(i int) []byte {
	b := make([]byte, recordSize)
	hdr := fmt.Sprintf("record %010d\n", i)
	copy(b, hdr)
	x := uint32(i)*2654435761 + 1
	for j := len(hdr); j < recordSize-1; j++ {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[j] = 'a' + byte(x%26)
	}
	b[recordSize-1] = '\n'
	return b
}

// stateBlock returns the state file's bytes naming record n: a header line,
// filler, and a CRC-32 of everything before it in the last line.
func stateBlock(n int) []byte {
	b := bytes.Repeat([]byte{'s'}, stateSize)
	copy(b, fmt.Sprintf("state %010d\n", n))
	tail := len(b) - 9
	copy(b[tail:], fmt.Sprintf("%08x\n", crc32.ChecksumIEEE(b[:tail])))
	return b
}

// parseState returns the record a state file names, or an error if it is
// not whole.
func parseState(b []byte) (int, error) {
	if len(b) != stateSize {
		return 0, fmt.Errorf("state has %d bytes, want %d", len(b), stateSize)
	}
	tail := len(b) - 9
	if got, want := string(b[tail:]), fmt.Sprintf("%08x\n", crc32.ChecksumIEEE(b[:tail])); got != want {
		return 0, fmt.Errorf("state checksum %q, want %q", strings.TrimSpace(got), strings.TrimSpace(want))
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	n, err := strconv.Atoi(strings.TrimPrefix(string(line), "state "))
	if err != nil {
		return 0, fmt.Errorf("state header %q: %w", line, err)
	}
	return n, nil
}

// noSync skips the fsyncs (the negative control).
var noSync = os.Getenv("PROBE_NOSYNC") == "1"

// fsync is f.Sync unless noSync.
func fsync(f *os.File) error {
	if noSync {
		return nil
	}
	return f.Sync()
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: probe write|check|checkwrite DIR")
		os.Exit(2)
	}
	mode, dir := os.Args[1], os.Args[2]
	n := 0
	switch mode {
	case "write":
	case "check", "checkwrite":
		var err error
		n, err = check(dir)
		if err != nil {
			fmt.Printf("PROBE: FAIL %v\n", err)
			os.Exit(1)
		}
		if mode == "check" {
			return
		}
	default:
		fmt.Fprintf(os.Stderr, "probe: unknown mode %q\n", mode)
		os.Exit(2)
	}
	if err := write(dir, n); err != nil {
		fmt.Printf("PROBE: write: %v\n", err)
		os.Exit(1)
	}
}

// check reports what survived in dir and returns the number of whole records
// in a row from the start. Damage inside that prefix cannot happen to
// fsynced data; the host compares the prefix with what was reported synced.
func check(dir string) (int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "records"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("read records: %w", err)
	}
	n := 0
	for (n+1)*recordSize <= len(data) && bytes.Equal(data[n*recordSize:(n+1)*recordSize], record(n+1)) {
		n++
	}
	torn := len(data) - n*recordSize
	state := 0
	sb, err := os.ReadFile(filepath.Join(dir, "state"))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return n, fmt.Errorf("read state: %w", err)
	default:
		state, err = parseState(sb)
		if err != nil {
			return n, err
		}
	}
	fmt.Printf("PROBE: check records=%d torn=%d state=%d\n", n, torn, state)
	if state > n {
		return n, fmt.Errorf("state names record %d but only %d records are whole", state, n)
	}
	return n, nil
}

// write appends records after the first n, dropping whatever follows them.
func write(dir string, n int) error {
	path := filepath.Join(dir, "records")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Truncate(int64(n) * recordSize); err != nil {
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		return fmt.Errorf("seek %s: %w", path, err)
	}
	if err := fsync(f); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	if err := fsync(d); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	for i := n + 1; i <= maxRecords; i++ {
		if _, err := f.Write(record(i)); err != nil {
			return fmt.Errorf("write record %d: %w", i, err)
		}
		if err := fsync(f); err != nil {
			return fmt.Errorf("fsync record %d: %w", i, err)
		}
		fmt.Printf("PROBE: synced %d\n", i)
		if i%stateEvery == 0 {
			if err := replaceState(dir, d, i); err != nil {
				return err
			}
			fmt.Printf("PROBE: state %d\n", i)
		}
	}
	return nil
}

// replaceState replaces dir/state with one naming record n, atomically.
func replaceState(dir string, d *os.File, n int) error {
	tmp := filepath.Join(dir, "state.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if _, err := f.Write(stateBlock(n)); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := fsync(f); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "state")); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	if err := fsync(d); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
