package gc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Proposer replicates a metadata command (cluster.Meta).
type Proposer interface {
	Propose(ctx context.Context, cmd *pb.Command) error
}

// CollectorConfig tunes the collector. Zero fields take the defaults.
type CollectorConfig struct {
	// Grace: a blob no manifest has referenced for this long is collected.
	// Default 1h.
	Grace time.Duration
	// UploadIdle: an upload session not touched for this long is cancelled.
	// Default 24h.
	UploadIdle time.Duration
	// SweepMinAge: a shard on a storage node that nothing records (the
	// leftovers of a frontend that died mid-request) is deleted once it has
	// been seen unrecorded for this long. It must exceed the longest upload
	// request, so it is kept apart from Grace. Default 1h; a positive value
	// is raised to at least 10m; negative means no wait at all (tests only:
	// it can delete the shards of an upload request still in flight).
	SweepMinAge time.Duration
	// Interval between automatic runs on the leader. Default 1m.
	Interval time.Duration
	// SweepEvery: the storage sweep (which lists every shard of every node)
	// runs on every this many automatic runs. Default 30.
	SweepEvery int
	// Batch bounds the work items read at a time. Default 256.
	Batch int
	// Parallel bounds the proposals and shard deletions in flight at once.
	// Default 32.
	Parallel int
}

func (c CollectorConfig) withDefaults() CollectorConfig {
	if c.Grace == 0 {
		c.Grace = time.Hour
	}
	if c.UploadIdle == 0 {
		c.UploadIdle = 24 * time.Hour
	}
	switch {
	case c.SweepMinAge == 0:
		c.SweepMinAge = time.Hour
	case c.SweepMinAge < 0:
		c.SweepMinAge = 0
	default:
		c.SweepMinAge = max(c.SweepMinAge, 10*time.Minute)
	}
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	if c.SweepEvery == 0 {
		c.SweepEvery = 30
	}
	if c.Batch == 0 {
		c.Batch = 256
	}
	if c.Parallel == 0 {
		c.Parallel = 32
	}
	return c
}

// Stats are what one collection run did.
type Stats struct {
	Started          time.Time
	Duration         time.Duration
	UploadsCancelled int
	BlobsCollected   int
	BytesReclaimed   uint64
	SegmentsDeleted  int
	ShardsSwept      int
	Errors           int
	Phase            string // while running: uploads, blobs, orphans, sweep; "done" after
}

// Collector is Strata's online garbage collector. It runs on the leader
// (it reads the leader's state machine) and changes metadata only through
// proposals, which re-check references atomically, so pushes never have to
// stop: a blob is tombstoned by CollectBlob (a racing manifest push then
// fails with MANIFEST_BLOB_UNKNOWN and the client uploads again), its
// segments become orphan records, their shards are deleted on every storage
// node, and the orphan records are dropped.
type Collector struct {
	cfg    CollectorConfig
	store  *metastore.Store
	meta   Proposer
	nodes  func() []blobstore.Node
	leader func() bool
	log    *slog.Logger
	m      *collectorMetrics

	runMu    sync.Mutex // one run at a time
	mu       sync.Mutex
	current  *Stats
	last     *Stats
	suspects map[string]time.Time // unrecorded shards, by node/shard, first seen
	runs     int
}

// NewCollector returns a collector over the leader's store. nodes gives the
// live storage nodes; leader reports whether this node leads now.
func NewCollector(cfg CollectorConfig, store *metastore.Store, meta Proposer, nodes func() []blobstore.Node,
	leader func() bool, reg prometheus.Registerer, log *slog.Logger) *Collector {
	if log == nil {
		log = slog.Default()
	}
	return &Collector{cfg: cfg.withDefaults(), store: store, meta: meta, nodes: nodes, leader: leader,
		log: log, m: newCollectorMetrics(reg), suspects: map[string]time.Time{}}
}

// Grace is the configured grace period.
func (c *Collector) Grace() time.Duration { return c.cfg.Grace }

// Run collects every Interval while this node leads, until ctx ends.
func (c *Collector) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !c.leader() {
			continue
		}
		c.runs++
		sweep := c.runs%c.cfg.SweepEvery == 0
		if _, err := c.RunOnce(ctx, c.cfg.Grace, sweep); err != nil && ctx.Err() == nil {
			c.log.Warn("garbage collection run", "err", err)
		}
	}
}

// Status returns the run in progress (if any) and the last finished one.
func (c *Collector) Status() (current, last *Stats) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current != nil {
		cp := *c.current
		current = &cp
	}
	if c.last != nil {
		cp := *c.last
		last = &cp
	}
	return current, last
}

func (c *Collector) update(f func(s *Stats)) {
	c.mu.Lock()
	f(c.current)
	c.mu.Unlock()
}

