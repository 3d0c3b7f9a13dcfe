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

	mu       sync.Mutex
	size     int64
	lru      *list.List // of *cacheSeg, most recent first
	entries  map[string]*list.Element
	inflight map[string]*segCall

	hits, misses, shared prometheus.Counter
	bytes                prometheus.Gauge
}

type cacheSeg struct {
	key    string
	pieces [][]byte
	size   int64
}

type segCall struct {
	done   chan struct{}
	pieces [][]byte
	err    error
}

// segmentFetchTimeout bounds a shared fetch: it runs on behalf of every
// reader waiting for it, so it does not end when the first one goes away.
const segmentFetchTimeout = 2 * time.Minute

// NewSegmentCache returns a cache of at most maxBytes of segments; its
// metrics go to reg when it is not nil.
func NewSegmentCache(maxBytes int64, reg prometheus.Registerer) *SegmentCache {
	c := &SegmentCache{
		max: maxBytes, lru: list.New(), entries: map[string]*list.Element{}, inflight: map[string]*segCall{},
		hits:   prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_hits_total", Help: "Segment reads served from the frontend's segment cache."}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_misses_total", Help: "Segment reads that fetched shards from storage nodes."}),
		shared: prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_shared_total", Help: "Segment reads that waited for a fetch another reader had started (singleflight)."}),
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
// calls at most once at a time per segment and key.
func (c *SegmentCache) get(ctx context.Context, seg *metastorepb.Segment, seal Sealer, at uint64, fetch func(context.Context) ([][]byte, error)) ([][]byte, error) {
	key := fmt.Sprintf("%s\x00%s\x00%d\x00%d", seg.GetId(), sealerKeyID(seal), at, seg.GetLength())
	c.mu.Lock()
	if el, ok := c.entries[key]; ok {
		c.lru.MoveToFront(el)
		pieces := el.Value.(*cacheSeg).pieces
		c.mu.Unlock()
		c.hits.Inc()
		return pieces, nil
	}
	call, ok := c.inflight[key]
	if ok {
		c.shared.Inc()
	} else {
		c.misses.Inc()
		call = &segCall{done: make(chan struct{})}
		c.inflight[key] = call
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), segmentFetchTimeout)
		go func() {
			defer cancel()
			call.pieces, call.err = fetch(fctx)
			c.mu.Lock()
			delete(c.inflight, key)
			if call.err == nil {
				c.addLocked(key, call.pieces)
			}
			c.mu.Unlock()
			close(call.done)
		}()
	}
	c.mu.Unlock()
	select {
	case <-call.done:
		return call.pieces, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
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
