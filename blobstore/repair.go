package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/zeebo/blake3"

	"github.com/strata-registry/strata/metastore/metastorepb"
)

// Replacement is one shard Rebuild wrote: shard Index of the segment now
// lives on NewNode with BLAKE3 sum Sum, where it was on OldNode ("" when it
// had no location). It is what a ReplaceShard command records. OldNode ==
// NewNode for a shard rewritten in place (corrupt or lost on a healthy node).
type Replacement struct {
	Index   uint32
	OldNode string
	NewNode string
	Sum     [32]byte
	// Moved is true when the shard's own copy was read from OldNode and
	// written as it was, false when it was reconstructed from other shards.
	Moved bool
}

// RebuildRequest says which shards of a segment Rebuild must make anew.
type RebuildRequest struct {
	Segment *metastorepb.Segment
	// Indexes are the shards to rebuild: missing ones (no ShardRef), ones on
	// lost or leaving nodes, corrupt ones.
	Indexes []uint32
	// Avoid reports the nodes that must receive no shard: dead, draining and
	// unknown ones. A shard to rebuild whose node is avoided but still among
	// the Store's nodes (a draining node) is read from there first, and when
	// it verifies it is copied as it is, which costs one shard of traffic
	// instead of k. A shard to rebuild whose node is not avoided (a corrupt
	// or missing shard on a healthy node) is rewritten on that same node and
	// never read. nil avoids nothing.
	Avoid func(nodeID string) bool
	// Pace, if set, is called before every shard fetched or written with
	// its size, and may hold the transfer back (a RateLimiter's Wait).
	Pace func(ctx context.Context, n int) error
	// OnShardError, if set, is called for every shard Rebuild tried to read
	// and could not use (missing, corrupt, unreachable), other than the
	// shards it was asked to rebuild: they are for the repair queue.
	OnShardError func(ref *metastorepb.ShardRef, err error)
}

// RebuildResult is what Rebuild did.
type RebuildResult struct {
	// Replacements are the shards written, in index order.
	Replacements []Replacement
	// BytesRead and BytesWritten count shard payloads fetched and put.
	BytesRead, BytesWritten int64
}

