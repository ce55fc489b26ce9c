package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"time"

	"latch/agent/fetch"
	"latch/agent/target"
	"latch/store"
)

// Events from the download worker.
type (
	dlProgress struct {
		id          string
		file        int
		done, total int64
		complete    bool
	}
	dlDone struct {
		id  string
		err error
	}
)

// progressEvery throttles progress events and the journal writes they cause.
const progressEvery = 500 * time.Millisecond

// startDownload fetches every file of the pending update that is not staged
// yet, one after the other, in a worker beside the loop. Locks do not matter
// here.
func (a *Agent) startDownload() {
	p := a.st.pending
	ctx, cancel := context.WithCancel(a.ctx)
	a.st.downloading, a.st.cancelDownload = true, cancel
	files := slices.Clone(p.Files)
	id, client := p.ID, a.cfg.HTTPClient
	plan := slices.Clone(a.st.plan)
	tgt := a.st.tgt
	go func() {
		defer cancel()
		if tgt != nil {
			if err := checkContainers(tgt); err != nil {
				a.send(dlDone{id: id, err: err})
				return
			}
		}
		sizes := fileSizes(tgt)
		for i, f := range files {
			dest := a.staged(f.SHA256)
			if f.Complete {
				if _, err := os.Stat(dest); err == nil {
					continue
				}
			}
			var last time.Time
			size, ok := sizes[f.SHA256]
			if !ok {
				size = -1 // the target gives none: only the sha256 bounds it
			}
			err := fetch.FetchSized(ctx, client, f.Source, f.SHA256, dest, size, func(done, total int64) {
				if time.Since(last) < progressEvery {
					return
				}
				last = time.Now()
				select { // progress may be dropped when the loop is busy; completion never is
				case a.events <- dlProgress{id: id, file: i, done: done, total: total}:
				default:
				}
			})
			if err != nil {
				a.send(dlDone{id: id, err: err})
				return
			}
			got := int64(-1)
			if fi, err := os.Stat(dest); err == nil {
				got = fi.Size()
			}
			a.send(dlProgress{id: id, file: i, done: got, total: got, complete: true})
		}
		if err := a.pullImages(ctx, id, plan); err != nil {
			a.send(dlDone{id: id, err: err})
			return
		}
		a.send(dlDone{id: id})
	}()
}

func (a *Agent) onProgress(ev dlProgress) {
	s := &a.st
	if s.pending == nil || s.pending.ID != ev.id || ev.file >= len(s.fileDone) {
		return
	}
	if d := ev.done - s.fileDone[ev.file]; d > 0 {
		s.downloadedBytes += d
	}
	s.fileDone[ev.file], s.fileTotal[ev.file] = ev.done, ev.total
	if !ev.complete && time.Since(s.lastJournalled) < 2*time.Second {
		return
	}
	s.lastJournalled = time.Now()
	f := &s.pending.Files[ev.file]
	f.Done, f.Size, f.Complete = ev.done, ev.total, ev.complete
	a.journal(func(tx *store.Tx) error {
		if err := tx.SetFileProgress(ev.file, ev.done, ev.complete); err != nil {
			return err
		}
		if ev.complete {
			// The size is part of the file record; rewrite it once, when known.
			return tx.PutPending(s.pending)
		}
		return nil
	})
	if ev.complete {
		hit(FPFileStaged)
	}
}

func (a *Agent) onDownloaded(ev dlDone) {
	s := &a.st
	s.downloading, s.cancelDownload = false, nil
	p := s.pending
	if p == nil || p.ID != ev.id || p.State != store.Downloading {
		return // superseded by a newer target
	}
	switch {
	case ev.err == nil:
		err := a.journal(func(tx *store.Tx) error {
			p.State, p.Reason, p.Updated = store.Downloaded, "", time.Now()
			if err := tx.PutPending(p); err != nil {
				return err
			}
			_, err := tx.Log(store.Event{Kind: "downloaded", Message: "update " + short(p.ID) + " downloaded and verified"})
			return err
		})
		if err == nil {
			hit(FPDownloaded)
		}
		s.retryAt = time.Time{}
	case errors.Is(ev.err, context.Canceled):
		// Shutting down or superseded: the partial file stays for the resume.
	case errors.Is(ev.err, fetch.ErrChecksum) || imageRefused(ev.err):
		// A file that does not match the signed digest rejects the update,
		// and so does an image that can never run here.
		a.journal(func(tx *store.Tx) error {
			p.State, p.Reason, p.Updated = store.Failed, ev.err.Error(), time.Now()
			if err := tx.PutPending(p); err != nil {
				return err
			}
			_, err := tx.Log(store.Event{Kind: "failed", Message: "update " + short(p.ID) + " rejected: " + ev.err.Error()})
			return err
		})
		s.appliesFailed++
	default:
		p.Reason = "download failed, will retry: " + ev.err.Error()
		s.retryAt = time.Now().Add(a.cfg.RetryDelay)
		a.logf("download of update %s: %v (retrying at %s)", short(p.ID), ev.err, s.retryAt.Format(time.TimeOnly))
	}
}

// cleanDownloads removes the staged files (and partial downloads) that the
// pending update does not need: installed files are copies, so a finished
// update's downloads only take space.
func (a *Agent) cleanDownloads() {
	a.pruneBlobs()
	keep := map[string]bool{}
	if p := a.st.pending; p != nil {
		for _, f := range p.Files {
			keep[f.SHA256] = true
			keep[f.SHA256+".part"] = true
		}
	}
	entries, err := os.ReadDir(a.downloadDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		if !keep[e.Name()] {
			os.Remove(filepath.Join(a.downloadDir(), e.Name()))
		}
	}
}

// fileSizes maps each file's sha256 to the size its target gives (the
// smallest, should two entries of one content disagree): a download past it
// stops at once.
func fileSizes(tgt *target.State) map[string]int64 {
	out := map[string]int64{}
	if tgt == nil {
		return out
	}
	for _, app := range tgt.Apps {
		for _, svc := range app.Services {
			for _, f := range svc.Files {
				if !f.HasSize {
					continue
				}
				if old, ok := out[f.SHA256]; !ok || f.Size < old {
					out[f.SHA256] = f.Size
				}
			}
		}
	}
	return out
}
