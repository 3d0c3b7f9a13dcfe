package api

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// The key reconciler keeps every wrapped data key where it should be:
//
//   - Rotation: a copy wrapped by a version of its key-encryption key (KEK)
//     that is not the current one is stale; a pass unwraps it and wraps the
//     same data key again under the current version (keys.Rewrap). Blob data
//     is never rewritten. The state machine swaps each copy by
//     compare-and-set, so passes may run anywhere, at once, and again:
//     an interrupted rotation resumes by running another pass.
//   - Repositories with their own KEK: a blob linked into one whose layout
//     has no copy under its KEK (keyneed/) gets one more copy.
//
// A full pass walks every record holding a wrapped key (RotateKey starts
// one; GetKeyRotationStatus follows it). A needs-only pass walks keyneed/
// alone; the frontend runs one soon after each cross-repository mount of an
// encrypted blob and every few seconds (a push of a blob that already
// exists under another key needs one too), and a full pass every reconcile
// interval.

// KeyLister lists the records holding wrapped data keys (cluster.Meta
// implements it).
type KeyLister interface {
	WrappedKeys(ctx context.Context, after string, n int, needsOnly bool) ([]metastore.KeyItem, string, error)
}

// KeyJobStatus is the progress of the last full key pass.
type KeyJobStatus struct {
	State      string    `json:"state"` // "idle", "running", "done", "failed"
	Reason     string    `json:"reason,omitempty"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	// Records visited, stale copies found, copies rewrapped, copies added
	// for a repository's key, and copies that could not be rewrapped.
	Scanned   int64 `json:"scanned"`
	Stale     int64 `json:"stale"`
	Rewrapped int64 `json:"rewrapped"`
	Added     int64 `json:"added"`
	Failed    int64 `json:"failed"`
	// Copies under keys that were destroyed (crypto-shredded): kept as
	// they are, and not failures.
	Destroyed int64  `json:"destroyed"`
	Error     string `json:"error,omitempty"`
	// Versions counts the wrapped copies seen by key name and version.
	Versions map[string]map[string]int64 `json:"versions,omitempty"`
}

type keyJobs struct {
	kickc chan struct{}

	mu         sync.Mutex
	status     KeyJobStatus
	running    bool
	next       chan struct{} // a pass queued behind the running one; closed when it ends
	nextReason string

	rewrapped *prometheus.CounterVec
	failed    prometheus.Counter
	passes    *prometheus.CounterVec
}

func newKeyJobs(reg prometheus.Registerer) *keyJobs {
	j := &keyJobs{
		kickc:  make(chan struct{}, 1),
		status: KeyJobStatus{State: "idle"},
		rewrapped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_keys_rewrapped_total", Help: "Wrapped data keys written by the key reconciler, by why (rotation: a stale version rewrapped; added: a copy for a repository's own key).",
		}, []string{"why"}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "strata_keys_rewrap_failures_total", Help: "Wrapped data keys the key reconciler could not rewrap (key missing, destroyed or provider down).",
		}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_keys_passes_total", Help: "Key reconciler passes, by kind (full, needs) and result.",
		}, []string{"kind", "result"}),
	}
	reg.MustRegister(j.rewrapped, j.failed, j.passes)
	return j
}

// kick asks for a needs-only pass soon; it never blocks.
func (j *keyJobs) kick() {
	select {
	case j.kickc <- struct{}{}:
	default:
	}
}

// Status returns the progress of the last full key pass.
func (s *Server) KeyJobStatus() KeyJobStatus {
	j := s.keyJobs
	j.mu.Lock()
	defer j.mu.Unlock()
	st := j.status
	st.Versions = nil
	if j.status.Versions != nil {
		st.Versions = map[string]map[string]int64{}
		for name, vs := range j.status.Versions {
			st.Versions[name] = map[string]int64{}
			for v, n := range vs {
				st.Versions[name][v] = n
			}
		}
	}
	return st
}

// StartKeyPass starts a full key pass in the background and returns a
// channel closed when it ends. When a pass is already running (it may have
// read the current key versions before a rotation), another one is queued
// to start when it ends, and the channel is that one's.
func (s *Server) StartKeyPass(reason string) <-chan struct{} {
	j := s.keyJobs
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.running {
		if j.next == nil {
			j.next, j.nextReason = make(chan struct{}), reason
		}
		return j.next
	}
	done := make(chan struct{})
	s.startKeyPassLocked(reason, done)
	return done
}

// startKeyPassLocked runs one full pass, then the one queued meanwhile, if
// any. The caller holds j.mu.
func (s *Server) startKeyPassLocked(reason string, done chan struct{}) {
	j := s.keyJobs
	j.running = true
	j.status = KeyJobStatus{State: "running", Reason: reason, StartedAt: time.Now(), Versions: map[string]map[string]int64{}}
	go func() {
		_, err := s.keyPass(context.Background(), false)
		j.mu.Lock()
		j.running = false
		j.status.FinishedAt = time.Now()
		j.status.State = "done"
		result := "ok"
		if err != nil {
			j.status.State, j.status.Error, result = "failed", err.Error(), "error"
		} else if j.status.Failed > 0 {
			j.status.State, result = "failed", "incomplete"
			j.status.Error = fmt.Sprintf("%d wrapped keys could not be rewrapped (see the log); run the pass again once their keys are available", j.status.Failed)
		}
		st := j.status
		if j.next != nil {
			next, nextReason := j.next, j.nextReason
			j.next, j.nextReason = nil, ""
			s.startKeyPassLocked(nextReason, next)
		}
		j.mu.Unlock()
		j.passes.WithLabelValues("full", result).Inc()
		s.log.Info("key pass finished", "reason", reason, "state", st.State, "scanned", st.Scanned, "stale", st.Stale,
			"rewrapped", st.Rewrapped, "added", st.Added, "failed", st.Failed, "took", st.FinishedAt.Sub(st.StartedAt).Round(time.Millisecond))
		close(done)
	}()
}

// needsInterval is how often a frontend looks for blobs needing a copy of
// their data key under a repository's key.
const needsInterval = 5 * time.Second

// RunKeyReconciler runs needs-only passes when kicked and full passes every
// interval (0: none) until ctx ends. A frontend with no key provider has
// nothing to do.
func (s *Server) RunKeyReconciler(ctx context.Context, interval time.Duration) {
	if s.cfg.Keys == nil {
		return
	}
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	needs := time.NewTicker(needsInterval)
	defer needs.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-needs.C:
			s.keyJobs.kick()
		case <-s.keyJobs.kickc:
			time.Sleep(200 * time.Millisecond) // gather a burst of mounts into one pass
			_, err := s.keyPass(ctx, true)
			result := "ok"
			if err != nil {
				result = "error"
				if ctx.Err() == nil {
					s.log.Warn("key reconciler: pass over blobs needing a copy failed", "err", err)
				}
			}
			s.keyJobs.passes.WithLabelValues("needs", result).Inc()
		case <-tick:
			<-s.StartKeyPass("periodic")
		}
	}
}

// keyPass walks the records holding wrapped keys (only keyneed/ with
// needsOnly) and proposes the rewraps they need, in batches. It returns how
// many copies it could not make or rewrap.
func (s *Server) keyPass(ctx context.Context, needsOnly bool) (failed int, err error) {
	lister, ok := s.meta.(KeyLister)
	if !ok || s.cfg.Keys == nil {
		return 0, errors.New("key reconciler: no key provider or no metadata listing")
	}
	j := s.keyJobs
	full := !needsOnly
	current := map[string]string{} // key name -> current version, for this pass
	currentVersion := func(name string) (string, error) {
		if v, ok := current[name]; ok {
			return v, nil
		}
		v, err := s.cfg.Keys.CurrentVersion(ctx, name)
		if err == nil {
			current[name] = v
		}
		return v, err
	}
	var batch []*pb.KeyChange
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := s.propose(ctx, &pb.Command{Op: &pb.Command_SetWrappedKeys{SetWrappedKeys: &pb.SetWrappedKeys{Changes: batch}}})
		if err != nil {
			return fmt.Errorf("key reconciler: record %d rewrapped keys: %w", len(batch), err)
		}
		for _, ch := range batch {
			if ch.Kind == metastore.KeyKindNeed {
				continue // a need for a destroyed key, dropped
			}
			why := "rotation"
			if ch.Old == nil {
				why = "added"
			}
			j.rewrapped.WithLabelValues(why).Inc()
			if full {
				j.mu.Lock()
				if ch.Old == nil {
					j.status.Added++
				} else {
					j.status.Rewrapped++
				}
				j.mu.Unlock()
			}
		}
		batch = batch[:0]
		return nil
	}
	fail := func(it metastore.KeyItem, err error) {
		failed++
		j.failed.Inc()
		s.log.Warn("key reconciler: cannot rewrap", "kind", it.Kind, "repo", it.Repo, "id", it.ID, "need", it.Need, "err", err)
		if full {
			j.mu.Lock()
			j.status.Failed++
			j.mu.Unlock()
		}
	}
	cursor := ""
	for {
		items, next, err := lister.WrappedKeys(ctx, cursor, 256, needsOnly)
		if err != nil {
			return failed, err
		}
		for _, it := range items {
			if it.Kind == metastore.KeyKindNeed {
				ch, err := s.copyForKey(ctx, it)
				if err != nil {
					fail(it, err)
				} else if ch != nil {
					batch = append(batch, ch)
				}
			} else {
				for _, wk := range it.Keys {
					if full {
						j.mu.Lock()
						vs := j.status.Versions[wk.KeyName]
						if vs == nil {
							vs = map[string]int64{}
							j.status.Versions[wk.KeyName] = vs
						}
						vs[wk.KeyVersion]++
						j.mu.Unlock()
					}
					cur, err := currentVersion(wk.KeyName)
					if errors.Is(err, keys.ErrKeyDestroyed) {
						if full {
							j.mu.Lock()
							j.status.Destroyed++
							j.mu.Unlock()
						}
						continue
					}
					if err != nil {
						fail(it, err)
						continue
					}
					if wk.KeyVersion == cur {
						continue
					}
					if full {
						j.mu.Lock()
						j.status.Stale++
						j.mu.Unlock()
					}
					nwk, err := keys.Rewrap(ctx, s.cfg.Keys, wrappedFromPB(wk), wk.KeyName)
					if err != nil {
						fail(it, err)
						continue
					}
					batch = append(batch, &pb.KeyChange{Kind: it.Kind, Repo: it.Repo, Id: it.ID, Old: wk, New: wrappedToPB(nwk)})
				}
			}
			if full {
				j.mu.Lock()
				j.status.Scanned++
				j.mu.Unlock()
			}
			if len(batch) >= 64 {
				if err := flush(); err != nil {
					return failed, err
				}
			}
		}
		if next == "" {
			return failed, flush()
		}
		cursor = next
	}
}

// copyForKey makes the copy of a blob's data key that a repository's KEK
// needs (nil when the blob is gone or has the copy already). A need for a
// destroyed key is dropped: no repository can use that key any more.
func (s *Server) copyForKey(ctx context.Context, it metastore.KeyItem) (*pb.KeyChange, error) {
	if _, err := s.cfg.Keys.CurrentVersion(ctx, it.Need); errors.Is(err, keys.ErrKeyDestroyed) {
		return &pb.KeyChange{Kind: metastore.KeyKindNeed, Id: it.ID, Old: &pb.WrappedKey{KeyName: it.Need}}, nil
	}
	l, err := s.meta.Blob(ctx, it.ID)
	if errors.Is(err, metastore.ErrBlobUnknown) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, wk := range l.Keys {
		if wk.KeyName == it.Need {
			// Already there: an empty add clears the need.
			return &pb.KeyChange{Kind: metastore.KeyKindBlob, Id: it.ID, New: wk}, nil
		}
	}
	for _, wk := range l.Keys {
		nwk, err := keys.Rewrap(ctx, s.cfg.Keys, wrappedFromPB(wk), it.Need)
		if err == nil {
			return &pb.KeyChange{Kind: metastore.KeyKindBlob, Id: it.ID, New: wrappedToPB(nwk)}, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// ErrWrongKeys: the key provider cannot unwrap the registry's data keys.
var ErrWrongKeys = errors.New("the key provider cannot unwrap this registry's data keys")

// CheckKeys samples up to n wrapped data keys of the registry and tries to
// unwrap them, so a frontend started with the wrong keyring (another
// cluster's, an old backup missing versions) stops at start with a clear
// message instead of failing every pull. It returns nil when there is
// nothing encrypted yet, or when at least one sample unwraps and none is
// refused as undecryptable by a key the provider should hold.
func (s *Server) CheckKeys(ctx context.Context, n int) error {
	lister, ok := s.meta.(KeyLister)
	if !ok || s.cfg.Keys == nil {
		return nil
	}
	items, _, err := lister.WrappedKeys(ctx, "", n, false)
	if err != nil {
		return fmt.Errorf("reading wrapped keys: %w", err)
	}
	var bad []error
	good := 0
	for _, it := range items {
		for _, wk := range it.Keys {
			dk, err := keys.Unwrap(ctx, s.cfg.Keys, wrappedFromPB(wk))
			clear(dk)
			switch {
			case err == nil:
				good++
			case errors.Is(err, keys.ErrDecrypt), errors.Is(err, keys.ErrKeyNotFound), errors.Is(err, keys.ErrKeyVersionNotFound):
				bad = append(bad, fmt.Errorf("%s %s: %w", it.Kind, it.ID, err))
			}
		}
	}
	if len(bad) > 0 && good == 0 {
		return fmt.Errorf("%w: %d of %d sampled data keys refused (first: %v): is this the keyring of this registry, and up to date?", ErrWrongKeys, len(bad), len(bad)+good, bad[0])
	}
	if len(bad) > 0 {
		s.log.Warn("some sampled data keys do not unwrap (destroyed repository keys, or keys this frontend lacks)", "refused", len(bad), "ok", good, "first", bad[0])
	}
	return nil
}
