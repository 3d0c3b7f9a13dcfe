package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/chaos/failpoint"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Defaults of RepairConfig.
const (
	DefaultRepairConcurrency    = 4
	DefaultRepairInterval       = 5 * time.Second
	DefaultRepairSegmentTimeout = 5 * time.Minute
	DefaultRepairDeleteGrace    = time.Minute
)

// RepairConfig configures a Repairer. Zero fields take the defaults.
type RepairConfig struct {
	// Peers reaches the storage nodes of the registry over gRPC.
	Peers *Peers
	// Local are storage nodes in this process, used directly rather than
	// over gRPC when the registry names them.
	Local []blobstore.Node
	// OnlyLocal makes Local the only storage nodes, all alive, whatever the
	// registry says (strata serve --dev, whose disks are not registered).
	OnlyLocal bool
	// Concurrency is how many segments are repaired at once (default 4).
	Concurrency int
	// BytesPerSecond bounds repair traffic: shard bytes fetched plus shard
	// bytes written. <= 0: no bound.
	BytesPerSecond int64
	// Interval is the rest between passes when a pass found nothing to do
	// (default 5s). After a pass that repaired something the next starts at
	// once.
	Interval time.Duration
	// SegmentTimeout bounds the repair of one segment (default 5m).
	SegmentTimeout time.Duration
	// DeleteGrace is how long the old copy of a moved shard stays on its
	// node after the move is recorded, so that reads that loaded the layout
	// before the move still find it (default 1m; negative: delete at once).
	// A copy whose deletion a leader change interrupts is an orphan for the
	// storage sweep.
	DeleteGrace time.Duration
	// FreeSpace, if set, tells the free space a storage node last reported
	// (its heartbeat, which the leader's Service keeps): nodes with less
	// room than a shard take a rebuilt shard only when no other node can.
	FreeSpace func(nodeID string) (free uint64, known bool)
	// Registerer, if set, receives the repairer's Prometheus metrics.
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// Repairer brings segments back to full redundancy. It runs on every meta
// node and works only while that node leads, because it reads the local
// replica of the metastore, which on the leader is current. Each pass:
//
//  1. walks the shard index of every storage node that is dead, draining, or
//     drained but still named by some segment, and rebuilds (dead) or moves
//     (draining) those shards onto other nodes;
//  2. works through the repair queue: for each queued segment it finds the
//     bad shards (no location; on a dead, draining or unknown node; missing
//     or corrupt on its node, which is asked to verify it) and rebuilds them,
//     or, when every shard verifies, confirms the layout to dequeue it;
//  3. marks draining nodes that no segment names any more drained.
//
// Every rebuilt shard is recorded with ReplaceShard, a compare-and-set on the
// shard's location: a refusal means someone else moved the shard meanwhile,
// and the rebuilt copy is left for the orphan sweeper. A moved shard's old
// copy is deleted from its (draining) node once the move is recorded.
type Repairer struct {
	meta  *Meta
	cfg   RepairConfig
	log   *slog.Logger
	blobs *blobstore.Store
	limit *blobstore.RateLimiter
	kick  chan struct{}
	view  atomic.Pointer[repairView]

	mu       sync.Mutex
	inflight map[string]bool
	backoff  map[string]backoffEntry
	viewKey  string // the placeable nodes the backoffs were decided under
	lastErr  string
	deletes  []oldCopy // old copies of moved shards, deleted after DeleteGrace

	running                             atomic.Bool
	segments, rebuilt, moved, failures  atomic.Int64
	bytesRead, bytesWritten, passes     atomic.Int64
	queueLen, pending, active, lastPass atomic.Int64

	m *repairMetrics
}

// oldCopy is the copy of a moved shard left on its old node.
type oldCopy struct {
	due   time.Time
	node  string
	store blobstore.ShardStore
	id    blobstore.ShardID
}

type backoffEntry struct {
	until time.Time
	wait  time.Duration
}

// NewRepairer returns the repairer of a meta node. Start it with Run.
func NewRepairer(meta *Meta, cfg RepairConfig) (*Repairer, error) {
	if meta.node == nil {
		return nil, errors.New("cluster: the repairer needs the meta role")
	}
	if cfg.Peers == nil && !cfg.OnlyLocal {
		cfg.Peers = meta.peers
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultRepairConcurrency
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultRepairInterval
	}
	if cfg.SegmentTimeout <= 0 {
		cfg.SegmentTimeout = DefaultRepairSegmentTimeout
	}
	switch {
	case cfg.DeleteGrace == 0:
		cfg.DeleteGrace = DefaultRepairDeleteGrace
	case cfg.DeleteGrace < 0:
		cfg.DeleteGrace = 0
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	r := &Repairer{
		meta: meta, cfg: cfg, log: cfg.Log.With("component", "repair"),
		limit: blobstore.NewRateLimiter(cfg.BytesPerSecond), kick: make(chan struct{}, 1),
		inflight: map[string]bool{}, backoff: map[string]backoffEntry{},
	}
	var err error
	if r.blobs, err = blobstore.New(blobstore.Config{}, r.readable); err != nil {
		return nil, err
	}
	r.m = newRepairMetrics(cfg.Registerer, r)
	return r, nil
}

// Kick starts a pass now if the repairer is resting.
func (r *Repairer) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run repairs while this node leads, until ctx ends.
func (r *Repairer) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return // copies not deleted yet are orphans for the storage sweep
		case <-t.C:
		case <-r.kick:
		}
		r.deleteOldCopies(ctx)
		wait := r.cfg.Interval
		if r.meta.node.IsLeader() {
			if !r.running.Swap(true) {
				r.log.Info("repairer started: this node leads")
			}
			if res := r.Pass(ctx); res.Shards > 0 {
				wait = 0
			}
		} else if r.running.Swap(false) {
			r.log.Info("repairer paused: this node no longer leads")
		}
		t.Reset(wait)
	}
}