// Rebuild makes the shards req.Indexes of a segment anew and puts them on
// storage nodes: it fetches shards of the segment (each verified against the
// BLAKE3 sum of its ShardRef), reconstructs the missing ones with the erasure
// code (parity included), and writes each to a node chosen by Place among the
// Store's nodes, leaving out avoided nodes and, while others are left, every
// node that already holds another shard of the segment, and preferring
// failure zones the segment does not use yet. When fewer healthy nodes remain
// than the segment has shards, the nodes holding the fewest of its shards
// take a second one, so that the segment is back to k+m shards anyway. A Put
// that fails is retried on the next candidate node.
//
// Shards that cannot be placed (too few nodes) or read (fewer than k good
// shards) or written are left out of the result, and the error says why
// (wrapping ErrNotEnoughNodes, ErrSegmentUnreadable, or the Put's error); the
// Replacements returned are valid even when the error is not nil. Nothing is
// fetched when no shard can be placed. The caller records the replacements
// (ReplaceShard); until it does, the new shards are not part of the segment.
func (s *Store) Rebuild(ctx context.Context, req RebuildRequest) (RebuildResult, error) {
	var res RebuildResult
	seg := req.Segment
	if err := checkSegment(seg); err != nil {
		return res, err
	}
	if seg.GetInline() != nil {
		if len(req.Indexes) == 0 {
			return res, nil
		}
		return res, fmt.Errorf("%w: %s is inline: it has no shards to rebuild", ErrInvalidSegment, seg.GetId())
	}
	k, m := int(seg.GetK()), int(seg.GetM())
	n := k + m
	codec, err := s.codec(k, m)
	if err != nil {
		return res, fmt.Errorf("%w: %s: %v", ErrInvalidSegment, seg.GetId(), err)
	}
	avoid := req.Avoid
	if avoid == nil {
		avoid = func(string) bool { return false }
	}
	refs := make([]*metastorepb.ShardRef, n)
	for _, r := range seg.GetShards() {
		if r != nil && int(r.GetIndex()) < n && refs[r.GetIndex()] == nil {
			refs[r.GetIndex()] = r
		}
	}
	want := make([]bool, n)
	var wanted []uint32
	for _, i := range req.Indexes {
		if int(i) >= n {
			return res, fmt.Errorf("%w: %s: shard %d of a %d+%d segment", ErrInvalidSegment, seg.GetId(), i, k, m)
		}
		if !want[i] {
			want[i] = true
			wanted = append(wanted, i)
		}
	}
	slices.Sort(wanted)
	if len(wanted) == 0 {
		return res, nil
	}

	nodes := s.nodes()
	stores := make(map[string]ShardStore, len(nodes))
	infos := make(map[string]NodeInfo, len(nodes))
	var all []NodeInfo
	for _, nd := range nodes {
		if _, dup := stores[nd.Info.ID]; dup {
			continue
		}
		stores[nd.Info.ID] = nd.Shards
		infos[nd.Info.ID] = nd.Info
		all = append(all, nd.Info)
	}

	// Placement first, so that nothing is fetched for shards that have
	// nowhere to go.
	pl := newRepairPlacement(seg, refs, want, avoid, infos, all, seg.GetShardSize()+shardHeaderSize)
	targets := make(map[uint32]NodeInfo, len(wanted))
	var errs []error
	for _, i := range wanted {
		if r := refs[i]; r != nil && !avoid(r.GetNode()) {
			if info, ok := infos[r.GetNode()]; ok {
				targets[i] = info // rewrite in place
				continue
			}
		}
		if nd, ok := pl.next(); ok {
			targets[i] = nd
		} else {
			errs = append(errs, fmt.Errorf("%w: shard %d of %s: no healthy node left to hold it", ErrNotEnoughNodes, i, seg.GetId()))
		}
	}
	if len(targets) == 0 {
		return res, errors.Join(errs...)
	}

	// Fetch: first the shards' own copies on leaving nodes, then, if any
	// shard is still missing, enough others to reconstruct.
	shards := make([][]byte, n)
	moved := make([]bool, n)
	f := &fetcher{s: s, ctx: ctx, stores: stores, seg: seg, req: &req, shards: shards}
	var moves []*metastorepb.ShardRef
	for _, i := range wanted {
		r := refs[i]
		if _, placed := targets[i]; placed && r != nil && avoid(r.GetNode()) && stores[r.GetNode()] != nil {
			moves = append(moves, r)
		}
	}
	f.gather(moves, len(moves), true)
	for _, r := range moves {
		moved[r.GetIndex()] = shards[r.GetIndex()] != nil
	}
	needReconstruct := false
	for i := range targets {
		if shards[i] == nil {
			needReconstruct = true
		}
	}
	if needReconstruct {
		var srcs []*metastorepb.ShardRef
		for i, r := range refs {
			if r != nil && !want[i] && stores[r.GetNode()] != nil {
				srcs = append(srcs, r)
			}
		}
		good := 0
		for _, sh := range shards {
			if sh != nil {
				good++
			}
		}
		if good < k {
			f.gather(srcs, k-good, false)
		}
		good = 0
		for _, sh := range shards {
			if sh != nil {
				good++
			}
		}
		if good >= k {
			if err := codec.ReconstructAll(shards); err != nil {
				return res, fmt.Errorf("%w: %s: %w", ErrSegmentUnreadable, seg.GetId(), err)
			}
		} else {
			for i := range targets {
				if shards[i] == nil {
					delete(targets, i)
				}
			}
			errs = append(errs, fmt.Errorf("%w: %s: %d of %d needed shards: %w", ErrSegmentUnreadable, seg.GetId(), good, k, errors.Join(f.errs...)))
		}
	}
	res.BytesRead = f.bytes
	if err := ctx.Err(); err != nil {
		return res, err
	}

	// Put every rebuilt shard on its node, in parallel.
	type putOutcome struct {
		rep   Replacement
		bytes int64
		err   error
	}
	out := make(chan putOutcome, len(targets))
	puts := 0
	for i, node := range targets {
		data := shards[i]
		sum := blake3.Sum256(data)
		if r := refs[i]; r != nil && !bytes.Equal(sum[:], r.GetBlake3()) {
			// A systematic code rebuilds the very bytes that were written:
			// a mismatch means the layout itself is inconsistent.
			errs = append(errs, fmt.Errorf("%w: shard %d of %s rebuilt with another BLAKE3 than its ShardRef", ErrShardCorrupt, i, seg.GetId()))
			continue
		}
		puts++
		go func(i uint32, node NodeInfo) {
			o := putOutcome{rep: Replacement{Index: i, Sum: sum, Moved: moved[i]}}
			if r := refs[i]; r != nil {
				o.rep.OldNode = r.GetNode()
			}
			id := ShardID{Segment: seg.GetId(), Index: i}
			for {
				if req.Pace != nil {
					if o.err = req.Pace(ctx, len(data)); o.err != nil {
						break
					}
				}
				o.err = stores[node.ID].Put(ctx, id, data, sum)
				o.bytes += int64(len(data))
				if o.err == nil {
					o.rep.NewNode = node.ID
					break
				}
				if errors.Is(o.err, ErrNoSpace) && s.cfg.OnNoSpace != nil {
					s.cfg.OnNoSpace(node.ID)
				}
				o.err = fmt.Errorf("put shard %d of %s on %s: %w", i, seg.GetId(), node.ID, o.err)
				if ctx.Err() != nil {
					break
				}
				next, ok := pl.next()
				if !ok {
					break
				}
				node = next
			}
			out <- o
		}(i, node)
	}
	for range puts {
		o := <-out
		res.BytesWritten += o.bytes
		if o.err != nil {
			errs = append(errs, o.err)
			continue
		}
		res.Replacements = append(res.Replacements, o.rep)
	}
	slices.SortFunc(res.Replacements, func(a, b Replacement) int { return int(a.Index) - int(b.Index) })
	return res, errors.Join(errs...)
}

