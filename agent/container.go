package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"latch/agent/docker"
	"latch/agent/registry"
	"latch/agent/target"
	"latch/store"
)

// ContainerEngine runs the container services of a target (spec section 9):
// the registry client fetches their images into the state dir, the engine
// loads and runs them. It connects on first use, so a device whose targets
// have no container service never needs an engine.
type ContainerEngine struct {
	Host     string           // --docker-host
	Registry registry.Options // credentials (--registry-auth), --insecure-registry

	mu  sync.Mutex
	drv *docker.Driver
	reg *registry.Client
}

// ContainerRunner is implemented by a Driver that also runs container
// services; Containers returns nil when it does not.
type ContainerRunner interface {
	Containers() *ContainerEngine
}

func (e *ContainerEngine) clients() (*docker.Driver, *registry.Client, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.drv == nil {
		d, err := docker.New(e.Host)
		if err != nil {
			return nil, nil, fmt.Errorf("container engine %s: %w (set it with --docker-host)", e.Host, err)
		}
		r, err := registry.New(e.Registry)
		if err != nil {
			return nil, nil, fmt.Errorf("registry client: %w", err)
		}
		e.drv, e.reg = d, r
	}
	return e.drv, e.reg, nil
}

// engine is the agent's container engine, or an error saying how to get one.
func (a *Agent) engine() (*docker.Driver, *registry.Client, error) {
	if r, ok := a.cfg.Driver.(ContainerRunner); ok {
		if e := r.Containers(); e != nil {
			d, c, err := e.clients()
			if err == nil && d.Logf == nil {
				d.Logf = a.cfg.Logf
			}
			return d, c, err
		}
	}
	return nil, nil, errors.New("the target has container services (\"image\") but this agent runs no container engine: start it with --docker-host")
}

// checkContainers checks every container service of st with the container
// driver's parser and its dependency order: an error names the app, the
// service and the field.
func checkContainers(st *target.State) error {
	for _, app := range sortedKeys(st.Apps) {
		specs := map[string]docker.Spec{}
		for _, name := range sortedKeys(st.Apps[app].Services) {
			svc := st.Apps[app].Services[name]
			if !svc.IsContainer() {
				continue
			}
			spec, err := docker.ParseSpec(svc.Container)
			if err != nil {
				return fmt.Errorf("%w: apps.%s.services.%s: %w", target.ErrInvalid, app, name, err)
			}
			if _, err := registry.ParsePinned(spec.Image); err != nil {
				return fmt.Errorf("%w: apps.%s.services.%s.image: %w", target.ErrInvalid, app, name, err)
			}
			specs[name] = spec
		}
		if len(specs) > 0 {
			if _, err := docker.Order(specs); err != nil {
				return fmt.Errorf("%w: apps.%s.services: %w", target.ErrInvalid, app, err)
			}
		}
	}
	return nil
}

// blobDir holds the registry blobs of container images (resumed across
// restarts); loadedDir says, per image reference, which engine image it
// was loaded as.
func (a *Agent) blobDir() string   { return filepath.Join(a.cfg.StateDir, "blobs") }
func (a *Agent) loadedDir() string { return filepath.Join(a.cfg.StateDir, "images") }

func (a *Agent) loadedPath(ref registry.Reference) string {
	return filepath.Join(a.loadedDir(), strings.TrimPrefix(ref.Digest, "sha256:"))
}

// loadedImage is the engine's image ID for ref, when latch loaded it and the
// engine still has it ("" otherwise).
func (a *Agent) loadedImage(ctx context.Context, drv *docker.Driver, ref registry.Reference) string {
	b, err := os.ReadFile(a.loadedPath(ref))
	if err != nil {
		return ""
	}
	id, _, _ := strings.Cut(string(b), "\n")
	if !registry.ValidDigest(id) {
		return ""
	}
	if _, err := drv.Client.InspectImage(ctx, id); err != nil {
		return ""
	}
	return id
}

// pullProgress is what the download worker reports of an image.
type pullProgress struct {
	id                   string
	image                string // the reference
	digest               string // its manifest digest
	done, total, fetched int64
	layers, layersDone   int
	at                   time.Time
	complete             bool
}

