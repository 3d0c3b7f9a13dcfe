package api

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore"
)

// Repository settings that writes need: the durability class and the
// key-encryption key.
//
// Durability classes: a repository may ask for an erasure geometry of its
// own (Repository.durability_k/m). Writes to it use a pipeline at that
// geometry; reads need nothing, as every layout records its geometry.
//
// Encryption: a repository created with encryption type KMS has a KEK of its
// own (Repository.kms_key) that wraps its new data keys; every other one
// uses the server's (Config.KeyName). That is fixed at creation.
//
// Settings are read through a short cache: they change rarely, and a push
// that starts just after a change may still use the previous class.

const durabilityTTL = 10 * time.Second

type settingsCache struct {
	mu     sync.Mutex
	repos  map[string]repoSettings
	stores map[durabilityKey]*blobstore.Store
}

type repoSettings struct {
	k, m    uint32
	keyName string // the repository's own KEK; empty: the server's
	at      time.Time
}

type durabilityKey struct {
	base *blobstore.Store
	k, m int
}

// settings returns repo's settings, from the cache when fresh.
func (s *Server) settings(ctx context.Context, repo string) (repoSettings, error) {
	d := &s.repoSettings
	d.mu.Lock()
	e, ok := d.repos[repo]
	d.mu.Unlock()
	if ok && time.Since(e.at) <= durabilityTTL {
		return e, nil
	}
	r, err := s.meta.Repository(ctx, repo)
	switch {
	case errors.Is(err, metastore.ErrRepoUnknown):
		e = repoSettings{at: time.Now()}
	case err != nil:
		return repoSettings{}, err
	default:
		e = repoSettings{k: r.DurabilityK, m: r.DurabilityM, at: time.Now()}
		if r.EncryptionType == metastore.EncryptionKMS {
			e.keyName = r.KmsKey
		}
	}
	d.mu.Lock()
	if d.repos == nil {
		d.repos = map[string]repoSettings{}
	}
	if len(d.repos) > 100000 {
		clear(d.repos)
	}
	d.repos[repo] = e
	d.mu.Unlock()
	return e, nil
}

// forgetSettings drops repo's cached settings (it was created or deleted
// through this frontend).
func (s *Server) forgetSettings(repo string) {
	s.repoSettings.mu.Lock()
	delete(s.repoSettings.repos, repo)
	s.repoSettings.mu.Unlock()
}

// keyName is the KEK that wraps repo's new data keys.
func (s *Server) keyName(ctx context.Context, repo string) (string, error) {
	e, err := s.settings(ctx, repo)
	if err != nil || e.keyName == "" {
		return s.cfg.KeyName, err
	}
	return e.keyName, nil
}

// writeStore is the pipeline that writes repo's new blobs.
func (s *Server) writeStore(ctx context.Context, repo string) (*blobstore.Store, error) {
	base := s.blobstore()
	e, err := s.settings(ctx, repo)
	if err != nil {
		return nil, err
	}
	d := &s.repoSettings
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
