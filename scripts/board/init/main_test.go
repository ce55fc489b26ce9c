package main

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    config
		wantErr bool
	}{
		{
			name: "defaults",
			in:   "console=ttyAMA0 panic=-1 quiet latch.run=/bin/probe\n",
			want: config{run: "/bin/probe", disk: "/dev/vda", timeout: 10 * time.Minute},
		},
		{
			name: "args and env in order",
			in:   "latch.run=/bin/latch latch.arg=agent latch.arg=--root=/data latch.env=A=1 latch.env=B=x=y latch.disk=none latch.timeout=90s",
			want: config{
				run:     "/bin/latch",
				args:    []string{"agent", "--root=/data"},
				env:     []string{"A=1", "B=x=y"},
				disk:    "none",
				timeout: 90 * time.Second,
			},
		},
		{name: "no program", in: "console=ttyAMA0 latch.arg=x", wantErr: true},
		{name: "bad timeout", in: "latch.run=/bin/x latch.timeout=soon", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCmdline(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseCmdline(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(config{})); diff != "" {
				t.Errorf("parseCmdline(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyAMA0 latch.run=/bin/probe latch.arg=write latch.timeout=1m")
	f.Add("latch.run= latch.timeout=-5s latch.env")
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := parseCmdline(s)
		if err == nil && cfg.run == "" {
			t.Errorf("parseCmdline(%q) accepted a command line without latch.run", s)
		}
	})
}
