package blobstore_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

// gatedWriter collects what a reader writes, holding its first write until
// gate is closed (a client that does not read), and reports that first
// write on started.
type gatedWriter struct {
	gate    chan struct{} // nil: never held
	started chan struct{}
	once    sync.Once
	buf     bytes.Buffer
}

func newGatedWriter(gate chan struct{}) *gatedWriter {
	return &gatedWriter{gate: gate, started: make(chan struct{})}
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.once.Do(func() { close(g.started) })
	if g.gate != nil {
		<-g.gate
	}
	return g.buf.Write(p)
}

// waitFull waits until the budget has no room for one more fetch of fp
// bytes.
func waitFull(b *blobstore.ReadBudget, fp int64) {
	for b.Reserved()+fp <= b.Limit() {
		time.Sleep(time.Millisecond)
	}
}

// Many concurrent reads over real LocalStores never hold more than the
// budget, and all return their exact bytes. With the budget taken by
// readers that do not drain, a read that must be admitted quickly fails
// with ErrReadBudget having written nothing, and one that waits ends with
// its context.
func TestReadBudgetBoundsConcurrentReads(t *testing.T) {
	c := newCluster(t, 3)
	s := newStore(t, c, 2, 1)
	blobs := make([][]byte, 8)
	segs := make([][]*metastorepb.Segment, len(blobs))
	for i := range blobs {
		blobs[i] = randomData(uint64(100+i), 4*testSeg)
		segs[i] = write(t, s, blobs[i])
	}
	fp := blobstore.ReadFootprint(segs[0][0])
	budget := blobstore.NewReadBudget(3*fp, nil)
	s = newStore(t, c, 2, 1, func(cfg *blobstore.Config) { cfg.ReadBudget = budget })

	gate := make(chan struct{})
	var openGate sync.Once
	defer openGate.Do(func() { close(gate) })
	type result struct {
		i   int
		w   *gatedWriter
		err error
	}
	const readers = 24
	results := make(chan result, readers)
	for r := range readers {
		go func() {
			i := r % len(blobs)
			w := newGatedWriter(gate)
			err := s.ReadRangeWith(bg, w, segs[i], 0, int64(len(blobs[i])), blobstore.ReadOptions{AdmitWait: time.Hour})
			results <- result{i, w, err}
		}()
	}
	waitFull(budget, fp)

	// Quick admission: refused, nothing written.
	var out bytes.Buffer
	err := s.ReadRangeWith(bg, &out, segs[0], testSeg, 10, blobstore.ReadOptions{AdmitWait: time.Millisecond})
	if !errors.Is(err, blobstore.ErrReadBudget) || out.Len() != 0 {
		t.Fatalf("admission with the budget taken: %v, %d bytes written", err, out.Len())
	}
	// Waiting without bound: ends with the context.
	ctx, cancel := context.WithCancel(bg)
	waiting := make(chan error, 1)
	go func() { waiting <- s.ReadRangeWith(ctx, &bytes.Buffer{}, segs[1], 0, 10, blobstore.ReadOptions{}) }()
	cancel()
	if err := <-waiting; !errors.Is(err, context.Canceled) {
		t.Fatalf("a reader waiting for read memory, cancelled: %v", err)
	}
	if budget.Reserved() > budget.Limit() {
		t.Fatalf("%d bytes reserved, budget %d", budget.Reserved(), budget.Limit())
	}

	openGate.Do(func() { close(gate) })
	for range readers {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if !bytes.Equal(r.w.buf.Bytes(), blobs[r.i]) {
			t.Fatalf("blob %d: wrong bytes", r.i)
		}
	}
	if budget.Peak() > budget.Limit() || budget.Peak() < 2*fp {
		t.Fatalf("peak of %d bytes reserved, budget %d", budget.Peak(), budget.Limit())
	}
	if n := budget.Reserved(); n != 0 {
		t.Fatalf("%d bytes still reserved after every read returned", n)
	}

	// Ungated, with ranges across segments: still exact, still bounded.
	readConcurrently(t, 32, func(r int) error {
		i := r % len(blobs)
		off, n := int64(r*1000), int64(2*testSeg+r)
		return readsAs(s, blobstore.Plain, segs[i], off, n, blobs[i][off:off+n])(r)
	})
	if budget.Peak() > budget.Limit() || budget.Reserved() != 0 {
		t.Fatalf("peak %d, now %d bytes reserved, budget %d", budget.Peak(), budget.Reserved(), budget.Limit())
	}
}