// PassResult sums up one pass.
type PassResult struct {
	Segments int // segments with at least one shard replaced
	Shards   int // shards replaced
	Failures int // segments that could not be (fully) repaired
}

// Pass makes one repair pass (see Repairer) and returns what it did. It
// does nothing unless this node leads.
func (r *Repairer) Pass(ctx context.Context) PassResult {
	var res PassResult
	if !r.meta.node.IsLeader() {
		return res
	}
	start := time.Now()
	view, err := r.refresh()
	if err != nil {
		r.log.Warn("repair: reading the node registry", "err", err)
		return res
	}
	st := r.meta.store
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, r.cfg.Concurrency)
	)
	// A segment met twice in a pass (on two dead nodes, or also queued) is
	// not repaired twice: its first repair took it off the shard index of
	// the nodes and off the queue, a running repair claims it, and a failed
	// one waits out its backoff. So nothing per segment is kept here, and a
	// pass over millions of shards needs no memory for them.
	submit := func(segID string, fromQueue bool) bool {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			shards, ok := r.repairSegment(ctx, view, segID, fromQueue)
			mu.Lock()
			defer mu.Unlock()
			if shards > 0 {
				res.Segments++
				res.Shards += shards
			}
			if !ok {
				res.Failures++
			}
		}()
		return r.meta.node.IsLeader()
	}

	// Progress for long passes.
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				mu.Lock()
				p := res
				mu.Unlock()
				r.log.Info("repair in progress", "segments", p.Segments, "shards", p.Shards, "failures", p.Failures,
					"pending_shards", r.countPending(view), "bytes_written", r.bytesWritten.Load(), "elapsed", time.Since(start).Round(time.Second))
			}
		}
	}()

	// (1) Evacuate dead, draining and drained nodes.
	pendingBefore := r.countPending(view)
