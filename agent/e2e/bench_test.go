package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkReleaseToStop measures the latency from the release of the last
// blocking lock to the first stop command of the update it blocked: one
// trial per iteration (run with -benchtime=200x); reports the median and the
// 99th percentile. The stop command's own start-up (a shell running date) is
// included, so this is what a service would see.
func BenchmarkReleaseToStop(b *testing.B) {
	d := newDevice(b)
	stamp := filepath.Join(d.root, "stop.stamp")
	rel := func(i int) app {
		a := app{name: "kiosk", release: fmt.Sprintf("r%d", i), services: []svc{{name: "ui"}}}
		return a
	}
	doc := func(i int) []byte {
		raw := d.targetDoc(nil, rel(i))
		// The stop command stamps the time it runs, before anything else.
		return []byte(strings.Replace(string(raw), `"stop": "`, `"stop": "date +%s%N >> `+stamp+`; `, 1))
	}
	d.setTarget(doc(0))
	d.start()
	d.waitFor("first release", func() bool { return d.releaseOf("kiosk") == "r0" })
	lockPath := filepath.Join(d.serviceDir("kiosk", "ui"), "updates.lock")
	var lat []time.Duration
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		os.Remove(stamp)
		if err := os.WriteFile(lockPath, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		d.setTarget(doc(i))
		d.waitFor("blocked", func() bool { return len(d.status().BlockedBy) > 0 })
		released := time.Now()
		os.Remove(lockPath)
		var raw []byte
		d.waitFor("stop ran", func() bool { raw, _ = os.ReadFile(stamp); return strings.Contains(string(raw), "\n") })
		ns, err := strconv.ParseInt(strings.TrimSpace(strings.Split(string(raw), "\n")[0]), 10, 64)
		if err != nil {
			b.Fatalf("stamp %q: %v", raw, err)
		}
		lat = append(lat, time.Unix(0, ns).Sub(released))
		want := fmt.Sprintf("r%d", i)
		d.waitFor("applied", func() bool { return d.releaseOf("kiosk") == want })
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	d.stop()
}

// BenchmarkIdle reports the agent's resident memory and CPU time over an
// idle period (LATCH_IDLE_SECONDS, default 60) with one app of 10 services.
func BenchmarkIdle(b *testing.B) {
	secs := 60
	if v, err := strconv.Atoi(os.Getenv("LATCH_IDLE_SECONDS")); err == nil && v > 0 {
		secs = v
	}
	d := newDevice(b)
	var svcs []svc
	for i := 0; i < 10; i++ {
		svcs = append(svcs, svc{name: fmt.Sprintf("s%d", i)})
	}
	d.setTarget(d.targetDoc(nil, app{name: "plant", release: "1", services: svcs}))
	d.start()
	d.waitFor("release", func() bool { return d.releaseOf("plant") == "1" })
	pid := d.cmd.Process.Pid
	cpu0 := cpuTicks(b, pid)
	b.ResetTimer()
	time.Sleep(time.Duration(secs) * time.Second) // the point is to let it idle
	b.StopTimer()
	cpu := cpuTicks(b, pid) - cpu0
	b.ReportMetric(float64(cpu)*10/float64(secs), "cpu-ms/s") // 100 ticks a second
	b.ReportMetric(float64(rssKiB(b, pid)), "rss-KiB")
	d.stop()
}

// BenchmarkStartToReady measures the time from exec to READY=1 with a
// journal of 1,000 events and 10 holds.
func BenchmarkStartToReady(b *testing.B) {
	d := newDevice(b)
	var svcs []svc
	for i := 0; i < 10; i++ {
		svcs = append(svcs, svc{name: fmt.Sprintf("s%d", i)})
	}
	d.setTarget(d.targetDoc(nil, app{name: "plant", release: "1", services: svcs}))
	d.start()
	d.waitFor("release", func() bool { return d.releaseOf("plant") == "1" })
	for i := 0; i < 10; i++ {
		if code := d.api("POST", "/v2/locks", map[string]any{"app": "plant", "service": fmt.Sprintf("s%d", i)}, nil); code != 201 {
			b.Fatalf("hold: %d", code)
		}
	}
	for i := 0; i < 1000; i++ { // each override change journals an event
		d.api("PUT", "/v2/device/override", map[string]bool{"enabled": i%2 == 0}, nil)
	}
	d.stop()
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		ready := d.start()
		total += ready.Sub(start)
		b.StopTimer()
		d.stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/ready")
}

func cpuTicks(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

func rssKiB(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return -1
}

// BenchmarkReleaseToWaiter is the baseline for BenchmarkReleaseToStop: the
// latency from a lock's release to the command of a `latch lock --wait`
// blocked on it (the same inotify wake-up and a shell start, without the
// agent's journal and lock-taking).
func BenchmarkReleaseToWaiter(b *testing.B) {
	dir := b.TempDir()
	lockPath := filepath.Join(dir, "updates.lock")
	stamp := filepath.Join(dir, "stamp")
	var lat []time.Duration
	for i := 0; i < b.N; i++ {
		os.Remove(stamp)
		if err := os.WriteFile(lockPath, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(latchBin, "lock", "--path", lockPath, "--wait", "--", "sh", "-c", "date +%s%N > "+stamp)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // let it block on the lock: nothing to await
		released := time.Now()
		os.Remove(lockPath)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("latch lock --wait: %v", err)
		}
		raw, _ := os.ReadFile(stamp)
		ns, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
		if err != nil {
			b.Fatalf("stamp %q: %v", raw, err)
		}
		lat = append(lat, time.Unix(0, ns).Sub(released))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
