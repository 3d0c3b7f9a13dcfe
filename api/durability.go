package api

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore"
)

// Durability classes: a repository may ask for an erasure geometry of its
// own (Repository.durability_k/m). Writes to it use a pipeline at that
// geometry; reads need nothing, as every layout records its geometry. The
// setting is read through a short cache: it changes rarely, and a push that
// starts just after a change may still use the previous class.

const durabilityTTL = 10 * time.Second

type durabilityCache struct {
	mu     sync.Mutex
	repos  map[string]durabilityEntry
	stores map[durabilityKey]*blobstore.Store
}

type durabilityEntry struct {
	k, m uint32
	at   time.Time
}

type durabilityKey struct {
	base *blobstore.Store
	k, m int
}

// writeStore is the pipeline that writes repo's new blobs.
func (s *Server) writeStore(ctx context.Context, repo string) (*blobstore.Store, error) {
	base := s.blobstore()
	d := &s.durability
	d.mu.Lock()
	e, ok := d.repos[repo]
	d.mu.Unlock()
	if !ok || time.Since(e.at) > durabilityTTL {
		r, err := s.meta.Repository(ctx, repo)
		switch {
		case errors.Is(err, metastore.ErrRepoUnknown):
			e = durabilityEntry{at: time.Now()}
		case err != nil:
			return nil, err
		default:
			e = durabilityEntry{k: r.DurabilityK, m: r.DurabilityM, at: time.Now()}
		}
		d.mu.Lock()
		if d.repos == nil {
			d.repos = map[string]durabilityEntry{}
		}
		if len(d.repos) > 100000 {
			clear(d.repos)
		}
		d.repos[repo] = e
		d.mu.Unlock()
	}
	cfg := base.Config()
	if e.k == 0 || (int(e.k) == cfg.K && int(e.m) == cfg.M) {
		return base, nil
	}
	key := durabilityKey{base: base, k: int(e.k), m: int(e.m)}
	d.mu.Lock()
	defer d.mu.Unlock()
	if st, ok := d.stores[key]; ok {
		return st, nil
	}
	st, err := base.WithGeometry(key.k, key.m)
	if err != nil {
		return nil, err
	}
	if d.stores == nil {
		d.stores = map[durabilityKey]*blobstore.Store{}
	}
	d.stores[key] = st
	return st, nil
}
