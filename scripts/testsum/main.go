// Command testsum reads the event streams of `go test -json` (or of a test
// binary run with -test.v=test2json through `go tool test2json`) for latch's
// test scripts, so that their totals come from the Action of each test event
// and not from grepping the text.
//
//	testsum count FILE...     prints "passed failed skipped packages-failed":
//	                          the pass, fail and skip events of tests and
//	                          subtests, and the packages whose run failed
//	testsum failures FILE...  prints every failed test (and failed package)
//	                          with the lines it logged, for a person
//	testsum text [FILE...]    prints the test output as `go test -v` would,
//	                          as it arrives (standard input without FILE)
//
// Lines that are not JSON objects (a build error, a line the script added)
// are passed through by text and ignored by count and failures.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of test2json's output (cmd/test2json's TestEvent).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	ImportPath  string // build-output events
	FailedBuild string // a package's fail event: the package that did not build
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testsum count|failures|text [FILE...]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "count":
		err = count(os.Stdout, os.Args[2:])
	case "failures":
		err = failures(os.Stdout, os.Args[2:])
	case "text":
		err = text(os.Stdout, os.Args[2:])
	default:
		err = fmt.Errorf("unknown action %q: want count, failures or text", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(1)
	}
}

// each calls fn for every line of the files (standard input when there are
// none); a file that does not exist counts as empty, as a stage that did not
// run.
func each(files []string, fn func(line []byte)) error {
	scan := func(r io.Reader) error {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
		for sc.Scan() {
			fn(sc.Bytes())
		}
		return sc.Err()
	}
	if len(files) == 0 {
		return scan(os.Stdin)
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		err = scan(fh)
		fh.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", f, err)
		}
	}
	return nil
}

// decode returns the event on line, or false when line is not one.
func decode(line []byte) (event, bool) {
	var e event
	if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil || e.Action == "" {
		return e, false
	}
	return e, true
}

func count(w io.Writer, files []string) error {
	var pass, fail, skip, pkgFail int
	err := each(files, func(line []byte) {
		e, ok := decode(line)
		if !ok {
			return
		}
		switch {
		case e.Test == "" && e.Action == "fail":
			pkgFail++
		case e.Test == "":
		case e.Action == "pass":
			pass++
		case e.Action == "fail":
			fail++
		case e.Action == "skip":
			skip++
		}
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%d %d %d %d\n", pass, fail, skip, pkgFail)
	return nil
}

func failures(w io.Writer, files []string) error {
	type key struct{ pkg, test string }
	out := map[key][]string{}
	var failed []key
	err := each(files, func(line []byte) {
		e, ok := decode(line)
		if !ok {
			return
		}
		k := key{e.Package, e.Test}
		switch e.Action {
		case "output":
			out[k] = append(out[k], strings.TrimRight(e.Output, "\n"))
		case "build-output":
			b := key{e.ImportPath, ""}
			out[b] = append(out[b], strings.TrimRight(e.Output, "\n"))
		case "fail":
			if e.Test == "" && e.FailedBuild != "" && e.FailedBuild != e.Package {
				out[k] = append(out[k], out[key{e.FailedBuild, ""}]...)
			}
			failed = append(failed, k)
		case "run":
			delete(out, k) // a rerun of the same name starts afresh
		}
	})
	if err != nil {
		return err
	}
	sort.SliceStable(failed, func(i, j int) bool { return failed[i].test != "" && failed[j].test == "" })
	for _, k := range failed {
		if k.test == "" {
			fmt.Fprintf(w, "FAIL %s\n", k.pkg)
		} else {
			fmt.Fprintf(w, "--- FAIL: %s (%s)\n", k.test, k.pkg)
		}
		n := 0
		for _, l := range out[k] {
			t := strings.TrimSpace(l)
			if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
				continue
			}
			if k.test == "" && !strings.HasPrefix(t, "panic:") && !strings.Contains(t, ".go:") {
				continue // a package's own output: only what says why it failed
			}
			if n++; n > 40 {
				fmt.Fprintln(w, "    ...")
				break
			}
			fmt.Fprintf(w, "    %s\n", t)
		}
	}
	return nil
}

func text(w io.Writer, files []string) error {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	return each(files, func(line []byte) {
		e, ok := decode(line)
		switch {
		case !ok:
			bw.Write(line)
			bw.WriteByte('\n')
		case e.Action == "output" || e.Action == "build-output":
			bw.WriteString(e.Output)
		default:
			return
		}
		if len(files) == 0 {
			bw.Flush() // a live stream: show each line as it comes
		}
	})
}
