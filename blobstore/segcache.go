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
// per client. It is bounded in bytes and safe for concurrent use; one cache
// may serve several Stores.
//
// What it keeps is decided by how often segments are read, not only by how
// recently (W-TinyLFU: a small LRU window in front of a main LRU list
// guarded by an admission test). A fetched segment enters the window; the
// one the window pushes out moves to the main list only if there is room
// or it has been read more often lately than each segment it would push
// out of it. A plain LRU keeps nothing useful when clients cycle through
// more than it holds in step (each segment goes just before it is read
// again), and a single pull of a big image empties it of what everyone
// else pulls; with the admission test the main list keeps its share of
// such a cycle and one-off reads pass through the window, which still
// serves readers close behind one another. Reads are counted per segment (hits, misses and readers joining
// a fetch), at most 15, and every count is halved after twice as many
// reads as the cache holds segments, so that what was popular a while ago
// soon gives way.
//
// Segments never change once written (repair rewrites the same bytes), so
// entries need no invalidation. An entry is keyed by the segment id, its
// position and length in the blob, and the fingerprint of the data key it
// was opened with, so a reader holding another key (or none) for an
// encrypted segment never gets its plaintext, and a layout whose segments
// were reordered or cut is still checked by the seal.
type SegmentCache struct {
	mu sync.Mutex
	// window takes every fetched segment; main keeps what the admission
	// test lets in from it. Both are most recent first.
	window, main segList
	entries      map[string]*list.Element // of *cacheSeg, in window or main
	// inflight holds each fetch from its start until it has failed, or
	// until no reader holds what it fetched.
	inflight map[string]*segCall

	// freq counts recent reads of each segment (saturating at freqMax;
	// halved, and zeros dropped, every period reads).
	freq     map[string]uint8
	reads    int
	period   int
	rejected prometheus.Counter

	hits, misses, shared prometheus.Counter
	bytes                prometheus.Gauge
}

type cacheSeg struct {
	key      string
	pieces   [][]byte
	buf      *segBuf // the pieces lie in it (nil: they do not)
	size     int64
	inWindow bool
	// readers counts cache hits still writing the pieces out; a segment
	// dropped from the cache (dropped) lets go of buf after the last one.
	readers int
	dropped bool
}

// segList is an LRU list of segments and their bytes.
type segList struct {
	l         *list.List
	size, max int64
}

func (l *segList) remove(el *list.Element) *cacheSeg {
	e := l.l.Remove(el).(*cacheSeg)
	l.size -= e.size
	return e
}

func (l *segList) pushFront(e *cacheSeg) *list.Element {
	l.size += e.size
	return l.l.PushFront(e)
}

// segCall is one fetch of a segment, shared by every reader that asks for
// the segment while it runs.
type segCall struct {
	done   chan struct{} // closed when pieces, buf and err are set
	pieces [][]byte
	buf    *segBuf // held by the call until its last reference goes, then by the cache or nobody
	err    error

	// admitted is closed once the fetch holds its read memory (or has
	// failed to get it).
	admitted chan struct{}
	stopWait context.CancelFunc // ends the fetch's wait for read memory

	// Guarded by the cache's mu.
	fetched  bool   // pieces are set and err is nil
	refs     int    // the fetch itself, and readers waiting for or writing out the pieces
	reserved bool   // the fetch has stopped waiting for read memory
	release  func() // gives the fetch's read memory back; run when refs drops to 0
}

// segmentFetchTimeout bounds a shared fetch (once it has its read memory):
// it runs on behalf of every reader waiting for it, so it does not end when
// the first one goes away.
const segmentFetchTimeout = 2 * time.Minute

// freqMax is where a segment's read count stops (as TinyLFU's 4-bit
// counters do): a segment a herd read a thousand times is as hot as one
// read 15 times, and so loses its place after four halvings unread.
const freqMax = 15

