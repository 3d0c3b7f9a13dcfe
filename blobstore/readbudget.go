package blobstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"

	"github.com/strata-registry/strata/metastore/metastorepb"
)

// DefaultReadMemory is the read budget of a Store whose Config names none,
// and of NewReadBudget(0): 1 GiB of segment data in flight. With 8 MiB
// segments a fetch reserves 8 MiB with k = 1 and m = 0 (--dev) and 12 MiB at
// 4+2 (see ReadBudget), so 85 to 128 segments are fetched or written out at
// once: 42 to 64 pulls streaming with their next segment fetched ahead.
const DefaultReadMemory = 1 << 30

// ErrReadBudget is returned by ReadRangeWith when the read memory for the
// first segment of the range was not free within ReadOptions.AdmitWait.
// Nothing was written; the caller may try again later.
var ErrReadBudget = errors.New("blobstore: read memory budget exhausted")

// ReadBudget bounds the memory that reads hold for segment data. Every
// segment ReadRange fetches reserves, before fetching, what the fetch will
// hold: the k data shards and the m parity shards it may fetch to hedge or
// reconstruct (the decoded segment is the data shards themselves, opened in
// place; only a degraded read of a sealed segment copies it together once
// more, uncounted). The reservation is given back once every reader of the
// segment has written it out, or dropped it on error or cancellation. A segment
// larger than the whole budget reserves all of it, so it is still readable,
// alone.
//
// Reads served from the SegmentCache, or sharing a fetch another reader
// started, reserve nothing: they allocate nothing. A herd of pulls of one
// blob therefore costs one reservation per segment in flight, not one per
// client. (A cached segment evicted while a reader still writes it out is
// counted by neither; the cache's own bound covers it until then.)
//
// Waiting is first come, first served (a weighted semaphore) and ends with
// the reader's context. One budget may serve several Stores (those made by
// WithGeometry share their parent's); it is safe for concurrent use.
type ReadBudget struct {
	limit int64               // <= 0: no limit, reservations are only counted
	sem   *semaphore.Weighted // nil without a limit

	mu             sync.Mutex
	reserved, peak int64

	reservedGauge prometheus.Gauge
	waits         prometheus.Counter
}

// NewReadBudget returns a budget of maxBytes (0: DefaultReadMemory;
// negative: no limit, reservations are still counted). Its metrics go to
// reg when it is not nil.
func NewReadBudget(maxBytes int64, reg prometheus.Registerer) *ReadBudget {
	if maxBytes == 0 {
		maxBytes = DefaultReadMemory
	}
	b := &ReadBudget{
		limit: maxBytes,
		reservedGauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "strata_read_memory_reserved_bytes",
			Help: "Bytes of segment data reserved by blob reads in flight on this frontend (fetched shards not yet written out)."}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{Name: "strata_read_memory_waits_total",
			Help: "Segment fetches that had to wait for read memory (--read-memory)."}),
	}
	if maxBytes > 0 {
		b.sem = semaphore.NewWeighted(maxBytes)
	}
	if reg != nil {
		limit := prometheus.NewGauge(prometheus.GaugeOpts{Name: "strata_read_memory_limit_bytes",
			Help: "The read memory budget of this frontend (--read-memory; 0: no limit)."})
		limit.Set(float64(max(maxBytes, 0)))
		reg.MustRegister(b.reservedGauge, b.waits, limit)
	}
	return b
}

// Limit returns the budget in bytes; 0 or less means no limit.
func (b *ReadBudget) Limit() int64 { return b.limit }

// Reserved returns the bytes reserved now.
func (b *ReadBudget) Reserved() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reserved
}

// Peak returns the most bytes ever reserved at once.
func (b *ReadBudget) Peak() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// ReadFootprint is what fetching seg holds, and what a read reserves for
// it: the shards a read may fetch, its k data shards and, to hedge around a
// slow node or to reconstruct, up to m parity shards. The decoded segment is not counted again: it is the data
// shards themselves (plain segments are their data shards; a sealed one is
// opened in place in the buffer the data shards were read into side by
// side). Only a degraded read of a sealed segment copies it together once
// more.
func ReadFootprint(seg *metastorepb.Segment) int64 {
	return int64(seg.GetK()+seg.GetM()) * int64(seg.GetShardSize())
}

// reserve takes n bytes of the budget (all of it at most), waiting for them
// while ctx lasts. The returned release gives them back; calling it again
// does nothing.
func (b *ReadBudget) reserve(ctx context.Context, n int64) (release func(), err error) {
	if b.sem != nil {
		n = min(n, b.limit)
		if !b.sem.TryAcquire(n) {
			b.waits.Inc()
			if err := b.sem.Acquire(ctx, n); err != nil {
				return nil, err
			}
		}
	}
	b.add(n)
	var done atomic.Bool
	return func() {
		if done.Swap(true) {
			return
		}
		b.add(-n)
		if b.sem != nil {
			b.sem.Release(n)
		}
	}, nil
}

// reserveWithin is reserve that, with admit > 0, waits at most admit and
// then fails with ErrReadBudget.
func (b *ReadBudget) reserveWithin(ctx context.Context, n int64, admit time.Duration) (func(), error) {
	if admit <= 0 {
		return b.reserve(ctx, n)
	}
	actx, cancel := context.WithTimeout(ctx, admit)
	defer cancel()
	release, err := b.reserve(actx, n)
	if err != nil && ctx.Err() == nil {
		return nil, ErrReadBudget
	}
	return release, err
}

func (b *ReadBudget) add(n int64) {
	b.mu.Lock()
	b.reserved += n
	b.peak = max(b.peak, b.reserved)
	b.mu.Unlock()
	b.reservedGauge.Add(float64(n))
}