// repairPlacement hands out the nodes that may receive rebuilt shards of a
// segment: in Place order, nodes in zones the segment does not use yet first;
// then nodes that hold a shard already (see shared); nodes without room for
// the shard last.
type repairPlacement struct {
	mu     sync.Mutex
	ranked []NodeInfo
	taken  []bool
	zones  map[string]bool
	// full are nodes without a shard of the segment but without room
	// either (Full, or less free space than the shard needs), in Place
	// order: a full disk takes a shard only when nothing else can.
	full      []NodeInfo
	fullTaken []bool
	// When fewer healthy nodes remain than the segment has shards, a node
	// may hold two shards of it: k+m shards on fewer nodes still survive
	// more failures than a segment left short. shared ranks those nodes;
	// held counts the shards each holds or is handed.
	shared []NodeInfo
	held   map[string]int
}

func newRepairPlacement(seg *metastorepb.Segment, refs []*metastorepb.ShardRef, want []bool, avoid func(string) bool,
	infos map[string]NodeInfo, all []NodeInfo, need uint64) *repairPlacement {
	used := make(map[string]bool)
	zones := make(map[string]bool)
	for i, r := range refs {
		if r == nil {
			continue
		}
		// Nodes keeping their shard, or getting it rewritten in place.
		if !want[i] || !avoid(r.GetNode()) {
			used[r.GetNode()] = true
			if info, ok := infos[r.GetNode()]; ok {
				zones[info.Zone] = true
			}
		}
	}
	var cands, shared, full []NodeInfo
	held := map[string]int{}
	for i, r := range refs {
		if r != nil && (!want[i] || !avoid(r.GetNode())) {
			held[r.GetNode()]++
		}
	}
	for _, nd := range all {
		switch {
		case avoid(nd.ID) || nd.ReadOnly:
		case used[nd.ID]:
			shared = append(shared, nd)
		case nd.Full || (nd.Free > 0 && nd.Free < need):
			full = append(full, nd)
		default:
			cands = append(cands, nd)
		}
	}
	ranked, _ := Place(seg.GetId(), cands, len(cands))
	shared, _ = Place(seg.GetId(), shared, len(shared))
	full, _ = Place(seg.GetId(), full, len(full))
	return &repairPlacement{ranked: ranked, taken: make([]bool, len(ranked)), zones: zones, shared: shared, held: held,
		full: full, fullTaken: make([]bool, len(full))}
}

// next returns the best node not handed out yet.
func (p *repairPlacement) next() (NodeInfo, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pick := -1
	for i, nd := range p.ranked {
		if p.taken[i] {
			continue
		}
		if !p.zones[nd.Zone] {
			pick = i
			break
		}
		if pick < 0 {
			pick = i
		}
	}
	if pick < 0 {
		// No node without a shard of the segment is left: the one holding
		// the fewest of its shards takes another.
		best := -1
		for i, nd := range p.shared {
			if best < 0 || p.held[nd.ID] < p.held[p.shared[best].ID] {
				best = i
			}
		}
		if best < 0 {
			// Nothing else: a node that said it has no room, in case it
			// has some again.
			for i, nd := range p.full {
				if !p.fullTaken[i] {
					p.fullTaken[i] = true
					return nd, true
				}
			}
			return NodeInfo{}, false
		}
		p.held[p.shared[best].ID]++
		return p.shared[best], true
	}
	p.taken[pick] = true
	p.zones[p.ranked[pick].Zone] = true
	p.held[p.ranked[pick].ID]++
	return p.ranked[pick], true
}

// fetcher gathers verified shards of a segment into shards.
type fetcher struct {
	s      *Store
	ctx    context.Context
	stores map[string]ShardStore
	seg    *metastorepb.Segment
	req    *RebuildRequest
	shards [][]byte
	bytes  int64
	errs   []error
}

// gather fetches shards from cands, need of them at a time, launching the
// next candidate whenever one fails, until need have arrived or the
// candidates run out. own marks fetches of the shards being rebuilt, whose
// failures are not reported (they are being repaired already).
func (f *fetcher) gather(cands []*metastorepb.ShardRef, need int, own bool) {
	if need <= 0 {
		return
	}
	results := make(chan shardResult, len(cands))
	next, inflight, got := 0, 0, 0
	launch := func() bool {
		if next >= len(cands) {
			return false
		}
		ref := cands[next]
		next++
		inflight++
		go func() {
			if f.req.Pace != nil {
				if err := f.req.Pace(f.ctx, int(f.seg.GetShardSize())); err != nil {
					results <- shardResult{ref: ref, err: err}
					return
				}
			}
			results <- f.s.fetchShard(f.ctx, f.stores, f.seg, ref, true, nil)
		}()
		return true
	}
	for i := 0; i < need && launch(); i++ {
	}
	for inflight > 0 {
		res := <-results
		inflight--
		f.bytes += int64(len(res.data))
		if res.err != nil {
			f.errs = append(f.errs, res.err)
			if !own && f.req.OnShardError != nil && f.ctx.Err() == nil {
				f.req.OnShardError(res.ref, res.err)
			}
			if got < need {
				launch()
			}
			continue
		}
		f.shards[res.ref.GetIndex()] = res.data
		got++
	}
}
