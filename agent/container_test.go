package agent

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"latch/store"
)

// A pull's progress reaches the journal throttled, not per read: a burst
// of reads writes nothing; once the interval has passed one record holds
// the latest progress; the image's load removes it.
func TestPullProgressJournalThrottled(t *testing.T) {
	j, err := store.Open(filepath.Join(t.TempDir(), "journal.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	a := &Agent{j: j, cfg: Config{Logf: t.Logf}}
	a.st.pending = &store.Update{ID: "u1"}
	digest := "sha256:" + strings.Repeat("ab", 32)
	ref := "reg:5000/kiosk/ui@" + digest
	ev := func(done int64, complete bool) pullProgress {
		return pullProgress{id: "u1", image: ref, digest: digest, done: done, total: 100 << 20, layers: 3, layersDone: 1, at: time.Now(), complete: complete}
	}
	records := func() []store.ImagePull {
		t.Helper()
		var recs []store.ImagePull
		if err := j.View(func(tx *store.Tx) (err error) { recs, err = tx.ImagePulls(); return err }); err != nil {
			t.Fatal(err)
		}
		return recs
	}
	for i := int64(1); i <= 1000; i++ { // 1000 reads of 64 KiB, at once
		a.onPullProgress(ev(i<<16, false))
	}
	if recs := records(); len(recs) != 0 {
		t.Fatalf("a burst of 1000 reads wrote %+v: want nothing before %s", recs, pullJournalMin)
	}
	m := a.st.pullMarks[ref]
	m.at = time.Now().Add(-pullJournalEvery)
	a.st.pullMarks[ref] = m
	a.onPullProgress(ev(1001<<16, false))
	a.onPullProgress(ev(1002<<16, false)) // within pullJournalMin of the write: not written
	if recs := records(); len(recs) != 1 || recs[0].Done != 1001<<16 || recs[0].Digest != digest || recs[0].LayersDone != 1 || recs[0].Layers != 3 {
		t.Fatalf("records after the interval: %+v, want one at %d bytes", recs, 1001<<16)
	}
	if got := a.st.pulls[ref]; got.done != 1002<<16 {
		t.Fatalf("the status's progress is %d, want the latest %d", got.done, 1002<<16)
	}
	a.onPullProgress(ev(100<<20, true))
	if recs := records(); len(recs) != 0 {
		t.Fatalf("records after the image is loaded: %+v, want none", recs)
	}
}
