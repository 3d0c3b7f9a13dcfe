package blobstore

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-registry/strata/metastore/metastorepb"
)

// SegmentCache keeps recently read segments, decoded and opened, in memory,
// and makes concurrent reads of one segment share one fetch (singleflight):
// a herd of clients pulling the same blob costs the storage nodes one read
// of each segment, and the frontend one buffer per segment instead of one
// per client. It is bounded in bytes (least recently used segments go
// first) and safe for concurrent use; one cache may serve several Stores.
//
// Segments never change once written (repair rewrites the same bytes), so
// entries need no invalidation. An entry is keyed by the segment id, its
// position and length in the blob, and the fingerprint of the data key it
// was opened with, so a reader holding another key (or none) for an
// encrypted segment never gets its plaintext, and a layout whose segments
// were reordered or cut is still checked by the seal.
type SegmentCache struct {
	max int64

	mu      sync.Mutex
	size    int64
	lru     *list.List // of *cacheSeg, most recent first
	entries map[string]*list.Element
	// inflight holds each fetch from its start until it has failed, or
	// until no reader holds what it fetched.
	inflight map[string]*segCall

	hits, misses, shared prometheus.Counter
	bytes                prometheus.Gauge
}

type cacheSeg struct {
	key    string
	pieces [][]byte
	size   int64
}

// segCall is one fetch of a segment, shared by every reader that asks for
// the segment while it runs.
type segCall struct {
	done   chan struct{} // closed when pieces and err are set
	pieces [][]byte
	err    error

	// admitted is closed once the fetch holds its read memory (or has
	// failed to get it).
	admitted chan struct{}
	stopWait context.CancelFunc // ends the fetch's wait for read memory

	// Guarded by the cache's mu.
	refs     int    // the fetch itself, and readers waiting for or writing out the pieces
	reserved bool   // the fetch has stopped waiting for read memory
	release  func() // gives the fetch's read memory back; run when refs drops to 0
}

// segmentFetchTimeout bounds a shared fetch (once it has its read memory):
// it runs on behalf of every reader waiting for it, so it does not end when
// the first one goes away.
const segmentFetchTimeout = 2 * time.Minute

// NewSegmentCache returns a cache of at most maxBytes of segments; its
// metrics go to reg when it is not nil.
func NewSegmentCache(maxBytes int64, reg prometheus.Registerer) *SegmentCache {
	c := &SegmentCache{
		max: maxBytes, lru: list.New(), entries: map[string]*list.Element{}, inflight: map[string]*segCall{},
		hits:   prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_hits_total", Help: "Segment reads served from the frontend's segment cache."}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_misses_total", Help: "Segment reads that fetched shards from storage nodes."}),
		shared: prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_shared_total", Help: "Segment reads that shared a fetch another reader had started: waiting for it (singleflight), or joining readers still writing out what it fetched."}),
		bytes:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "strata_segment_cache_bytes", Help: "Bytes of decoded segments held by the segment cache."}),
	}
	if reg != nil {
		reg.MustRegister(c.hits, c.misses, c.shared, c.bytes)
	}
	return c
}

// sealerKeyID is the fingerprint of the key a sealer opens with ("" for
// plain segments).
func sealerKeyID(seal Sealer) string {
	if s, ok := seal.(*AESGCMSealer); ok {
		return s.KeyID()
	}
	return ""
}

