package lock

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func BenchmarkCreateRemove(b *testing.B) {
	path := filepath.Join(b.TempDir(), UpdatesName)
	rec := NewRecord(RoleUser)
	for b.Loop() {
		lk, err := Create(path, rec, -1, -1)
		if err != nil {
			b.Fatal(err)
		}
		if err := lk.Remove(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAcquire16(b *testing.B) {
	l := Layout{Dir: filepath.Join(b.TempDir(), "latch")}
	var svcs []Service
	for i := range 16 {
		svcs = append(svcs, Service{"app", fmt.Sprintf("svc%02d", i)})
	}
	rec := NewRecord(RoleAgent)
	for b.Loop() {
		locks, err := l.Acquire(svcs, []string{UpdatesName, ResinName}, rec, -1, -1)
		if err != nil {
			b.Fatal(err)
		}
		if err := ReleaseAll(locks); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkScan100(b *testing.B) {
	l := Layout{Dir: filepath.Join(b.TempDir(), "latch")}
	for i := range 100 {
		dir, err := l.EnsureServiceDir(Service{fmt.Sprintf("app%d", i/10), fmt.Sprintf("svc%d", i)})
		if err != nil {
			b.Fatal(err)
		}
		if i%10 == 0 {
			os.WriteFile(filepath.Join(dir, UpdatesName), NewRecord(RoleUser).marshal(), 0o644)
		}
	}
	for b.Loop() {
		es, err := l.Scan()
		if err != nil || len(es) != 10 {
			b.Fatalf("Scan: %d entries, %v", len(es), err)
		}
	}
}

// BenchmarkBaselineExcl is the floor that BenchmarkCreateRemove is compared
// with: a bare O_CREAT|O_EXCL create and unlink, as lockfile(1) does.
func BenchmarkBaselineExcl(b *testing.B) {
	path := filepath.Join(b.TempDir(), UpdatesName)
	for b.Loop() {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o444)
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
		if err := os.Remove(path); err != nil {
			b.Fatal(err)
		}
	}
}

// floodLayout has one service of the agent's and n service directories
// made by another user (chowned to 65534 as root) in the same app.
func floodLayout(b *testing.B, n int) (Layout, Service) {
	l := Layout{Dir: filepath.Join(b.TempDir(), "latch"), LockUID: -1}
	mine := Service{"app", "mine"}
	if _, err := l.EnsureServiceDir(mine); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		d := filepath.Join(l.Dir, "services", "app", fmt.Sprintf("f%05d", i))
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
		if os.Geteuid() == 0 {
			os.Chown(d, 65534, 65534)
		}
	}
	return l, mine
}

// BenchmarkScanFlood and BenchmarkBlockingFlood compare a full Scan with
// Blocking of one service when another user made 10000 service
// directories.
func BenchmarkScanFlood(b *testing.B) {
	l, _ := floodLayout(b, 10000)
	for b.Loop() {
		l.Scan()
	}
}

func BenchmarkBlockingFlood(b *testing.B) {
	l, mine := floodLayout(b, 10000)
	for b.Loop() {
		if _, err := l.Blocking([]Service{mine}); err != nil {
			b.Fatal(err)
		}
	}
}