walk:
	for _, id := range view.ids {
		e := view.byID[id]
		if e.state == metastore.NodeAlive {
			continue
		}
		var after metastore.ShardLoc
		for {
			locs, err := st.ShardsOnNode(id, after, 512)
			if err != nil {
				r.log.Warn("repair: listing shards", "node", id, "err", err)
				break
			}
			if len(locs) == 0 {
				break
			}
			for _, l := range locs {
				if !submit(l.Segment, false) {
					break walk
				}
			}
			after = locs[len(locs)-1]
		}
	}
	// (2) The repair queue.
	if r.meta.node.IsLeader() && ctx.Err() == nil {
	queue:
		for after := ""; ; {
			items, err := st.RepairQueue(after, 256)
			if err != nil {
				r.log.Warn("repair: reading the queue", "err", err)
				break
			}
			if len(items) == 0 {
				break
			}
			for _, it := range items {
				if !submit(it.SegmentId, true) {
					break queue
				}
			}
			after = items[len(items)-1].SegmentId
		}
	}
	wg.Wait()
	close(done)

	// (3) Drains that are done.
	if r.meta.node.IsLeader() && ctx.Err() == nil {
		for _, id := range view.ids {
			if view.byID[id].state != metastore.NodeDraining {
				continue
			}
			n, err := st.CountShardsOnNode(id)
			if err != nil || n > 0 {
				continue
			}
			err = r.meta.Propose(ctx, &pb.Command{Op: &pb.Command_SetNodeState{SetNodeState: &pb.SetNodeState{Id: id, State: metastore.NodeDrained}}})
			if err != nil {
				r.log.Warn("repair: marking a node drained", "node", id, "err", err)
				continue
			}
			r.log.Info("node drained: it holds no shard any more", "node", id)
		}
	}

	pending := r.countPending(view)
	r.pending.Store(int64(pending))
	if n, err := st.CountRepairQueue(); err == nil {
		r.queueLen.Store(int64(n))
	}
	r.passes.Add(1)
	r.lastPass.Store(time.Now().UnixNano())
	if res.Shards > 0 || res.Failures > 0 {
		attrs := []any{"segments", res.Segments, "shards", res.Shards, "failures", res.Failures,
			"pending_shards_before", pendingBefore, "pending_shards", pending, "queue", r.queueLen.Load(),
			"took", time.Since(start).Round(time.Millisecond)}
		if res.Failures > 0 {
			r.log.Warn("repair pass", append(attrs, "last_error", r.lastError())...)
		} else {
			r.log.Info("repair pass", attrs...)
		}
	}
	return res
}

// repairView is the storage nodes as the repairer sees them in one pass.
type repairView struct {
	ids      []string              // every storage node, sorted
	byID     map[string]repairNode // by id
	readable []blobstore.Node      // nodes shards may be read from: all but dead ones
}

type repairNode struct {
	state string
	store blobstore.ShardStore // nil for a dead node
}

// avoid reports nodes that must receive no shard: any that is not alive,
// and any the registry does not know.
func (v *repairView) avoid(id string) bool {
	e, ok := v.byID[id]
	return !ok || e.state != metastore.NodeAlive
}

// StorageNodes are the storage nodes that are not dead, with a shard client
// for each, read from the registry now (the garbage collector deletes
// through them).
func (r *Repairer) StorageNodes() []blobstore.Node {
	if v, err := r.refresh(); err == nil {
		return v.readable
	}
	return r.readable()
}

// readable is the node source of the repairer's blob pipeline.
func (r *Repairer) readable() []blobstore.Node {
	if v := r.view.Load(); v != nil {
		return v.readable
	}
	return nil
}

// refresh rebuilds the view from the local registry.
func (r *Repairer) refresh() (*repairView, error) {
	v := &repairView{byID: map[string]repairNode{}}
	local := map[string]blobstore.Node{}
	for _, nd := range r.cfg.Local {
		local[nd.Info.ID] = nd
	}
	add := func(info blobstore.NodeInfo, state string, store blobstore.ShardStore) {
		v.byID[info.ID] = repairNode{state: state, store: store}
		v.ids = append(v.ids, info.ID)
		if store != nil {
			v.readable = append(v.readable, blobstore.Node{Info: info, Shards: store})
		}
	}
	if r.cfg.OnlyLocal {
		for _, nd := range r.cfg.Local {
			add(nd.Info, metastore.NodeAlive, nd.Shards)
		}
	} else {
		recs, err := r.meta.store.Nodes()
		if err != nil {
			return nil, err
		}
		for _, rec := range recs {
			if !slices.Contains(rec.Roles, RoleStorage) {
				continue
			}
			info := blobstore.NodeInfo{ID: rec.Id, Zone: rec.Zone}
			if r.cfg.FreeSpace != nil {
				if free, ok := r.cfg.FreeSpace(rec.Id); ok {
					info.Free, info.Full = free, free == 0
				}
			}
			var store blobstore.ShardStore
			switch {
			case rec.State == metastore.NodeDead:
			case local[rec.Id].Shards != nil:
				store = local[rec.Id].Shards
			default:
				if conn, err := r.cfg.Peers.Conn(rec.GrpcAddr); err == nil {
					store = blobstore.NewRemoteStore(rec.Id, conn)
				}
			}
			add(info, rec.State, store)
		}
	}
	sort.Strings(v.ids)
	r.view.Store(v)

	// Segments that failed wait before they are tried again, unless the
	// nodes that could take their shards changed.
	var placeable []string
	for _, id := range v.ids {
		if !v.avoid(id) {
			placeable = append(placeable, id)
		}
	}
	key := strings.Join(placeable, ",")
	now := time.Now()
	r.mu.Lock()
	if key != r.viewKey {
		r.viewKey = key
		clear(r.backoff)
	}
	for id, b := range r.backoff {
		if now.After(b.until.Add(b.wait)) {
			delete(r.backoff, id)
		}
	}
	r.mu.Unlock()
	return v, nil
}

