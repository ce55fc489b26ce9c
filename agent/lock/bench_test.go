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