// With the segment cache, a herd pulling one blob shares its fetches and
// their reservations: with the budget taken by a reader of that blob that
// does not drain, the herd is still admitted at once (its first segments
// are cached), while a reader of another blob is refused.
func TestReadBudgetHerdSharesFetches(t *testing.T) {
	c := newCluster(t, 1)
	s := newStore(t, c, 1, 0)
	data := randomData(7, 5*testSeg+100)
	segs := write(t, s, data)
	other := randomData(8, 2*testSeg)
	otherSegs := write(t, s, other)
	fp := blobstore.ReadFootprint(segs[0])
	budget := blobstore.NewReadBudget(2*fp, nil)
	s = newStore(t, c, 1, 0, func(cfg *blobstore.Config) {
		cfg.ReadBudget = budget
		cfg.SegmentCache = blobstore.NewSegmentCache(64<<20, nil)
	})

	gate := make(chan struct{})
	var openGate sync.Once
	defer openGate.Do(func() { close(gate) })
	stalled := newGatedWriter(gate)
	stalledErr := make(chan error, 1)
	go func() {
		stalledErr <- s.ReadRangeWith(bg, stalled, segs, 0, int64(len(data)), blobstore.ReadOptions{AdmitWait: time.Hour})
	}()
	waitFull(budget, fp)

	const herd = 8
	writers := make([]*gatedWriter, herd)
	herdErr := make(chan error, herd)
	for i := range writers {
		writers[i] = newGatedWriter(nil)
		go func() {
			herdErr <- s.ReadRangeWith(bg, writers[i], segs, 0, int64(len(data)), blobstore.ReadOptions{AdmitWait: time.Millisecond})
		}()
	}
	for _, w := range writers {
		select {
		case <-w.started:
		case err := <-herdErr:
			t.Fatalf("a herd reader ended before writing: %v", err)
		}
	}
	var out bytes.Buffer
	if err := s.ReadRangeWith(bg, &out, otherSegs, 0, 10, blobstore.ReadOptions{AdmitWait: time.Millisecond}); !errors.Is(err, blobstore.ErrReadBudget) || out.Len() != 0 {
		t.Fatalf("another blob with the budget taken: %v, %d bytes written", err, out.Len())
	}

	openGate.Do(func() { close(gate) })
	if err := <-stalledErr; err != nil || !bytes.Equal(stalled.buf.Bytes(), data) {
		t.Fatalf("the stalled reader: %v", err)
	}
	for range herd {
		if err := <-herdErr; err != nil {
			t.Fatal(err)
		}
	}
	for i, w := range writers {
		if !bytes.Equal(w.buf.Bytes(), data) {
			t.Fatalf("herd reader %d: wrong bytes", i)
		}
	}
	if budget.Peak() > budget.Limit() {
		t.Fatalf("peak of %d bytes reserved, budget %d", budget.Peak(), budget.Limit())
	}
	// The last reference to a shared fetch may be the fetch's own, dropped
	// just after its readers returned.
	for budget.Reserved() != 0 {
		time.Sleep(time.Millisecond)
	}
}

// A segment larger than the whole budget is still readable, alone; the
// default and unlimited budgets.
func TestReadBudgetSmallAndUnlimited(t *testing.T) {
	c := newCluster(t, 3)
	tiny := blobstore.NewReadBudget(1000, nil)
	s := newStore(t, c, 2, 1, func(cfg *blobstore.Config) { cfg.ReadBudget = tiny })
	data := randomData(9, 3*testSeg+17)
	segs := write(t, s, data)
	readConcurrently(t, 4, readsAs(s, blobstore.Plain, segs, 0, int64(len(data)), data))
	if tiny.Peak() != 1000 || tiny.Reserved() != 0 {
		t.Fatalf("tiny budget: peak %d, now %d", tiny.Peak(), tiny.Reserved())
	}

	if got := blobstore.NewReadBudget(0, nil).Limit(); got != blobstore.DefaultReadMemory {
		t.Fatalf("default budget %d", got)
	}
	if got := newStore(t, c, 2, 1).Config().ReadBudget.Limit(); got != blobstore.DefaultReadMemory {
		t.Fatalf("a Store without a budget has %d", got)
	}
	unlimited := blobstore.NewReadBudget(-1, nil)
	s = newStore(t, c, 2, 1, func(cfg *blobstore.Config) { cfg.ReadBudget = unlimited })
	if got, err := readSealed(s, blobstore.Plain, segs, 0, int64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("unlimited: %v", err)
	}
	if unlimited.Peak() < blobstore.ReadFootprint(segs[0]) || unlimited.Reserved() != 0 {
		t.Fatalf("unlimited budget: peak %d, now %d", unlimited.Peak(), unlimited.Reserved())
	}
	if g, err := s.WithGeometry(1, 0); err != nil || g.Config().ReadBudget != unlimited {
		t.Fatalf("WithGeometry does not share the budget: %v", err)
	}
}
