package store

import (
	"errors"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestTrustRoundTrip(t *testing.T) {
	j := openTest(t, nil)
	err := j.View(func(tx *Tx) error { _, err := tx.Trust(); return err })
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Trust of a new journal: got %v, want ErrNotFound", err)
	}
	want := &Trust{
		Root: []byte(`{"signed":"e30=","signatures":[]}`), RootVersion: 3,
		TargetVersion: 7, TargetSHA256: strings.Repeat("ab", 32),
		TargetExpires: t0.Add(time.Hour), TargetAccepted: t0, LastIssued: t0.Add(-time.Minute),
	}
	r := &Refusal{At: t0, Source: "http://h/t.json", By: "target:http://h/t.json", Reason: "rollback", SHA256: strings.Repeat("cd", 32)}
	if err := j.Update(func(tx *Tx) error {
		if err := tx.PutTrust(want); err != nil {
			return err
		}
		return tx.SetRefused(r)
	}); err != nil {
		t.Fatalf("PutTrust: %v", err)
	}
	j = reopen(t, j, nil)
	var got *Trust
	var gotR *Refusal
	if err := j.View(func(tx *Tx) error {
		var err error
		if got, err = tx.Trust(); err != nil {
			return err
		}
		gotR, err = tx.Refused()
		return err
	}); err != nil {
		t.Fatalf("after reopen: %v", err)
	}
	if string(got.Root) != string(want.Root) || got.RootVersion != 3 || got.TargetVersion != 7 || got.TargetSHA256 != want.TargetSHA256 ||
		!got.LastIssued.Equal(want.LastIssued) || !got.TargetExpires.Equal(want.TargetExpires) || !got.TargetAccepted.Equal(t0) {
		t.Errorf("Trust after reopen: got %+v, want %+v", got, want)
	}
	if gotR.Reason != "rollback" || gotR.Source != r.Source || !gotR.At.Equal(t0) {
		t.Errorf("Refused after reopen: got %+v, want %+v", gotR, r)
	}
}

func TestTrustInvalid(t *testing.T) {
	j := openTest(t, nil)
	root := []byte(`{"signed":"e30="}`)
	for _, tt := range []struct {
		name string
		tr   *Trust
		want string
	}{
		{"nil", nil, "nil"},
		{"no root", &Trust{RootVersion: 1}, "not JSON"},
		{"root version 0", &Trust{Root: root}, "root version 0"},
		{"digest without version", &Trust{Root: root, RootVersion: 1, TargetSHA256: strings.Repeat("ab", 32)}, "want both or neither"},
		{"version without digest", &Trust{Root: root, RootVersion: 1, TargetVersion: 2}, "want both or neither"},
		{"bad digest", &Trust{Root: root, RootVersion: 1, TargetVersion: 2, TargetSHA256: "xyz"}, "64 lowercase hex"},
	} {
		err := j.Update(func(tx *Tx) error { return tx.PutTrust(tt.tr) })
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: PutTrust: got %v, want ErrInvalid containing %q", tt.name, err, tt.want)
		}
	}
	err := j.Update(func(tx *Tx) error { return tx.SetRefused(&Refusal{At: t0}) })
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no reason") {
		t.Errorf("SetRefused without a reason: got %v", err)
	}
	if err := j.View(func(tx *Tx) error { _, err := tx.Trust(); return err }); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused PutTrust wrote something: Trust gives %v", err)
	}
}

func TestTrustCorrupt(t *testing.T) {
	for _, tt := range []struct{ name, key, val string }{
		{"trust garbage", keyTrust, "\x00\xffnot json{"},
		{"trust root not JSON", keyTrust, `{"root":"bm90IGpzb24=","root_version":1}`},
		{"trust version 0", keyTrust, `{"root":"e30=","root_version":0}`},
		{"refused garbage", keyRefused, "{"},
		{"refused no reason", keyRefused, `{"at":"2026-11-02T10:04:05Z"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := fillJournal(t, 10, 1)
			rawBolt(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(bucketState)).Put([]byte(tt.key), []byte(tt.val))
			})
			checkReset(t, path, "state/"+tt.key)
		})
	}
}
