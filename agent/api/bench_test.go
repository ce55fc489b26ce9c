package api

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkAPI sends GET requests over the unix socket from 16 goroutines,
// each with its own keep-alive connection, to a real agent, and reports
// requests per second, p99 latency and the process's peak RSS (agent, server
// and load generator share the process: an upper bound for the agent).
// GET /ping is the baseline.
func BenchmarkAPI(b *testing.B) {
	for _, path := range []string{"/ping", "/v1/device", "/metrics"} {
		b.Run(strings.TrimPrefix(path, "/"), func(b *testing.B) {
			socket := newEnv(b, envOpts{quiet: true}).socket
			const workers = 16
			clients := make([]*http.Client, workers)
			for i := range clients {
				clients[i] = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", socket)
				}}}
			}
			var mu sync.Mutex
			var lat []time.Duration
			var wg sync.WaitGroup
			next := make(chan struct{}, workers)
			b.ResetTimer()
			start := time.Now()
			go func() {
				for i := 0; i < b.N; i++ {
					next <- struct{}{}
				}
				close(next)
			}()
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var mine []time.Duration
					for range next {
						t0 := time.Now()
						resp, err := clients[w].Get("http://latch" + path)
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 {
							b.Errorf("GET %s: %d", path, resp.StatusCode)
							return
						}
						mine = append(mine, time.Since(t0))
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			if len(lat) > 0 {
				b.ReportMetric(float64(len(lat))/el.Seconds(), "req/s")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			}
			b.ReportMetric(float64(procKB("VmHWM")), "VmHWM-KiB")
		})
	}
}

func procKB(field string) int {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}