// pullMark is what the journal holds of an image's pull.
type pullMark struct {
	done int64
	at   time.Time
	put  bool // a record was written (and must be removed)
}

// An image's pull progress is journalled when this many more bytes are on
// the device, or this much time went by, since its last record, and never
// twice within pullJournalMin: one commit a second at most, however fast
// the link and however many reads the layers take.
const (
	pullJournalBytes = 4 << 20
	pullJournalEvery = 2 * time.Second
	pullJournalMin   = time.Second
)

// pullImages fetches and loads the images of the container services the
// plan starts. It needs no lock: loading never touches a container. Each
// image's blobs go to blobDir (a partial one resumes where it stopped); an
// image the engine has from an earlier load is not fetched again.
func (a *Agent) pullImages(ctx context.Context, id string, plan []planned) error {
	var refs []registry.Reference
	seen := map[string]bool{}
	for _, pl := range plan {
		if pl.Remove || !pl.Spec.IsContainer() {
			continue
		}
		spec, err := docker.ParseSpec(pl.Spec.Container)
		if err != nil {
			return fmt.Errorf("%w: apps.%s.services.%s: %w", target.ErrInvalid, pl.Svc.App, pl.Svc.Service, err)
		}
		ref, err := registry.ParsePinned(spec.Image)
		if err != nil {
			return fmt.Errorf("%w: apps.%s.services.%s.image: %w", target.ErrInvalid, pl.Svc.App, pl.Svc.Service, err)
		}
		if !seen[spec.Image] {
			seen[spec.Image] = true
			refs = append(refs, ref)
		}
	}
	if len(refs) == 0 {
		return nil
	}
	drv, reg, err := a.engine()
	if err != nil {
		return err
	}
	for _, d := range []string{a.blobDir(), a.loadedDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("image download directory: %w", err)
		}
	}
	for _, ref := range refs {
		if err := a.pullImage(ctx, id, drv, reg, ref); err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
	}
	return nil
}

