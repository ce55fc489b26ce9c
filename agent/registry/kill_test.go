package registry

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// childEnv makes the test binary fetch one blob and report its progress
// on stdout instead of running the tests: a process the test can kill.
const childEnv = "LATCH_REGISTRY_FETCH_CHILD"

func TestMain(m *testing.M) {
	if args := os.Getenv(childEnv); args != "" {
		os.Exit(fetchChild(strings.Split(args, "\n")))
	}
	os.Exit(m.Run())
}

// fetchChild: host, repository, digest, size, dir.
func fetchChild(a []string) int {
	size, _ := strconv.ParseInt(a[3], 10, 64)
	c, err := New(Options{Insecure: []string{a[0]}})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	ref := Reference{Domain: a[0], Repository: a[1]}
	_, err = c.FetchBlob(context.Background(), ref, a[2], size, a[4], func(p Progress) {
		fmt.Printf("progress %d\n", p.Done)
	})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	return 0
}

// TestResumeAfterKill: a process fetching a blob is killed (SIGKILL, as a
// crash or the OOM killer would) in the middle; the next one resumes from
// what the first wrote, fetching only the rest.
func TestResumeAfterKill(t *testing.T) {
	const size, stall = 2 << 20, 768 << 10
	px, ref, digest, data := blobSetup(t, size)
	dir := t.TempDir()
	px.mu.Lock()
	px.stallAfter = stall
	px.mu.Unlock()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{px.addr(), ref.Repository, digest, strconv.Itoa(size), dir}, "\n"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	reached := false
	for sc.Scan() {
		var done int64
		// Progress comes every 256 KiB: one report past stall-256K means
		// the child has written bytes and waits for more.
		if _, err := fmt.Sscanf(sc.Text(), "progress %d", &done); err == nil && done > stall-progressStep {
			reached = true
			break
		}
		if strings.HasPrefix(sc.Text(), "error") {
			t.Fatalf("child: %s", sc.Text())
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	if !reached {
		t.Fatal("the child never reported the stalled bytes")
	}
	partial := filepath.Join(dir, strings.TrimPrefix(digest, "sha256:")+".partial")
	st, err := os.Stat(partial)
	if err != nil || st.Size() <= stall-progressStep || st.Size() > stall {
		t.Fatalf("partial after the kill: %v, want (%d, %d] bytes", err, stall-progressStep, stall)
	}
	have := st.Size()

	var last Progress
	before := px.sentBlobBytes()
	if _, err := newClient(t, Options{Insecure: []string{px.addr()}}).FetchBlob(ctxT(t), ref, digest, size, dir, func(p Progress) { last = p }); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, dir, digest, data)
	reqs := px.seen()
	if got := reqs[len(reqs)-1].Range; got != fmt.Sprintf("bytes=%d-", have) {
		t.Errorf("resume asked Range %q, want bytes=%d-", got, have)
	}
	sent := px.sentBlobBytes() - before
	t.Logf("killed at %d of %d bytes; the resume fetched %d (%d again)", have, size, sent, last.Refetched)
	if sent != size-have || last.Refetched != 0 {
		t.Errorf("resume after the kill fetched %d bytes (%d again), want %d (0 again)", sent, last.Refetched, size-have)
	}
}
