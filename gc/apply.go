package gc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Lifecycle applies the repositories' lifecycle policies on the leader. An
// expired image is deleted with DeleteManifest (its tags go with it, and the
// outbox records the rule); its blobs then become unreferenced and the
// Collector takes them after its grace period.
//
// Images that are part of another image are never evaluated on their own:
// the children of an index in the same repository, and referrers (signatures,
// SBOMs) whose subject is still in the repository. They go when their parent
// goes.
type Lifecycle struct {
	store    *metastore.Store
	meta     Proposer
	leader   func() bool
	interval time.Duration
	log      *slog.Logger
	expired  prometheus.Counter
	runs     prometheus.Counter
}

// NewLifecycle returns the policy runner; interval is how often every
// policy is applied (default 10m).
func NewLifecycle(store *metastore.Store, meta Proposer, leader func() bool, interval time.Duration,
	reg prometheus.Registerer, log *slog.Logger) *Lifecycle {
	if interval <= 0 {
		interval = 10 * time.Minute
	}
	if log == nil {
		log = slog.Default()
	}
	l := &Lifecycle{store: store, meta: meta, leader: leader, interval: interval, log: log,
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_lifecycle_images_expired_total", Help: "Images expired by lifecycle policies."}),
		runs:    prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_lifecycle_runs_total", Help: "Lifecycle policy evaluations of a repository."}),
	}
	if reg != nil {
		reg.MustRegister(l.expired, l.runs)
	}
	return l
}

// Preview evaluates policyText (the repository's own policy when empty)
// against repo's images now, without expiring anything.
func (l *Lifecycle) Preview(repo, policyText string, now time.Time) ([]Expiration, error) {
	if policyText == "" {
		r, err := l.store.Repository(repo)
		if err != nil {
			return nil, err
		}
		if r.LifecyclePolicy == "" {
			return nil, fmt.Errorf("%w: %s has no lifecycle policy", ErrNoPolicy, repo)
		}
		policyText = r.LifecyclePolicy
	}
	p, err := ParsePolicy([]byte(policyText))
	if err != nil {
		return nil, err
	}
	images, err := l.images(repo)
	if err != nil {
		return nil, err
	}
	return Evaluate(p, images, now), nil
}

// ErrNoPolicy: the repository has no lifecycle policy.
var ErrNoPolicy = errors.New("gc: no lifecycle policy")

// images are the repository's images that a policy may expire.
func (l *Lifecycle) images(repo string) ([]Image, error) {
	infos, err := l.store.Images(repo)
	if err != nil {
		return nil, err
	}
	present := make(map[string]bool, len(infos))
	for _, in := range infos {
		present[in.Digest] = true
	}
	var out []Image
	for _, in := range infos {
		if in.Subject != "" && present[in.Subject] {
			continue // a referrer of a live image
		}
		if child, err := l.isChild(repo, in.Digest); err != nil {
			return nil, err
		} else if child {
			continue
		}
		img := Image{Digest: in.Digest, Tags: in.Tags, PushedAt: time.Unix(0, in.PushedNs)}
		if in.LastPulledNs > 0 {
			img.LastPulledAt = time.Unix(0, in.LastPulledNs)
		}
		out = append(out, img)
	}
	return out, nil
}

// isChild reports whether an index of the repository names dgst.
func (l *Lifecycle) isChild(repo, dgst string) (bool, error) {
	rc, err := l.store.RefCount(dgst)
	if err != nil {
		return false, err
	}
	return rc.ManifestRefs > 0, nil
}

// Apply expires what repo's policy selects now and returns the images it
// expired.
func (l *Lifecycle) Apply(ctx context.Context, repo string) ([]Expiration, error) {
	exps, err := l.Preview(repo, "", time.Now())
	if err != nil {
		return nil, err
	}
	l.runs.Inc()
	var done []Expiration
	for _, e := range exps {
		err := l.meta.Propose(ctx, &pb.Command{Op: &pb.Command_DeleteManifest{DeleteManifest: &pb.DeleteManifest{
			Repo: repo, Digest: e.Image.Digest, Reason: fmt.Sprintf("lifecycle rule %d", e.RulePriority)}}})
		switch {
		case err == nil:
			done = append(done, e)
			l.expired.Inc()
		case errors.Is(err, metastore.ErrManifestUnknown):
		default:
			return done, fmt.Errorf("expire %s@%s: %w", repo, e.Image.Digest, err)
		}
	}
	if len(done) > 0 {
		l.log.Info("lifecycle policy expired images", "repo", repo, "images", len(done))
	}
	return done, nil
}

// Run applies every repository's policy each interval while this node
// leads, until ctx ends.
func (l *Lifecycle) Run(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !l.leader() {
			continue
		}
		repos, err := l.store.RepositoriesWithLifecyclePolicy()
		if err != nil {
			l.log.Warn("lifecycle: listing policies", "err", err)
			continue
		}
		for _, r := range repos {
			if _, err := l.Apply(ctx, r.Name); err != nil && ctx.Err() == nil {
				l.log.Warn("lifecycle policy", "repo", r.Name, "err", err)
			}
		}
	}
}
