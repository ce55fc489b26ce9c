package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRecordDiffers(t *testing.T) {
	a, b := record(1), record(2)
	if len(a) != recordSize {
		t.Fatalf("len(record(1)) = %d, want %d", len(a), recordSize)
	}
	if string(a) == string(b) {
		t.Errorf("record(1) == record(2), want distinct records")
	}
	if string(a) != string(record(1)) {
		t.Errorf("record(1) is not deterministic")
	}
}

func TestParseState(t *testing.T) {
	whole := stateBlock(42)
	flipped := append([]byte(nil), whole...)
	flipped[100] ^= 1
	tests := []struct {
		name    string
		in      []byte
		want    int
		wantErr bool
	}{
		{name: "whole", in: whole, want: 42},
		{name: "one bit flipped", in: flipped, wantErr: true},
		{name: "first block only", in: whole[:4096], wantErr: true},
		{name: "empty", in: nil, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseState(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseState error = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseState = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestCheckAfterTornWrite writes records on a real file, tears the tail as a
// power cut may, and checks that the check counts the whole prefix and that
// checkwrite's writer continues after it.
func TestCheckAfterTornWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "records")
	var data []byte
	for i := 1; i <= 5; i++ {
		data = append(data, record(i)...)
	}
	data = append(data, record(6)[:1000]...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state"), stateBlock(4), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := check(dir)
	if err != nil || n != 5 {
		t.Fatalf("check = %d, %v; want 5, nil", n, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state"), stateBlock(6), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := check(dir); err == nil {
		t.Errorf("check with state 6 over 5 whole records: got nil error, want one")
	}
}

func FuzzParseState(f *testing.F) {
	f.Add(stateBlock(1))
	f.Add([]byte("state 0000000001\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := parseState(b); err == nil && len(b) != stateSize {
			t.Errorf("parseState accepted %d bytes, want only %d", len(b), stateSize)
		}
	})
}