// RunOnce runs one collection with the given grace; sweep adds the storage
// sweep for unrecorded shards.
func (c *Collector) RunOnce(ctx context.Context, grace time.Duration, sweep bool) (Stats, error) {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	st := &Stats{Started: time.Now(), Phase: "uploads"}
	c.mu.Lock()
	c.current = st
	c.mu.Unlock()
	errs := c.run(ctx, grace, sweep)
	c.mu.Lock()
	st.Duration = time.Since(st.Started)
	st.Phase = "done"
	out := *st
	c.last, c.current = st, nil
	c.mu.Unlock()
	c.m.runs.Inc()
	c.m.duration.Observe(out.Duration.Seconds())
	if n, err := c.store.CountGCQueue(); err == nil {
		c.m.pending.Set(float64(n))
	}
	if out.BlobsCollected > 0 || out.SegmentsDeleted > 0 || out.ShardsSwept > 0 || out.UploadsCancelled > 0 {
		c.log.Info("garbage collected", "blobs", out.BlobsCollected, "bytes", out.BytesReclaimed,
			"segments", out.SegmentsDeleted, "swept_shards", out.ShardsSwept, "uploads_cancelled", out.UploadsCancelled,
			"duration", out.Duration.Round(time.Millisecond))
	}
	return out, errs
}

func (c *Collector) run(ctx context.Context, grace time.Duration, sweep bool) error {
	var errs []error
	var errMu sync.Mutex
	now := time.Now()
	fail := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		errs = append(errs, err)
		c.update(func(s *Stats) { s.Errors++ })
		c.m.errors.Inc()
	}

	// 1. Upload sessions idle past the limit.
	idle, err := c.store.IdleUploads(now.Add(-c.cfg.UploadIdle).UnixNano(), c.cfg.Batch)
	if err != nil {
		return err
	}
	for _, u := range idle {
		err := c.meta.Propose(ctx, &pb.Command{Op: &pb.Command_CancelUpload{CancelUpload: &pb.CancelUpload{Id: u.Id}}})
		if err != nil && !errors.Is(err, metastore.ErrUploadUnknown) {
			fail(fmt.Errorf("cancel idle upload %s: %w", u.Id, err))
			continue
		}
		c.update(func(s *Stats) { s.UploadsCancelled++ })
	}
	// Records of uploads that ended before the idle limit (and an hour of
	// clock slack): their ids are refused by age without them.
	endCutoff := now.Add(-c.cfg.UploadIdle - time.Hour).UnixNano()
	for range 64 {
		n, err := c.store.UploadEndsBefore(endCutoff, c.cfg.Batch)
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		err = c.meta.Propose(ctx, &pb.Command{Op: &pb.Command_DropUploadEnds{DropUploadEnds: &pb.DropUploadEnds{
			BeforeUnixNano: endCutoff, Limit: uint32(c.cfg.Batch)}}})
		if err != nil {
			fail(fmt.Errorf("drop records of ended uploads: %w", err))
			break
		}
		if n < c.cfg.Batch {
			break
		}
	}

	// 2. Blobs no manifest has referenced since before the cutoff.
	c.update(func(s *Stats) { s.Phase = "blobs" })
	cutoff := now.Add(-grace).UnixNano()
	refused := map[string]bool{}
	for ctx.Err() == nil {
		cands, err := c.store.GCCandidates(cutoff, c.cfg.Batch+len(refused))
		if err != nil {
			return err
		}
		var (
			progress bool
			pmu      sync.Mutex
			wg       sync.WaitGroup
			sem      = make(chan struct{}, c.cfg.Parallel)
		)
		for _, cand := range cands {
			pmu.Lock()
			skip := refused[cand.Digest]
			pmu.Unlock()
			if skip {
				continue
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() { // concurrent proposals share Raft's batched fsyncs
				defer wg.Done()
				defer func() { <-sem }()
				var size uint64
				if l, err := c.store.Blob(cand.Digest); err == nil {
					size = l.Size
				}
				err := c.meta.Propose(ctx, &pb.Command{Op: &pb.Command_CollectBlob{CollectBlob: &pb.CollectBlob{
					Digest: cand.Digest, CutoffUnixNano: cutoff}}})
				pmu.Lock()
				defer pmu.Unlock()
				switch {
				case err == nil:
					progress = true
					c.update(func(s *Stats) { s.BlobsCollected++; s.BytesReclaimed += size })
					c.m.blobs.Inc()
					c.m.bytes.Add(float64(size))
				case errors.Is(err, metastore.ErrBlobInUse), errors.Is(err, metastore.ErrBlobUnknown):
					refused[cand.Digest] = true // a push got there first
				default:
					refused[cand.Digest] = true
					fail(fmt.Errorf("collect %s: %w", cand.Digest, err))
				}
			}()
		}
		wg.Wait()
		if !progress {
			break
		}
	}

	// 3. Orphan segments: delete their shards, then forget them.
	c.update(func(s *Stats) { s.Phase = "orphans" })
	after := ""
	for ctx.Err() == nil {
		orphans, err := c.store.Orphans(after, c.cfg.Batch)
		if err != nil {
			return err
		}
		if len(orphans) == 0 {
			break
		}
		after = orphans[len(orphans)-1].Id
		var (
			done []string
			dmu  sync.Mutex
			wg   sync.WaitGroup
			sem  = make(chan struct{}, c.cfg.Parallel)
		)
		for _, seg := range orphans {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				err := c.deleteSegment(ctx, seg)
				dmu.Lock()
				defer dmu.Unlock()
				if err != nil {
					fail(err)
					return
				}
				done = append(done, seg.Id)
			}()
		}
		wg.Wait()
		if len(done) > 0 {
			if err := c.meta.Propose(ctx, &pb.Command{Op: &pb.Command_DropOrphans{DropOrphans: &pb.DropOrphans{SegmentIds: done}}}); err != nil {
				fail(fmt.Errorf("drop orphans: %w", err))
				continue
			}
			c.update(func(s *Stats) { s.SegmentsDeleted += len(done) })
			c.m.segments.Add(float64(len(done)))
		}
	}

	// 4. Shards nothing records, seen for longer than SweepMinAge.
	if sweep {
		c.update(func(s *Stats) { s.Phase = "sweep" })
		if err := c.sweep(ctx, now); err != nil {
			fail(err)
		}
	}
	return errors.Join(errs...)
}

