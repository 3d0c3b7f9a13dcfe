package cluster

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Defaults of ReporterConfig.
const (
	DefaultReportRate    = 20 // proposals per second
	DefaultReportDedupe  = 10 * time.Minute
	DefaultReportBacklog = 1024
)

// ReporterConfig configures a ShardReporter. Zero fields take the defaults.
type ReporterConfig struct {
	// Rate bounds the ReportShard proposals per second (default 20).
	Rate int
	// Dedupe is how long a report of one shard (segment, index, node)
	// silences further reports of it (default 10m).
	Dedupe time.Duration
	// Backlog is how many reports may wait for their proposal; more are
	// dropped (default 1024).
	Backlog int
	// Registerer, if set, receives the reporter's Prometheus metrics.
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// ShardReporter feeds the repair queue: it turns the bad shards that reads
// (blobstore.Config.OnShardError) and scrubbers (ScrubConfig.OnCorrupt) find
// into ReportShard proposals, asynchronously, deduplicated per shard and
// rate-limited, so that a failing disk cannot flood Raft. Errors that only
// say a node is unreachable are not reported: if the node stays away the
// leader declares it dead and the repairer evacuates it whole.
//
// Proposals go through Meta, so a node without the meta role (a storage
// node, a frontend) reaches the leader by forwarding.
type ShardReporter struct {
	meta *Meta
	cfg  ReporterConfig
	log  *slog.Logger
	ch   chan *pb.ReportShard
	rate *blobstore.RateLimiter

	mu   sync.Mutex
	seen map[shardKey]time.Time

	proposed, deduped, dropped, skipped, failed atomic.Int64
}

type shardKey struct {
	segment string
	index   uint32
	node    string
}

// NewShardReporter returns a reporter proposing through meta. Start it with
// Run; reports made before are kept (up to the backlog).
func NewShardReporter(meta *Meta, cfg ReporterConfig) *ShardReporter {
	if cfg.Rate <= 0 {
		cfg.Rate = DefaultReportRate
	}
	if cfg.Dedupe <= 0 {
		cfg.Dedupe = DefaultReportDedupe
	}
	if cfg.Backlog <= 0 {
		cfg.Backlog = DefaultReportBacklog
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	r := &ShardReporter{
		meta: meta, cfg: cfg, log: cfg.Log.With("component", "shard-reports"),
		ch: make(chan *pb.ReportShard, cfg.Backlog), seen: map[shardKey]time.Time{},
		// One token per report, a second's worth of burst.
		rate: blobstore.NewRateLimiterBurst(float64(cfg.Rate), float64(cfg.Rate)),
	}
	if reg := cfg.Registerer; reg != nil {
		c := func(outcome string, v *atomic.Int64) prometheus.Collector {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "strata", Subsystem: "shard_reports",
				Name: outcome + "_total", Help: "Bad-shard reports " + outcome + "."}, func() float64 { return float64(v.Load()) })
		}
		reg.MustRegister(c("proposed", &r.proposed), c("deduplicated", &r.deduped), c("dropped", &r.dropped),
			c("skipped", &r.skipped), c("failed", &r.failed))
	}
	return r
}

// Run proposes the reports until ctx ends.
func (r *ShardReporter) Run(ctx context.Context) {
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-prune.C:
			r.prune()
		case rep := <-r.ch:
			if err := r.rate.Wait(ctx, 1); err != nil {
				return
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := r.meta.Propose(pctx, &pb.Command{Op: &pb.Command_ReportShard{ReportShard: rep}})
			cancel()
			switch {
			case err == nil:
				r.proposed.Add(1)
				r.log.Info("bad shard reported for repair", "segment", rep.SegmentId, "index", rep.Index, "node", rep.Node, "reason", rep.Reason)
			case errors.Is(err, metastore.ErrBlobUnknown):
				// Not (or no longer) part of a blob: an orphan or an upload
				// in progress, nothing for repair.
				r.skipped.Add(1)
			default:
				r.failed.Add(1)
				r.forget(rep) // let a later read report it again
				if ctx.Err() == nil {
					r.log.Warn("reporting a bad shard", "segment", rep.SegmentId, "index", rep.Index, "node", rep.Node, "err", err)
				}
			}
		}
	}
}

// Report queues a report that shard index of segment segID on node is bad.
// It never blocks; it returns false when the report was deduplicated or
// dropped.
func (r *ShardReporter) Report(segID string, index uint32, node, reason string) bool {
	key := shardKey{segID, index, node}
	now := time.Now()
	r.mu.Lock()
	if at, ok := r.seen[key]; ok && now.Sub(at) < r.cfg.Dedupe {
		r.mu.Unlock()
		r.deduped.Add(1)
		return false
	}
	r.seen[key] = now
	r.mu.Unlock()
	select {
	case r.ch <- &pb.ReportShard{SegmentId: segID, Index: index, Node: node, Reason: reason}:
		return true
	default:
		r.forget(&pb.ReportShard{SegmentId: segID, Index: index, Node: node})
		r.dropped.Add(1)
		return false
	}
}

// OnShardError is a blobstore.Config.OnShardError: it reports shards a read
// found missing or corrupt (or could not use for a reason other than its
// node being unreachable).
func (r *ShardReporter) OnShardError(segID string, ref *pb.ShardRef, err error) {
	if !Reportable(err) {
		r.skipped.Add(1)
		return
	}
	r.Report(segID, ref.GetIndex(), ref.GetNode(), "read: "+err.Error())
}

// OnCorrupt returns a blobstore.ScrubConfig.OnCorrupt for the store of node
// nodeID.
func (r *ShardReporter) OnCorrupt(nodeID string) func(blobstore.ShardID, error) {
	return func(id blobstore.ShardID, err error) {
		if !Reportable(err) {
			r.skipped.Add(1)
			return
		}
		r.Report(id.Segment, id.Index, nodeID, "scrub: "+err.Error())
	}
}

// Reportable reports whether a shard error is for the repair queue: not
// when it only says the node is unreachable (the dead-node path covers
// that) or that the caller gave up (a cancelled or timed-out fetch, as
// hedged reads cancel the fetches they no longer need).
func Reportable(err error) bool {
	switch {
	case err == nil,
		errors.Is(err, blobstore.ErrNodeUnavailable),
		errors.Is(err, blobstore.ErrClosed),
		errors.Is(err, context.Canceled),
		errors.Is(err, context.DeadlineExceeded):
		return false
	}
	return true
}

func (r *ShardReporter) forget(rep *pb.ReportShard) {
	r.mu.Lock()
	delete(r.seen, shardKey{rep.SegmentId, rep.Index, rep.Node})
	r.mu.Unlock()
}

// prune forgets reports older than the deduplication window.
func (r *ShardReporter) prune() {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, at := range r.seen {
		if now.Sub(at) >= r.cfg.Dedupe {
			delete(r.seen, k)
		}
	}
}

// ReporterStats are a ShardReporter's counters.
type ReporterStats struct {
	Proposed, Deduplicated, Dropped, Skipped, Failed int64
}

// Stats returns the reporter's counters.
func (r *ShardReporter) Stats() ReporterStats {
	return ReporterStats{Proposed: r.proposed.Load(), Deduplicated: r.deduped.Load(), Dropped: r.dropped.Load(),
		Skipped: r.skipped.Load(), Failed: r.failed.Load()}
}
