package cluster

import (
	"context"
	"errors"
	"time"

	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/gc"
	"github.com/strata-registry/strata/metastore"
)

// Maintenance is the leader's housekeeping that operators can trigger
// through any node: the garbage collector and the lifecycle policies.
type Maintenance struct {
	Collector *gc.Collector
	Lifecycle *gc.Lifecycle
}

// SetMaintenance attaches this meta node's collector and lifecycle runner
// (they act only while it leads).
func (s *Service) SetMaintenance(m Maintenance) {
	s.mu.Lock()
	s.maint = m
	s.mu.Unlock()
}

func (s *Service) maintenance() Maintenance {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maint
}

var errNoMaintenance = errors.New("cluster: this node runs no garbage collector")

func gcStats(st gc.Stats, err error) *cpb.GCStats {
	out := &cpb.GCStats{
		StartedUnixNano: st.Started.UnixNano(), DurationMs: st.Duration.Milliseconds(),
		UploadsCancelled: int64(st.UploadsCancelled), BlobsCollected: int64(st.BlobsCollected),
		BytesReclaimed: st.BytesReclaimed, SegmentsDeleted: int64(st.SegmentsDeleted),
		ShardsSwept: int64(st.ShardsSwept), Errors: int64(st.Errors), Phase: st.Phase,
	}
	if err != nil {
		out.Error = err.Error()
	}
	return out
}

// CollectGarbage runs the collector on the leader now.
func (s *Service) CollectGarbage(ctx context.Context, req *cpb.CollectGarbageRequest) (*cpb.GCStats, error) {
	if !s.meta.node.IsLeader() {
		var resp *cpb.GCStats
		err := s.forward(ctx, req.Hops, func(c cpb.ClusterClient) error {
			var err error
			resp, err = c.CollectGarbage(ctx, &cpb.CollectGarbageRequest{GraceMs: req.GraceMs, Sweep: req.Sweep, Async: req.Async, Hops: req.Hops + 1})
			return err
		})
		return resp, err
	}
	m := s.maintenance()
	if m.Collector == nil {
		return nil, toStatus(errNoMaintenance)
	}
	grace := time.Duration(req.GraceMs) * time.Millisecond
	if req.GraceMs < 0 {
		grace = m.Collector.Grace()
	}
	if req.Async {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
			defer cancel()
			if _, err := m.Collector.RunOnce(ctx, grace, req.Sweep); err != nil {
				s.log.Warn("garbage collection run", "err", err)
			}
		}()
		return &cpb.GCStats{StartedUnixNano: time.Now().UnixNano(), Phase: "started"}, nil
	}
	st, err := m.Collector.RunOnce(ctx, grace, req.Sweep)
	return gcStats(st, err), nil
}

// GCStatus reports the leader's collector.
func (s *Service) GCStatus(ctx context.Context, req *cpb.GCStatusRequest) (*cpb.GCStatusResponse, error) {
	if !s.meta.node.IsLeader() {
		var resp *cpb.GCStatusResponse
		err := s.forward(ctx, req.Hops, func(c cpb.ClusterClient) error {
			var err error
			resp, err = c.GCStatus(ctx, &cpb.GCStatusRequest{Hops: req.Hops + 1})
			return err
		})
		return resp, err
	}
	m := s.maintenance()
	if m.Collector == nil {
		return nil, toStatus(errNoMaintenance)
	}
	resp := &cpb.GCStatusResponse{}
	cur, last := m.Collector.Status()
	if cur != nil {
		resp.Current = gcStats(*cur, nil)
	}
	if last != nil {
		resp.Last = gcStats(*last, nil)
	}
	if n, err := s.meta.store.CountGCQueue(); err == nil {
		resp.PendingBlobs = int64(n)
	}
	if o, err := s.meta.store.Orphans("", 100000); err == nil {
		resp.PendingOrphans = int64(len(o))
	}
	return resp, nil
}