// countPending counts the shards the registry still places on nodes that
// are not alive.
func (r *Repairer) countPending(v *repairView) int {
	n := 0
	for _, id := range v.ids {
		if v.byID[id].state == metastore.NodeAlive {
			continue
		}
		c, err := r.meta.store.CountShardsOnNode(id)
		if err == nil {
			n += c
		}
	}
	return n
}

// claim marks a segment as being repaired, unless it already is or is
// waiting out a backoff.
func (r *Repairer) claim(segID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inflight[segID] {
		return false
	}
	if b, ok := r.backoff[segID]; ok && time.Now().Before(b.until) {
		return false
	}
	r.inflight[segID] = true
	return true
}

// release ends a claim; failed sets or lengthens the segment's backoff.
func (r *Repairer) release(segID string, failed bool, why error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inflight, segID)
	if !failed {
		delete(r.backoff, segID)
		return
	}
	b := r.backoff[segID]
	b.wait = min(max(2*b.wait, r.cfg.Interval), 10*time.Minute)
	b.until = time.Now().Add(b.wait)
	r.backoff[segID] = b
	if why != nil {
		r.lastErr = why.Error()
	}
}

func (r *Repairer) lastError() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// repairSegment repairs one segment and returns how many shards it
// replaced, and false if something is left to do.
func (r *Repairer) repairSegment(ctx context.Context, view *repairView, segID string, fromQueue bool) (replaced int, ok bool) {
	if !r.claim(segID) {
		return 0, true
	}
	r.active.Add(1)
	defer r.active.Add(-1)
	var failure error
	gone := false
	defer func() {
		if failure != nil && !gone && ctx.Err() == nil {
			r.failures.Add(1)
			r.log.Debug("repair: segment not repaired", "segment", segID, "err", failure)
		}
		why := failure
		if gone {
			why = nil
		}
		r.release(segID, failure != nil, why)
	}()

	_, seg, err := r.meta.store.Segment(segID)
	if err != nil {
		// A queued segment whose blob is gone has nothing to repair (and no
		// command takes it off the queue yet): it waits out a backoff so
		// that it costs nothing meanwhile, and is not counted as a failure.
		failure = fmt.Errorf("segment %s: %w", segID, err)
		gone = errors.Is(err, metastore.ErrBlobUnknown)
		return 0, gone
	}
	bad, unsure := r.classify(ctx, view, seg, fromQueue)
	if len(bad) == 0 {
		if unsure > 0 {
			failure = fmt.Errorf("segment %s: %d shards could not be verified", segID, unsure)
			return 0, false
		}
		if fromQueue {
			if err := r.confirm(ctx, seg); err != nil {
				failure = err
				return 0, false
			}
		}
		return 0, true
	}

	sctx, cancel := context.WithTimeout(ctx, r.cfg.SegmentTimeout)
	defer cancel()
	rb, rerr := r.blobs.Rebuild(sctx, blobstore.RebuildRequest{
		Segment: seg, Indexes: bad, Avoid: view.avoid,
		Pace: func(ctx context.Context, n int) error { return r.limit.Wait(ctx, n) },
		OnShardError: func(ref *pb.ShardRef, err error) {
			if errors.Is(err, blobstore.ErrShardCorrupt) || errors.Is(err, blobstore.ErrShardNotFound) {
				r.report(ctx, seg.Id, ref, err)
			}
		},
	})
	r.bytesRead.Add(rb.BytesRead)
	r.bytesWritten.Add(rb.BytesWritten)
	var errs []error
	if rerr != nil {
		errs = append(errs, rerr)
	}
	for _, rep := range rb.Replacements {
		if failpoint.Enabled {
			if err := failpoint.Eval(failpoint.RepairBeforeReplace); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		err := r.meta.Propose(ctx, &pb.Command{Op: &pb.Command_ReplaceShard{ReplaceShard: &pb.ReplaceShard{
			SegmentId: seg.Id, Index: rep.Index, OldNode: rep.OldNode, NewNode: rep.NewNode, Blake3: rep.Sum[:],
		}}})
		switch {
		case err == nil:
		case shardMoved(err), errors.Is(err, metastore.ErrBlobUnknown):
			// Someone else moved it first, or the blob was collected: the
			// copy just written is an orphan for the storage sweep.
			r.log.Debug("repair: shard moved or blob collected meanwhile", "segment", seg.Id, "index", rep.Index, "err", err)
			continue
		default:
			errs = append(errs, fmt.Errorf("recording shard %d of %s on %s: %w", rep.Index, seg.Id, rep.NewNode, err))
			continue
		}
		replaced++
		if rep.Moved {
			r.moved.Add(1)
		} else {
			r.rebuilt.Add(1)
		}
		r.log.Debug("repair: shard replaced", "segment", seg.Id, "index", rep.Index, "from", rep.OldNode, "to", rep.NewNode, "moved", rep.Moved)
		if rep.OldNode != "" && rep.OldNode != rep.NewNode {
			if e, ok := view.byID[rep.OldNode]; ok && e.store != nil {
				r.deleteLater(rep.OldNode, e.store, blobstore.ShardID{Segment: seg.Id, Index: rep.Index})
			}
		}
	}
	if replaced > 0 {
		r.segments.Add(1)
	}
	if len(errs) > 0 {
		failure = fmt.Errorf("segment %s: %w", seg.Id, errors.Join(errs...))
		return replaced, false
	}
	return replaced, true
}

// deleteLater schedules the deletion of a moved shard's old copy.
func (r *Repairer) deleteLater(node string, store blobstore.ShardStore, id blobstore.ShardID) {
	r.mu.Lock()
	r.deletes = append(r.deletes, oldCopy{due: time.Now().Add(r.cfg.DeleteGrace), node: node, store: store, id: id})
	r.mu.Unlock()
	if r.cfg.DeleteGrace == 0 {
		r.Kick()
	}
}

// deleteOldCopies deletes the old copies that are due, best effort: one
// that cannot be deleted is an orphan for the storage sweep.
func (r *Repairer) deleteOldCopies(ctx context.Context) {
	now := time.Now()
	r.mu.Lock()
	var due []oldCopy
	keep := r.deletes[:0]
	for _, d := range r.deletes {
		if !now.Before(d.due) {
			due = append(due, d)
		} else {
			keep = append(keep, d)
		}
	}
	r.deletes = keep
	r.mu.Unlock()
	for _, d := range due {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := d.store.Delete(dctx, d.id); err != nil {
			r.log.Debug("repair: deleting a moved shard's old copy", "node", d.node, "shard", d.id, "err", err)
		}
		cancel()
	}
}

// classify returns the shards of seg to rebuild, and how many shards could
// not be verified (their node did not answer). With verify, the shards on
// alive nodes are verified by their nodes.
func (r *Repairer) classify(ctx context.Context, view *repairView, seg *pb.Segment, verify bool) (bad []uint32, unsure int) {
	n := seg.K + seg.M
	refs := make([]*pb.ShardRef, n)
	for _, ref := range seg.Shards {
		if ref.Index < n && refs[ref.Index] == nil {
			refs[ref.Index] = ref
		}
	}
	type check struct {
		index uint32
		bad   bool
		err   error
	}
	checks := make(chan check, n)
	pending := 0
	for i := uint32(0); i < n; i++ {
		ref := refs[i]
		switch {
		case ref == nil || view.avoid(ref.Node):
			bad = append(bad, i)
			continue
		case !verify:
			continue
		}
		store := view.byID[ref.Node].store
		if store == nil {
			checks <- check{index: i, err: fmt.Errorf("%w: %s", blobstore.ErrNodeUnavailable, ref.Node)}
			pending++
			continue
		}
		pending++
		go func() {
			vctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			info, err := blobstore.VerifyShard(vctx, store, blobstore.ShardID{Segment: seg.Id, Index: i})
			switch {
			case err == nil && (info.Size != int64(seg.ShardSize) || string(info.Sum[:]) != string(ref.Blake3)):
				checks <- check{index: i, bad: true} // not the shard the layout names
			case err == nil:
				checks <- check{index: i}
			case errors.Is(err, blobstore.ErrShardCorrupt), errors.Is(err, blobstore.ErrShardNotFound):
				checks <- check{index: i, bad: true}
			default:
				checks <- check{index: i, err: err}
			}
		}()
	}
	for range pending {
		c := <-checks
		switch {
		case c.bad:
			bad = append(bad, c.index)
		case c.err != nil:
			unsure++
		}
	}
	slices.Sort(bad)
	return bad, unsure
}

// confirm records a queued segment whose shards all verified as it is,
// which takes it off the repair queue (ReplaceShard of a shard onto the
// node that holds it, with its own checksum, changes nothing else).
func (r *Repairer) confirm(ctx context.Context, seg *pb.Segment) error {
	if len(seg.Shards) == 0 {
		return nil
	}
	ref := seg.Shards[0]
	err := r.meta.Propose(ctx, &pb.Command{Op: &pb.Command_ReplaceShard{ReplaceShard: &pb.ReplaceShard{
		SegmentId: seg.Id, Index: ref.Index, OldNode: ref.Node, NewNode: ref.Node, Blake3: ref.Blake3,
	}}})
	if err != nil && !shardMoved(err) && !errors.Is(err, metastore.ErrBlobUnknown) {
		return fmt.Errorf("dequeuing segment %s: %w", seg.Id, err)
	}
	return nil
}

// report queues a segment whose shard a repair found bad.
func (r *Repairer) report(ctx context.Context, segID string, ref *pb.ShardRef, err error) {
	cmd := &pb.Command{Op: &pb.Command_ReportShard{ReportShard: &pb.ReportShard{
		SegmentId: segID, Index: ref.Index, Node: ref.Node, Reason: "repair read: " + err.Error(),
	}}}
	if perr := r.meta.Propose(ctx, cmd); perr != nil {
		r.log.Debug("repair: reporting a bad shard", "segment", segID, "index", ref.Index, "err", perr)
	}
}

// shardMoved reports a ReplaceShard refused because the shard is not where
// the command expected. The metastore has no wire code for that refusal
// yet, so one forwarded from another node is recognised by its text.
func shardMoved(err error) bool {
	return errors.Is(err, metastore.ErrShardMoved) ||
		(err != nil && strings.Contains(err.Error(), metastore.ErrShardMoved.Error()))
}

// Status reports the repairer for StatusResponse.
func (r *Repairer) Status() *cpb.RepairStatus {
	return &cpb.RepairStatus{
		Running:          r.running.Load() && r.meta.node.IsLeader(),
		QueueLength:      uint64(r.queueLen.Load()),
		PendingShards:    uint64(r.pending.Load()),
		InProgress:       uint64(r.active.Load()),
		SegmentsRepaired: uint64(r.segments.Load()),
		ShardsRebuilt:    uint64(r.rebuilt.Load()),
		ShardsMoved:      uint64(r.moved.Load()),
		BytesRead:        uint64(r.bytesRead.Load()),
		BytesWritten:     uint64(r.bytesWritten.Load()),
		Failures:         uint64(r.failures.Load()),
		Passes:           uint64(r.passes.Load()),
		LastPassUnixNano: r.lastPass.Load(),
		LastError:        r.lastError(),
	}
}

// repairMetrics exports the repairer's counters to Prometheus.
type repairMetrics struct{}

func newRepairMetrics(reg prometheus.Registerer, r *Repairer) *repairMetrics {
	if reg == nil {
		return &repairMetrics{}
	}
	counter := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "strata", Subsystem: "repair", Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	gauge := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "strata", Subsystem: "repair", Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	reg.MustRegister(
		counter("segments_repaired_total", "Segments with at least one shard rebuilt or moved.", &r.segments),
		counter("shards_rebuilt_total", "Shards reconstructed from other shards and recorded.", &r.rebuilt),
		counter("shards_moved_total", "Shards copied off draining nodes and recorded.", &r.moved),
		counter("bytes_read_total", "Shard bytes fetched by repair.", &r.bytesRead),
		counter("bytes_written_total", "Shard bytes written by repair.", &r.bytesWritten),
		counter("failures_total", "Segment repairs that did not finish (retried after a backoff).", &r.failures),
		counter("passes_total", "Repair passes.", &r.passes),
		gauge("queue_length", "Segments on the repair queue (as of the last pass).", &r.queueLen),
		gauge("pending_shards", "Shards on dead, draining or drained nodes (as of the last pass).", &r.pending),
		gauge("segments_in_progress", "Segments being repaired now.", &r.active),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "strata", Subsystem: "repair", Name: "running",
			Help: "1 while this node leads and runs the repairer."}, func() float64 {
			if r.running.Load() {
				return 1
			}
			return 0
		}),
	)
	return &repairMetrics{}
}