func (a *Agent) pullImage(ctx context.Context, id string, drv *docker.Driver, reg *registry.Client, ref registry.Reference) error {
	if a.loadedImage(ctx, drv, ref) != "" {
		return nil
	}
	img, err := reg.Image(ctx, ref)
	if err != nil {
		return err
	}
	total := img.Size()
	blobDone := map[string]int64{}
	var fetched int64
	var last time.Time
	report := func(complete bool) {
		var done int64
		for _, d := range blobDone {
			done += d
		}
		layersDone := 0
		for _, l := range img.Layers {
			if blobDone[l.Digest] == l.Size {
				layersDone++
			}
		}
		ev := pullProgress{id: id, image: ref.String(), digest: ref.Digest, done: done, total: total, fetched: fetched,
			layers: len(img.Layers), layersDone: layersDone, at: time.Now(), complete: complete}
		if complete {
			a.send(ev)
			return
		}
		if time.Since(last) < progressEvery {
			return
		}
		last = time.Now()
		select {
		case a.events <- ev:
		default:
		}
	}
	// The layers' fetches report at once: mu guards blobDone,
	// prevFetched, fetched and last.
	var mu sync.Mutex
	prevFetched := map[string]int64{}
	progress := func(p registry.Progress) {
		mu.Lock()
		defer mu.Unlock()
		blobDone[p.Digest] = p.Done
		fetched += p.Fetched - prevFetched[p.Digest]
		prevFetched[p.Digest] = p.Fetched
		report(false)
	}
	cfg, err := reg.FetchConfig(ctx, img, a.blobDir(), progress)
	if err != nil {
		return err
	}
	// The engine may have the image already (loaded by someone else, or
	// by an earlier run whose record was lost): its ID is its config digest.
	if _, err := drv.Client.InspectImage(ctx, img.Config.Digest); err != nil {
		// A layer whose chain (it and all below it) the engine has from
		// another image is neither fetched nor sent: the engine reads it
		// from its own store.
		omit, err := a.engineHas(ctx, drv, cfg)
		if err != nil {
			return err
		}
		var todo []registry.Blob
		queued := map[string]bool{}
		for i, l := range img.Layers {
			switch {
			case omit(i):
				mu.Lock()
				blobDone[l.Digest] = l.Size
				mu.Unlock()
			case !queued[l.Digest]:
				queued[l.Digest] = true
				todo = append(todo, l)
			}
		}
		if err := fetchLayers(ctx, reg, img.Ref, todo, a.blobDir(), progress); err != nil {
			return err
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(registry.WriteDockerArchiveOmitting(pw, img, a.blobDir(), "", omit)) }()
		_, err = drv.Client.LoadImage(ctx, pr)
		pr.CloseWithError(io.ErrClosedPipe)
		if err != nil {
			return fmt.Errorf("load into the engine: %w", err)
		}
		if _, err := drv.Client.InspectImage(ctx, img.Config.Digest); err != nil {
			return fmt.Errorf("the engine does not have %s after loading it: %w", img.Config.Digest, err)
		}
	}
	rec := img.Config.Digest + "\n"
	for _, l := range img.Layers {
		rec += l.Digest + "\n"
	}
	if err := writeFileAtomic(a.loadedPath(ref), []byte(rec), 0o600); err != nil {
		return fmt.Errorf("record the loaded image: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, b := range append([]registry.Blob{img.Config}, img.Layers...) {
		blobDone[b.Digest] = b.Size
	}
	report(true)
	return nil
}

// pullParallel is how many layers of an image download at once (as
// dockerd does): enough to hide a registry's latency per blob, few enough
// for a small board's memory and flash (each streams to its own file).
const pullParallel = 3

// fetchLayers fetches the layers into dir, pullParallel at a time; the
// first error cancels the others and is returned (each keeps its partial
// file to resume from).
func fetchLayers(ctx context.Context, reg *registry.Client, ref registry.Reference, layers []registry.Blob, dir string, progress registry.ProgressFunc) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errMu    sync.Mutex
		firstErr error
	)
	slots := make(chan struct{}, pullParallel)
	for _, l := range layers {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if _, err := reg.FetchBlob(ctx, ref, l.Digest, l.Size, dir, progress); err != nil {
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				errMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// engineHas returns whether the engine has layer i of the image of cfg
// with every layer below it (its chain id is the chain of a prefix of the
// layers of an image the engine has).
func (a *Agent) engineHas(ctx context.Context, drv *docker.Driver, cfg registry.ImageConfig) (func(i int) bool, error) {
	stacks, err := drv.Client.ImageLayers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the engine's layers: %w", err)
	}
	has := map[string]bool{}
	for _, diffIDs := range stacks {
		for _, c := range registry.ChainIDs(diffIDs) {
			has[c] = true
		}
	}
	chains := registry.ChainIDs(cfg.DiffIDs)
	return func(i int) bool { return i < len(chains) && has[chains[i]] }, nil
}

// containerService is the container driver's view of service i of an
// apply: as the new release has it, or (running) as it runs now.
func (w *applyWorker) containerService(ctx context.Context, i int, running bool) (docker.Service, bool, error) {
	pl := w.plan[i]
	spec, release := pl.Spec, pl.Release
	if running || pl.Remove {
		if pl.Old == nil {
			if pl.Remove {
				return docker.Service{}, false, nil
			}
			// No known running release: the new one stands in (as for
			// the other drivers).
		} else {
			spec, release = *pl.Old, pl.OldRelease
		}
	}
	if !spec.IsContainer() {
		return docker.Service{}, false, nil
	}
	ds, err := docker.ParseSpec(spec.Container)
	if err != nil {
		return docker.Service{}, true, fmt.Errorf("%s: %w", pl.Svc, err)
	}
	s := docker.Service{App: pl.Svc.App, Service: pl.Svc.Service, Release: release, Spec: ds, LockDir: w.a.cfg.Layout.ServiceDir(pl.Svc)}
	return s, true, nil
}

// The apply's driver calls: a container service goes to the engine, any
// other to --driver.

func (w *applyWorker) stopSvc(ctx context.Context, i int, running bool) error {
	if running && w.plan[i].Old == nil && w.plan[i].Spec.IsContainer() {
		return w.stopOthers(ctx, i)
	}
	cs, isC, err := w.containerService(ctx, i, running)
	if err != nil {
		return err
	}
	if !isC {
		if running {
			return w.a.cfg.Driver.Stop(ctx, w.running(i))
		}
		return w.a.cfg.Driver.Stop(ctx, w.service(i))
	}
	drv, _, err := w.a.engine()
	if err != nil {
		return err
	}
	if !running {
		// A rollback undoes the new container: it is removed.
		err := drv.Remove(ctx, cs)
		if err == nil {
			w.seen(cs, "removed")
		}
		return err
	}
	err = drv.Stop(ctx, cs)
	if err == nil {
		w.seen(cs, "exited")
	}
	return err
}

func (w *applyWorker) startSvc(ctx context.Context, i int, running bool) error {
	if running && w.plan[i].Old == nil && w.plan[i].Spec.IsContainer() {
		return nil // no release of it was known to run: a rollback starts nothing
	}
	cs, isC, err := w.containerService(ctx, i, running)
	if err != nil {
		return err
	}
	if !isC {
		if running {
			return w.a.cfg.Driver.Start(ctx, w.running(i))
		}
		return w.a.cfg.Driver.Start(ctx, w.service(i))
	}
	drv, _, err := w.a.engine()
	if err != nil {
		return err
	}
	if !running {
		ref, err := registry.ParsePinned(cs.Spec.Image)
		if err != nil {
			return err
		}
		cs.Image = w.a.loadedImage(ctx, drv, ref)
		if cs.Image == "" {
			return fmt.Errorf("image %s of %s is not loaded in the engine (it is loaded when the update downloads)", cs.Spec.Image, w.plan[i].Svc)
		}
		if _, err := drv.Create(ctx, cs); err != nil {
			return err
		}
		w.seen(cs, "created")
	}
	err = drv.Start(ctx, cs)
	if err == nil {
		w.seen(cs, "running")
	}
	return err
}

func (w *applyWorker) healthSvc(ctx context.Context, i int) error {
	cs, isC, err := w.containerService(ctx, i, false)
	if err != nil {
		return err
	}
	if !isC {
		return w.a.cfg.Driver.Health(ctx, w.service(i))
	}
	drv, _, err := w.a.engine()
	if err != nil {
		return err
	}
	// The apply has waited --health-wait already: the container must be
	// running now, and healthy when its image has a HEALTHCHECK.
	return drv.Health(ctx, cs, 0)
}

// dropOldContainers removes, once an app's apply is healthy, the containers
// of its previous release (kept stopped for the rollback until then) and
// those of the services the target dropped. A failure is logged: a stopped
// container left behind changes nothing that runs.
func (w *applyWorker) dropOldContainers(ctx context.Context) {
	for i, pl := range w.plan {
		if pl.Old == nil || !pl.Old.IsContainer() || (!pl.Remove && pl.OldRelease == pl.Release) {
			continue
		}
		cs, isC, err := w.containerService(ctx, i, true)
		if err != nil || !isC {
			continue
		}
		drv, _, err := w.a.engine()
		if err != nil {
			return
		}
		if err := drv.Remove(ctx, cs); err != nil {
			w.a.logf("remove the container of %s release %s: %v", pl.Svc, cs.Release, err)
		}
	}
}

// imageRefused reports whether a container image error is about the target
// (it will never succeed as it is) rather than the network or the registry's
// state: the update is then rejected, not retried.
func imageRefused(err error) bool {
	for _, e := range []error{target.ErrInvalid, registry.ErrDigestMismatch, registry.ErrSizeMismatch, registry.ErrNoPlatform,
		registry.ErrWrongPlatform, registry.ErrNotPinned, registry.ErrUnsupportedMediaType} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (a *Agent) onPullProgress(ev pullProgress) {
	s := &a.st
	if s.pending == nil || s.pending.ID != ev.id {
		return
	}
	a.loadPulls()
	prev, had := s.pulls[ev.image]
	if d := ev.fetched - prev.fetched; d > 0 {
		s.pulledBytes += d
		s.downloadedBytes += d
	}
	if had && prev.id == ev.id && !ev.complete && prev.done > ev.done {
		// A restarted pull reports its blobs one by one: what the
		// journal said is on the device stays until it catches up.
		ev.done, ev.layersDone, ev.at = prev.done, max(prev.layersDone, ev.layersDone), prev.at
	}
	s.pulls[ev.image] = ev
	a.journalPull(ev)
}

// journalPull writes an image's progress to the journal when enough bytes
// or time went by since its last record, and removes the record once the
// image is loaded. Records of other updates go with the first write.
func (a *Agent) journalPull(ev pullProgress) {
	s := &a.st
	if s.pullMarks == nil {
		s.pullMarks = map[string]pullMark{}
	}
	m, ok := s.pullMarks[ev.image]
	if !ok {
		m = pullMark{at: time.Now()}
		s.pullMarks[ev.image] = m
	}
	if ev.complete {
		if m.put {
			a.journal(func(tx *store.Tx) error { return tx.DeleteImagePull(ev.digest) })
		}
		delete(s.pullMarks, ev.image)
		return
	}
	if since := time.Since(m.at); ev.done <= m.done || since < pullJournalMin ||
		ev.done-m.done < pullJournalBytes && since < pullJournalEvery {
		return
	}
	rec := store.ImagePull{Digest: ev.digest, Ref: ev.image, UpdateID: ev.id, Layers: ev.layers, LayersDone: ev.layersDone,
		Done: ev.done, Total: ev.total, Updated: ev.at}
	err := a.journal(func(tx *store.Tx) error {
		if err := tx.DeleteImagePulls(ev.id); err != nil {
			return err
		}
		return tx.PutImagePull(rec)
	})
	if err == nil {
		s.pullMarks[ev.image] = pullMark{done: ev.done, at: time.Now(), put: true}
	}
}

// loadPulls puts the journalled image pulls of the pending update into the
// state, once after the start, so that the status shows them before the
// pull resumes; records of any other update are removed.
func (a *Agent) loadPulls() {
	s := &a.st
	if s.pulls == nil {
		s.pulls = map[string]pullProgress{}
	}
	if s.pullsLoaded {
		return
	}
	s.pullsLoaded = true
	var recs []store.ImagePull
	if err := a.j.View(func(tx *store.Tx) (err error) { recs, err = tx.ImagePulls(); return err }); err != nil {
		a.logf("read the journalled image pulls: %v", err)
		return
	}
	stale := false
	for _, r := range recs {
		if s.pending == nil || r.UpdateID != s.pending.ID {
			stale = true
			continue
		}
		if p, ok := s.pulls[r.Ref]; ok && p.done >= r.Done {
			continue
		}
		s.pulls[r.Ref] = pullProgress{id: r.UpdateID, image: r.Ref, digest: r.Digest, done: r.Done, total: r.Total,
			layers: r.Layers, layersDone: r.LayersDone, at: r.Updated, fetched: s.pulls[r.Ref].fetched}
		if s.pullMarks == nil {
			s.pullMarks = map[string]pullMark{}
		}
		s.pullMarks[r.Ref] = pullMark{done: r.Done, at: time.Now(), put: true}
	}
	if stale {
		keep := ""
		if s.pending != nil {
			keep = s.pending.ID
		}
		a.journal(func(tx *store.Tx) error { return tx.DeleteImagePulls(keep) })
	}
}

// forgetPulls removes the journalled image pulls once the pending update
// ended (applied, replaced or dropped): none outlives its update.
func (a *Agent) forgetPulls() {
	s := &a.st
	a.loadPulls() // removes the records of a run that never read them
	put := false
	for k, m := range s.pullMarks {
		put = put || m.put
		delete(s.pullMarks, k)
	}
	if put {
		a.journal(func(tx *store.Tx) error { return tx.DeleteImagePulls("") })
	}
}

// stopOthers stops (and keeps) latch's containers of service i of any
// release but the new one, when the release that runs is not known (the
// running target was not recorded): Start of the new one would conflict.
func (w *applyWorker) stopOthers(ctx context.Context, i int) error {
	pl := w.plan[i]
	drv, _, err := w.a.engine()
	if err != nil {
		return err
	}
	found, err := drv.Find(ctx, pl.Svc.App)
	if err != nil {
		return err
	}
	spec, err := docker.ParseSpec(pl.Spec.Container)
	if err != nil {
		return fmt.Errorf("%s: %w", pl.Svc, err)
	}
	for _, f := range found {
		if f.Service != pl.Svc.Service || f.Release == pl.Release {
			continue
		}
		cs := docker.Service{App: f.App, Service: f.Service, Release: f.Release, Spec: spec, LockDir: w.a.cfg.Layout.ServiceDir(pl.Svc)}
		if err := drv.Stop(ctx, cs); err != nil {
			return err
		}
	}
	return nil
}

// ContainerStatus is one container service in the status.
type ContainerStatus struct {
	App     string `json:"app"`
	Service string `json:"service"`
	Release string `json:"release"`
	// Image is the short digest of the image reference (12 hex digits).
	Image string `json:"image"`
	// State is the container's state as latch last saw it (created,
	// running, exited, removed), "" before latch acted on it.
	State string `json:"state,omitempty"`
	// PullDone and PullTotal are the image's bytes on the device and its
	// size, while or once the pending update fetched it.
	PullDone  int64 `json:"pull_done"`
	PullTotal int64 `json:"pull_total"`
	// Pull is the image's download while it is under way (also as the
	// journal kept it across a restart, until the pull resumes).
	Pull *PullStatus `json:"pull,omitempty"`
}

// PullStatus is the progress of one image's download.
type PullStatus struct {
	Layers     int       `json:"layers"`
	LayersDone int       `json:"layers_done"`
	Done       int64     `json:"done"`
	Total      int64     `json:"total"`
	Updated    time.Time `json:"updated"`
}

// containerSeen is the apply worker's report of a container it acted on.
type containerSeen struct {
	app, service, release, state string
}

func (a *Agent) onContainerSeen(ev containerSeen) {
	if a.st.containers == nil {
		a.st.containers = map[string]containerSeen{}
	}
	a.st.containers[ev.app+"/"+ev.service] = ev
}

// seen reports a container state to the loop.
func (w *applyWorker) seen(cs docker.Service, state string) {
	w.a.send(containerSeen{app: cs.App, service: cs.Service, release: cs.Release, state: state})
}

// containerStatus lists the container services of the pending target, and
// of the running one for the apps the pending one does not change.
func (a *Agent) containerStatus() []ContainerStatus {
	s := &a.st
	if s.pending != nil && s.tgt != nil && !s.pullsLoaded {
		a.loadPulls()
	}
	var out []ContainerStatus
	done := map[string]bool{}
	add := func(st *target.State, pending bool) {
		if st == nil {
			return
		}
		for _, app := range sortedKeys(st.Apps) {
			ta := st.Apps[app]
			for _, name := range sortedKeys(ta.Services) {
				svc := ta.Services[name]
				key := app + "/" + name
				if !svc.IsContainer() || done[key] {
					continue
				}
				done[key] = true
				cs := ContainerStatus{App: app, Service: name, Release: ta.Release}
				if _, d, ok := strings.Cut(svc.Image, "@sha256:"); ok && len(d) >= 12 {
					cs.Image = d[:12]
				}
				if seen, ok := s.containers[key]; ok && seen.release == ta.Release {
					cs.State = seen.state
				}
				if p, ok := s.pulls[svc.Image]; ok && pending {
					cs.PullDone, cs.PullTotal = p.done, p.total
					if !p.complete && p.id == s.pending.ID {
						cs.Pull = &PullStatus{Layers: p.layers, LayersDone: p.layersDone, Done: p.done, Total: p.total, Updated: p.at}
					}
				}
				out = append(out, cs)
			}
		}
	}
	if s.pending != nil {
		add(s.tgt, true)
	}
	add(s.running, false)
	return out
}

// containerOrder orders names (sorted) so that the container services of
// svcs come after those they depend on (depends_on): they keep the places
// containers have among names, filled in dependency order. Without
// container services, or when their specs do not parse (the update is then
// refused when it downloads), names stay as they are.
func containerOrder(names []string, svcs map[string]target.Service) []string {
	specs := map[string]docker.Spec{}
	for _, n := range names {
		svc, ok := svcs[n]
		if !ok || !svc.IsContainer() {
			continue
		}
		spec, err := docker.ParseSpec(svc.Container)
		if err != nil {
			return names
		}
		specs[n] = spec
	}
	if len(specs) < 2 {
		return names
	}
	order, err := docker.Order(specs)
	if err != nil {
		return names
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		if _, ok := specs[n]; ok {
			out = append(out, order[0])
			order = order[1:]
		} else {
			out = append(out, n)
		}
	}
	return out
}

// pruneBlobs removes the image blobs and records that neither the running
// target nor the pending one needs: the blobs of the running release stay,
// so that an update sharing its layers fetches only the new ones.
func (a *Agent) pruneBlobs() {
	if a.st.pending == nil {
		a.forgetPulls()
	}
	keepRec, keepBlob := map[string]bool{}, map[string]bool{}
	for _, st := range []*target.State{a.st.running, a.st.tgt} {
		if st == nil {
			continue
		}
		for _, app := range st.Apps {
			for _, svc := range app.Services {
				if !svc.IsContainer() {
					continue
				}
				ref, err := registry.ParsePinned(svc.Image)
				if err != nil {
					continue
				}
				hex := strings.TrimPrefix(ref.Digest, "sha256:")
				keepRec[hex] = true
				b, err := os.ReadFile(a.loadedPath(ref))
				if err != nil {
					continue
				}
				for _, d := range strings.Fields(string(b)) {
					keepBlob[strings.TrimPrefix(d, "sha256:")] = true
				}
			}
		}
	}
	if a.st.pending != nil || a.st.running == nil {
		return // a download may be under way, or what runs is not known: keep all
	}
	if entries, err := os.ReadDir(a.loadedDir()); err == nil {
		for _, e := range entries {
			if !keepRec[e.Name()] {
				os.Remove(filepath.Join(a.loadedDir(), e.Name()))
			}
		}
	}
	if entries, err := os.ReadDir(a.blobDir()); err == nil {
		for _, e := range entries {
			if !keepBlob[e.Name()] {
				os.Remove(filepath.Join(a.blobDir(), e.Name()))
			}
		}
	}
}

// containerRestart returns the stop and start of a restart of container
// service svc (restart-service): latch's container of the release that the
// target restartable chose names for svc's app. It runs on the loop, the
// calls it returns on the restart worker.
func (a *Agent) containerRestart(svc Service) (stop, start func(context.Context) error) {
	st := a.st.running
	if st == nil || st.Apps[svc.App].Services == nil {
		st = a.st.latest
	}
	var release string
	if st != nil {
		release = st.Apps[svc.App].Release
	}
	cs := docker.Service{App: svc.App, Service: svc.Name, Release: release, LockDir: svc.LockDir}
	ds, specErr := docker.ParseSpec(svc.Spec.Container)
	cs.Spec = ds
	call := func(ctx context.Context, op func(*docker.Driver) error) error {
		if specErr != nil {
			return fmt.Errorf("%s/%s: %w", svc.App, svc.Name, specErr)
		}
		drv, _, err := a.engine()
		if err != nil {
			return err
		}
		return op(drv)
	}
	stop = func(ctx context.Context) error {
		return call(ctx, func(drv *docker.Driver) error { return drv.Stop(ctx, cs) })
	}
	start = func(ctx context.Context) error {
		return call(ctx, func(drv *docker.Driver) error {
			if err := drv.Start(ctx, cs); err != nil {
				return err
			}
			a.send(containerSeen{app: cs.App, service: cs.Service, release: cs.Release, state: "running"})
			return nil
		})
	}
	return stop, start
}