// NewSegmentCache returns a cache of at most maxBytes of segments; its
// metrics go to reg when it is not nil.
func NewSegmentCache(maxBytes int64, reg prometheus.Registerer) *SegmentCache {
	// Counts are halved after twice as many reads as the cache holds
	// segments of the default size. TinyLFU's ten times made a frontend
	// slow to take up a new working set: 8 clients pulling 8 new 64 MiB
	// blobs through a 4+2 cluster right after 8 others ran at 0.93× of
	// a plain LRU, and at 1.2-1.3× with this (1.3-1.5× on the first set).
	period := max(64, int(2*maxBytes/DefaultSegmentSize))
	window := maxBytes / 4 // as large as the largest segment kept
	c := &SegmentCache{
		window:  segList{l: list.New(), max: window},
		main:    segList{l: list.New(), max: maxBytes - window},
		entries: map[string]*list.Element{}, inflight: map[string]*segCall{},
		freq: map[string]uint8{}, period: period,
		rejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_rejected_total", Help: "Fetched segments not kept in the segment cache: read less often lately than the segments they would have pushed out, or larger than a quarter of it."}),
		hits:     prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_hits_total", Help: "Segment reads served from the frontend's segment cache."}),
		misses:   prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_misses_total", Help: "Segment reads that fetched shards from storage nodes."}),
		shared:   prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_segment_cache_shared_total", Help: "Segment reads that shared a fetch another reader had started: waiting for it (singleflight), or joining readers still writing out what it fetched."}),
		bytes:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "strata_segment_cache_bytes", Help: "Bytes of decoded segments held by the segment cache."}),
	}
	if reg != nil {
		reg.MustRegister(c.hits, c.misses, c.shared, c.bytes, c.rejected)
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
	reserve func(context.Context) (func(), error), fetch func(context.Context) ([][]byte, *segBuf, error)) (pieces [][]byte, done func(), err error) {
	key := fmt.Sprintf("%s\x00%s\x00%d\x00%d", seg.GetId(), sealerKeyID(seal), at, seg.GetLength())
	c.mu.Lock()
	c.countLocked(key)
	if el, ok := c.entries[key]; ok {
		e := el.Value.(*cacheSeg)
		if e.inWindow {
			c.window.l.MoveToFront(el)
		} else {
			c.main.l.MoveToFront(el)
		}
		pieces := e.pieces
		e.readers++
		c.mu.Unlock()
		c.hits.Inc()
		return pieces, func() { c.doneReading(e) }, nil
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
	reserve func(context.Context) (func(), error), fetch func(context.Context) ([][]byte, *segBuf, error)) {
	release, err := reserve(wctx)
	call.stopWait()
	c.mu.Lock()
	call.reserved, call.release = true, release
	c.mu.Unlock()
	close(call.admitted)
	if err == nil {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(wctx), segmentFetchTimeout)
		call.pieces, call.buf, err = fetch(fctx)
		cancel()
	}
	call.err = err
	c.mu.Lock()
	// A fetched segment stays shared while readers still write it out,
	// whether or not the cache will keep it: a reader arriving then joins it
	// rather than fetching and holding a copy of its own. With a cache
	// smaller than the segments a herd is reading, copies used to pile up,
	// one per group of stragglers. It is offered to the cache when its last
	// reader is done (unref), counted with every reader that joined it.
	if err != nil && c.inflight[key] == call {
		delete(c.inflight, key)
	}
	call.fetched = err == nil
	c.mu.Unlock()
	// The fetch's own reference goes first, so that a segment nobody waits
	// for any more is in the cache before done says it was fetched.
	c.unref(key, call)
	close(call.done)
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
		buf := call.buf
		call.buf = nil
		if c.inflight[key] == call {
			delete(c.inflight, key)
			if call.fetched {
				c.addLocked(key, call.pieces, buf) // the cache takes buf over
				buf = nil
			}
		}
		buf.unref()
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

// countLocked counts a read of key, and halves every count once period
// reads have been counted since the last halving.
func (c *SegmentCache) countLocked(key string) {
	if n := c.freq[key]; n < freqMax {
		c.freq[key] = n + 1
	}
	if c.reads++; c.reads < c.period {
		return
	}
	c.reads = 0
	for k, n := range c.freq {
		if n >>= 1; n == 0 {
			delete(c.freq, k)
		} else {
			c.freq[k] = n
		}
	}
}

// doneReading ends a cache hit's read of e.
func (c *SegmentCache) doneReading(e *cacheSeg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.readers--; e.readers == 0 && e.dropped {
		e.buf.unref()
		e.buf = nil
	}
}

// dropLocked takes e out of the cache's keeping: its buffer goes back once
// no cache hit is still writing it out.
func (c *SegmentCache) dropLocked(e *cacheSeg) {
	e.dropped = true
	if e.readers == 0 {
		e.buf.unref()
		e.buf = nil
	}
}

// addLocked puts a fetched segment, whose pieces lie in buf, at the front
// of the window; what the window pushes out is offered to the main list.
// The cache takes over buf.
func (c *SegmentCache) addLocked(key string, pieces [][]byte, buf *segBuf) {
	if _, ok := c.entries[key]; ok {
		buf.unref()
		return
	}
	var size int64
	for _, p := range pieces {
		size += int64(cap(p))
	}
	if size > c.window.max { // one segment may not flush a quarter of the cache
		c.rejected.Inc()
		buf.unref()
		return
	}
	c.entries[key] = c.window.pushFront(&cacheSeg{key: key, pieces: pieces, buf: buf, size: size, inWindow: true})
	for c.window.size > c.window.max {
		e := c.window.remove(c.window.l.Back())
		delete(c.entries, e.key)
		c.admitLocked(e)
	}
	c.bytes.Set(float64(c.window.size + c.main.size))
}

// admitLocked moves e into the main list if there is room for it, or if
// it has been read more often lately than each of the least recently used
// segments that would make room for it (which then go); else e goes.
func (c *SegmentCache) admitLocked(e *cacheSeg) {
	freed, want := int64(0), c.main.size+e.size-c.main.max
	for el := c.main.l.Back(); freed < want && el != nil; el = el.Prev() {
		victim := el.Value.(*cacheSeg)
		if c.freq[victim.key] >= c.freq[e.key] {
			c.rejected.Inc()
			c.dropLocked(e)
			return
		}
		freed += victim.size
	}
	for c.main.size+e.size > c.main.max {
		victim := c.main.remove(c.main.l.Back())
		delete(c.entries, victim.key)
		c.dropLocked(victim)
	}
	e.inWindow = false
	c.entries[e.key] = c.main.pushFront(e)
}

// Len returns the number of segments cached and their bytes.
func (c *SegmentCache) Len() (segments int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.window.size + c.main.size
}