// get returns the opened segment, from the cache or from fetch, which it
// calls at most once at a time per segment and key, after reserve has
// granted the fetch its read memory. The reader that starts a fetch and
// every reader that joins it share that one reservation: it is given back
// once the fetch has ended and every one of them has called the returned
// done (after writing the pieces out) or gone away. A cache hit reserves
// nothing, and its done does nothing.
//
// With admit > 0 the reader waits at most admit for the fetch to get its
// read memory, then leaves with ErrReadBudget (the fetch goes on waiting for
// the other readers, if any; with none left, it is dropped).
func (c *SegmentCache) get(ctx context.Context, seg *metastorepb.Segment, seal Sealer, at uint64, admit time.Duration,
	reserve func(context.Context) (func(), error), fetch func(context.Context) ([][]byte, error)) (pieces [][]byte, done func(), err error) {
	key := fmt.Sprintf("%s\x00%s\x00%d\x00%d", seg.GetId(), sealerKeyID(seal), at, seg.GetLength())
	c.mu.Lock()
	if el, ok := c.entries[key]; ok {
		c.lru.MoveToFront(el)
		pieces := el.Value.(*cacheSeg).pieces
		c.mu.Unlock()
		c.hits.Inc()
		return pieces, func() {}, nil
	}
	call, ok := c.inflight[key]
	if ok {
		c.shared.Inc()
		call.refs++
	} else {
		c.misses.Inc()
		wctx, stopWait := context.WithCancel(context.WithoutCancel(ctx))
		call = &segCall{done: make(chan struct{}), admitted: make(chan struct{}), stopWait: stopWait, refs: 2}
		c.inflight[key] = call
		go c.run(wctx, key, call, reserve, fetch)
	}
	c.mu.Unlock()
	leave := func() { c.unref(key, call) }

	if admit > 0 {
		select {
		case <-call.admitted:
		default:
			t := time.NewTimer(admit)
			select {
			case <-call.admitted:
				t.Stop()
			case <-t.C:
				leave()
				return nil, nil, ErrReadBudget
			case <-ctx.Done():
				t.Stop()
				leave()
				return nil, nil, ctx.Err()
			}
		}
	}
	select {
	case <-call.done:
		if call.err != nil {
			leave()
			return nil, nil, call.err
		}
		return call.pieces, leave, nil
	case <-ctx.Done():
		leave()
		return nil, nil, ctx.Err()
	}
}

// run is the fetch of call: it waits for its read memory (while wctx
// lasts), fetches on behalf of every reader waiting for it (so it does not
// end when the first one goes away), and caches what it got.
func (c *SegmentCache) run(wctx context.Context, key string, call *segCall,
	reserve func(context.Context) (func(), error), fetch func(context.Context) ([][]byte, error)) {
	release, err := reserve(wctx)
	call.stopWait()
	c.mu.Lock()
	call.reserved, call.release = true, release
	c.mu.Unlock()
	close(call.admitted)
	if err == nil {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(wctx), segmentFetchTimeout)
		call.pieces, err = fetch(fctx)
		cancel()
	}
	call.err = err
	c.mu.Lock()
	// A fetched segment stays shared while readers still write it out, even
	// when the cache has no room for it (or evicts it): a reader arriving
	// then joins it rather than fetching and holding a copy of its own. With
	// a cache smaller than the segments a herd is reading, copies used to
	// pile up, one per group of stragglers.
	if c.inflight[key] == call && (err != nil || call.refs <= 1) {
		delete(c.inflight, key)
	}
	if err == nil {
		c.addLocked(key, call.pieces)
	}
	c.mu.Unlock()
	close(call.done)
	c.unref(key, call)
}

// unref drops one reference to call: the fetch's, or a reader's. The last
// one gives the read memory back. When every reader has gone while the
// fetch still waits for read memory, nobody wants it any more: its wait
// ends, and later readers start a fetch of their own.
func (c *SegmentCache) unref(key string, call *segCall) {
	c.mu.Lock()
	call.refs--
	var release func()
	switch {
	case call.refs == 0:
		release, call.release = call.release, nil
		if c.inflight[key] == call {
			delete(c.inflight, key)
		}
	case call.refs == 1 && !call.reserved: // only the fetch is left
		call.stopWait()
		if c.inflight[key] == call {
			delete(c.inflight, key)
		}
	}
	c.mu.Unlock()
	if release != nil {
		release()
	}
}

func (c *SegmentCache) addLocked(key string, pieces [][]byte) {
	var size int64
	for _, p := range pieces {
		size += int64(cap(p))
	}
	if size > c.max/4 { // one segment may not flush a quarter of the cache
		return
	}
	c.entries[key] = c.lru.PushFront(&cacheSeg{key: key, pieces: pieces, size: size})
	c.size += size
	for c.size > c.max {
		el := c.lru.Back()
		e := el.Value.(*cacheSeg)
		c.lru.Remove(el)
		delete(c.entries, e.key)
		c.size -= e.size
	}
	c.bytes.Set(float64(c.size))
}

// Len returns the number of segments cached and their bytes.
func (c *SegmentCache) Len() (segments int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.size
}