// deleteSegment deletes every shard of seg on the live nodes that hold one.
// Shards on nodes that are gone are left to the storage sweep, should the
// node come back.
func (c *Collector) deleteSegment(ctx context.Context, seg *pb.Segment) error {
	live := map[string]blobstore.ShardStore{}
	for _, n := range c.nodes() {
		live[n.Info.ID] = n.Shards
	}
	for _, ref := range seg.Shards {
		store, ok := live[ref.Node]
		if !ok {
			continue
		}
		id := blobstore.ShardID{Segment: seg.Id, Index: ref.Index}
		if err := store.Delete(ctx, id); err != nil && !errors.Is(err, blobstore.ErrShardNotFound) {
			return fmt.Errorf("delete shard %s on %s: %w", id, ref.Node, err)
		}
	}
	return nil
}

// sweep lists every shard of every live node and deletes the ones nothing
// records once they have stayed unrecorded for SweepMinAge.
func (c *Collector) sweep(ctx context.Context, now time.Time) error {
	seen := map[string]bool{}
	for _, n := range c.nodes() {
		after := ""
		for ctx.Err() == nil {
			infos, err := n.Shards.List(ctx, after, 1000)
			if err != nil {
				return fmt.Errorf("list shards of %s: %w", n.Info.ID, err)
			}
			if len(infos) == 0 {
				break
			}
			after = infos[len(infos)-1].ID.String()
			for _, info := range infos {
				ok, err := c.store.ShardReferenced(n.Info.ID, info.ID.Segment, info.ID.Index)
				if err != nil {
					return err
				}
				if ok {
					continue
				}
				key := n.Info.ID + "/" + info.ID.String()
				seen[key] = true
				c.mu.Lock()
				first, known := c.suspects[key]
				if !known {
					c.suspects[key] = now
				}
				c.mu.Unlock()
				if (!known && c.cfg.SweepMinAge > 0) || now.Sub(first) < c.cfg.SweepMinAge {
					continue
				}
				if err := n.Shards.Delete(ctx, info.ID); err != nil && !errors.Is(err, blobstore.ErrShardNotFound) {
					return fmt.Errorf("sweep shard %s on %s: %w", info.ID, n.Info.ID, err)
				}
				c.update(func(s *Stats) { s.ShardsSwept++ })
				c.m.swept.Inc()
			}
		}
	}
	c.mu.Lock()
	for k := range c.suspects {
		if !seen[k] {
			delete(c.suspects, k)
		}
	}
	c.mu.Unlock()
	return ctx.Err()
}

type collectorMetrics struct {
	runs     prometheus.Counter
	blobs    prometheus.Counter
	bytes    prometheus.Counter
	segments prometheus.Counter
	swept    prometheus.Counter
	errors   prometheus.Counter
	duration prometheus.Histogram
	pending  prometheus.Gauge
}

func newCollectorMetrics(reg prometheus.Registerer) *collectorMetrics {
	m := &collectorMetrics{
		runs:     prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_gc_runs_total", Help: "Garbage collection runs."}),
		blobs:    prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_gc_blobs_collected_total", Help: "Blobs collected."}),
		bytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_gc_bytes_reclaimed_total", Help: "Bytes of blobs collected."}),
		segments: prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_gc_segments_deleted_total", Help: "Orphan segments whose shards were deleted."}),
		swept:    prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_gc_shards_swept_total", Help: "Unrecorded shards deleted by the storage sweep."}),
		errors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_gc_errors_total", Help: "Garbage collection steps that failed (retried next run)."}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "strata_gc_run_duration_seconds", Help: "Duration of garbage collection runs.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "strata_gc_pending_blobs", Help: "Blobs no manifest references (collected once past the grace period)."}),
	}
	if reg != nil {
		reg.MustRegister(m.runs, m.blobs, m.bytes, m.segments, m.swept, m.errors, m.duration, m.pending)
	}
	return m
}