// Lifecycle previews or applies a repository's lifecycle policy on the leader.
func (s *Service) Lifecycle(ctx context.Context, req *cpb.LifecycleRequest) (*cpb.LifecycleResponse, error) {
	if !s.meta.node.IsLeader() {
		var resp *cpb.LifecycleResponse
		err := s.forward(ctx, req.Hops, func(c cpb.ClusterClient) error {
			var err error
			resp, err = c.Lifecycle(ctx, &cpb.LifecycleRequest{Repo: req.Repo, PolicyText: req.PolicyText, Apply: req.Apply, Hops: req.Hops + 1})
			return err
		})
		return resp, err
	}
	m := s.maintenance()
	if m.Lifecycle == nil {
		return nil, toStatus(errNoMaintenance)
	}
	if err := s.meta.node.LinearizableRead(ctx); err != nil {
		return nil, toStatus(err)
	}
	var exps []gc.Expiration
	var err error
	if req.Apply {
		exps, err = m.Lifecycle.Apply(ctx, req.Repo)
	} else {
		exps, err = m.Lifecycle.Preview(req.Repo, req.PolicyText, time.Now())
	}
	resp := &cpb.LifecycleResponse{}
	switch {
	case errors.Is(err, metastore.ErrRepoUnknown):
		resp.ErrorCode, resp.ErrorMessage = "REPOSITORY_NOT_FOUND", err.Error()
	case errors.Is(err, gc.ErrNoPolicy):
		resp.ErrorCode, resp.ErrorMessage = "LIFECYCLE_POLICY_NOT_FOUND", err.Error()
	case errors.Is(err, gc.ErrPolicyInvalid):
		resp.ErrorCode, resp.ErrorMessage = "INVALID_PARAMETER", err.Error()
	case err != nil:
		return nil, toStatus(err)
	}
	for _, e := range exps {
		resp.Expirations = append(resp.Expirations, &cpb.Expiration{Digest: e.Image.Digest, Tags: e.Image.Tags,
			PushedUnixNano: e.Image.PushedAt.UnixNano(), RulePriority: int32(e.RulePriority), Description: e.Description})
	}
	return resp, nil
}

// CollectGarbage runs the garbage collector on the leader now; grace < 0
// uses the collector's own.
func (m *Meta) CollectGarbage(ctx context.Context, grace time.Duration, sweep, async bool) (*cpb.GCStats, error) {
	ms := grace.Milliseconds()
	if grace < 0 {
		ms = -1
	}
	var out *cpb.GCStats
	err := retryEach(ctx, 0, func(ctx context.Context) error {
		c, err := m.target(ctx)
		if err != nil {
			return err
		}
		out, err = c.CollectGarbage(ctx, &cpb.CollectGarbageRequest{GraceMs: ms, Sweep: sweep, Async: async})
		return fromStatus(err)
	})
	return out, err
}

// GCStatus reports the leader's garbage collector.
func (m *Meta) GCStatus(ctx context.Context) (*cpb.GCStatusResponse, error) {
	var out *cpb.GCStatusResponse
	err := retry(ctx, func(ctx context.Context) error {
		c, err := m.target(ctx)
		if err != nil {
			return err
		}
		out, err = c.GCStatus(ctx, &cpb.GCStatusRequest{})
		return fromStatus(err)
	})
	return out, err
}

// Lifecycle previews (or applies) a repository's lifecycle policy on the
// leader; policyText overrides the repository's own for a preview.
func (m *Meta) Lifecycle(ctx context.Context, repo, policyText string, apply bool) (*cpb.LifecycleResponse, error) {
	var out *cpb.LifecycleResponse
	err := retryEach(ctx, 0, func(ctx context.Context) error {
		c, err := m.target(ctx)
		if err != nil {
			return err
		}
		out, err = c.Lifecycle(ctx, &cpb.LifecycleRequest{Repo: repo, PolicyText: policyText, Apply: apply})
		return fromStatus(err)
	})
	return out, err
}
