package blobstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

func shardGets(c *cluster) int {
	n := 0
	for _, f := range c.faulty {
		n += f.Calls(blobstore.OpGet)
	}
	return n
}

// A herd of readers of one blob costs the storage nodes one fetch of each
// segment: concurrent reads share it, later ones hit the cache. Readers with
// another data key, or a layout whose segments were moved, are not served
// from it.
func TestSegmentCacheHerdAndKeys(t *testing.T) {
	c := newCluster(t, 6)
	cache := blobstore.NewSegmentCache(64<<20, nil)
	s := newStore(t, c, 4, 2, func(cfg *blobstore.Config) { cfg.SegmentCache = cache })
	sl := newSealer(t)
	data := randomData(21, 5*testSeg+1234)
	segs := writeSealed(t, s, sl, data, 0)

	// Slow nodes, so that the herd's reads overlap.
	for _, f := range c.faulty {
		f.Inject(blobstore.Fault{Op: blobstore.OpGet, Delay: 30 * time.Millisecond})
	}
	before := shardGets(c)
	readConcurrently(t, 16, readsAs(s, sl, segs, 0, int64(len(data)), data))
	// Each segment fetched once: k shards, perhaps a few more from
	// hedging; never 16 readers' worth.
	need, most := 0, 0
	for _, seg := range segs {
		need, most = need+int(seg.K), most+int(seg.K+seg.M)
	}
	if gets := shardGets(c) - before; gets < need || gets > most {
		t.Fatalf("16 concurrent readers cost %d shard reads for %d segments needing %d", gets, len(segs), need)
	}
	if n, size := cache.Len(); n != len(segs) || size < int64(len(data)) {
		t.Fatalf("cache holds %d segments, %d bytes", n, size)
	}
	c.clearFaults()

	// A range in the middle: served from the cache, no shard read.
	before = shardGets(c)
	got, err := readSealed(s, sl, segs, testSeg+7, 2*testSeg)
	if err != nil || !bytes.Equal(got, data[testSeg+7:3*testSeg+7]) {
		t.Fatalf("cached range: %v", err)
	}
	if gets := shardGets(c) - before; gets != 0 {
		t.Fatalf("a cached range read %d shards", gets)
	}

	// Another key finds nothing cached and fails as without the cache.
	if _, err := readSealed(s, newSealer(t), segs, 0, 10); !errors.Is(err, blobstore.ErrWrongKey) {
		t.Fatalf("another key: %v", err)
	}
	// Segments swapped in the layout are still refused by the seal.
	swapped := cloneSegs(segs)
	swapped[0], swapped[1] = swapped[1], swapped[0]
	if _, err := readSealed(s, sl, swapped, 0, int64(len(data))); !errors.Is(err, blobstore.ErrSegmentAuth) {
		t.Fatalf("swapped segments: %v", err)
	}
}

// The cache stays within its bound, does not keep failures, and a reader
// that gives up does not fail the others.
func TestSegmentCacheBoundAndFailures(t *testing.T) {
	c := newCluster(t, 1)
	cache, s := cachedStore(t, c, 4) // room for 4 segments
	data := randomData(5, 8*testSeg)
	segs := writeSealed(t, s, blobstore.Plain, data, 0)
	if got, err := readSealed(s, blobstore.Plain, segs, 0, int64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Fatal(err)
	}
	if n, size := cache.Len(); n > 4 || size > 4*testSeg {
		t.Fatalf("cache over its bound: %d segments, %d bytes", n, size)
	}

	// A failed fetch is not cached: the next read goes to the node again.
	cache2 := blobstore.NewSegmentCache(64<<20, nil)
	s2 := newStore(t, c, 1, 0, func(cfg *blobstore.Config) { cfg.SegmentCache = cache2 })
	remove := c.faulty[0].Inject(blobstore.Fault{Op: blobstore.OpGet})
	if _, err := readSealed(s2, blobstore.Plain, segs[:1], 0, 10); err == nil {
		t.Fatal("read through a failing node succeeded")
	}
	remove()
	if got, err := readSealed(s2, blobstore.Plain, segs[:1], 0, 10); err != nil || !bytes.Equal(got, data[:10]) {
		t.Fatalf("after the node recovered: %v", err)
	}

	// The first reader's context ends while a second waits for the same
	// fetch: the second still gets the segment.
	cache3 := blobstore.NewSegmentCache(64<<20, nil)
	s3 := newStore(t, c, 1, 0, func(cfg *blobstore.Config) { cfg.SegmentCache = cache3 })
	c.faulty[0].Inject(blobstore.Fault{Op: blobstore.OpGet, Delay: 200 * time.Millisecond})
	defer c.clearFaults()
	ctx, cancel := context.WithCancel(bg)
	first := make(chan error, 1)
	go func() {
		var out bytes.Buffer
		first <- s3.ReadRangeWith(ctx, &out, segs[2:3], 0, 10, blobstore.ReadOptions{})
	}()
	time.Sleep(50 * time.Millisecond)
	second := make(chan []byte, 1)
	go func() {
		got, err := readSealed(s3, blobstore.Plain, segs[2:3], 0, 10)
		if err != nil {
			got = nil
		}
		second <- got
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("the reader that gave up: %v", err)
	}
	if got := <-second; !bytes.Equal(got, data[2*testSeg:2*testSeg+10]) {
		t.Fatal("the waiting reader lost the shared fetch")
	}
}

// blockingWriter holds its first Write until release is closed, as a client
// that reads slowly keeps the segment it is being sent.
type blockingWriter struct {
	started chan struct{}
	release chan struct{}
	out     bytes.Buffer
	once    bool
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	if !w.once {
		w.once = true
		close(w.started)
		<-w.release
	}
	return w.out.Write(p)
}

// A segment the cache has no room for is still shared while a reader is
// writing it out: a second reader joins it instead of fetching (and holding)
// a copy of its own. Once no reader holds it, a read fetches it again.
func TestSegmentCacheSharesSegmentsStillBeingSent(t *testing.T) {
	c := newCluster(t, 1)
	cache := blobstore.NewSegmentCache(testSeg, nil) // a segment is more than a quarter: never kept
	s := newStore(t, c, 1, 0, func(cfg *blobstore.Config) { cfg.SegmentCache = cache })
	data := randomData(9, 2*testSeg)
	segs := writeSealed(t, s, blobstore.Plain, data, 0)

	before := shardGets(c)
	slow := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	first := make(chan error, 1)
	go func() { first <- s.ReadRangeWith(bg, slow, segs[:1], 0, testSeg, blobstore.ReadOptions{}) }()
	<-slow.started
	if got, err := readSealed(s, blobstore.Plain, segs[:1], 0, testSeg); err != nil || !bytes.Equal(got, data[:testSeg]) {
		t.Fatalf("second reader: %v", err)
	}
	if gets := shardGets(c) - before; gets != 1 {
		t.Fatalf("two readers of one segment, the first still sending it, cost %d shard reads, want 1", gets)
	}
	close(slow.release)
	if err := <-first; err != nil || !bytes.Equal(slow.out.Bytes(), data[:testSeg]) {
		t.Fatalf("first reader: %v", err)
	}
	if n, _ := cache.Len(); n != 0 {
		t.Fatalf("the cache kept %d segments larger than a quarter of it", n)
	}
	if got, err := readSealed(s, blobstore.Plain, segs[:1], 0, testSeg); err != nil || !bytes.Equal(got, data[:testSeg]) {
		t.Fatalf("third reader: %v", err)
	}
	if gets := shardGets(c) - before; gets != 2 {
		t.Fatalf("a read after every reader was done cost %d shard reads in all, want 2", gets)
	}
}

// cachedStore is a store of k = 1 on c with a segment cache of room for
// segments segments of testSeg.
func cachedStore(t *testing.T, c *cluster, segments int64) (*blobstore.SegmentCache, *blobstore.Store) {
	cache := blobstore.NewSegmentCache(segments*testSeg, nil)
	return cache, newStore(t, c, 1, 0, func(cfg *blobstore.Config) { cfg.SegmentCache = cache })
}

// readPasses reads the whole of segs passes times, one read after the
// other, and returns the shard reads each pass cost.
func readPasses(t *testing.T, c *cluster, s *blobstore.Store, segs []*metastorepb.Segment, data []byte, passes int) []int {
	t.Helper()
	gets := make([]int, passes)
	for i := range gets {
		before := shardGets(c)
		if got, err := readSealed(s, blobstore.Plain, segs, 0, int64(len(data))); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("pass %d: %v", i, err)
		}
		gets[i] = shardGets(c) - before
	}
	return gets
}

// Clients cycling through more segments than the cache holds still get
// the cache's share of them: the segments its main list holds (3 of the 4
// here; the window takes the fourth) stay, where a least recently used
// list would evict each just before it is read again and serve nothing.
func TestSegmentCacheKeepsItsShareOfACycle(t *testing.T) {
	c := newCluster(t, 1)
	_, s := cachedStore(t, c, 4) // room for 4 segments
	data := randomData(31, 8*testSeg)
	segs := writeSealed(t, s, blobstore.Plain, data, 0)

	gets := readPasses(t, c, s, segs, data, 20) // 160 reads: counts halved twice
	if gets[0] != 8 {
		t.Fatalf("the first pass read %d shards, want 8", gets[0])
	}
	for i, n := range gets[1:] {
		if n > 5 {
			t.Fatalf("pass %d of a cycle through 8 segments with room for 4 read %d shards (passes: %v), want at most 5", i+1, n, gets)
		}
	}
}

// A single read of many segments (a one-off pull of a big image) passes
// through the cache without pushing out the segments everyone reads; a
// new blob read again and again takes their place once they are no longer
// read.
func TestSegmentCacheAdmitsByFrequency(t *testing.T) {
	c := newCluster(t, 1)
	_, s := cachedStore(t, c, 4) // room for 4 segments
	hot := randomData(32, 2*testSeg)
	hotSegs := writeSealed(t, s, blobstore.Plain, hot, 0)
	scan := randomData(33, 8*testSeg)
	scanSegs := writeSealed(t, s, blobstore.Plain, scan, 0)

	readPasses(t, c, s, hotSegs, hot, 3)
	if gets := readPasses(t, c, s, scanSegs, scan, 1); gets[0] != 8 {
		t.Fatalf("the one-off read of 8 segments read %d shards", gets[0])
	}
	if gets := readPasses(t, c, s, hotSegs, hot, 1); gets[0] != 0 {
		t.Fatalf("the hot blob read %d shards after a one-off read of another, want 0: it was pushed out", gets[0])
	}

	// A new blob of 4 segments read over and over: its segments are read
	// more often than the old ones after a few passes, and then all of it
	// is served from the cache.
	fresh := randomData(34, 4*testSeg)
	freshSegs := writeSealed(t, s, blobstore.Plain, fresh, 0)
	gets := readPasses(t, c, s, freshSegs, fresh, 40)
	if gets[0] != 4 {
		t.Fatalf("the new blob's first read read %d shards", gets[0])
	}
	if last := gets[len(gets)-5:]; slices.Max(last) != 0 {
		t.Fatalf("a blob read 40 times in a row is still not all cached (shard reads per pass: %v)", gets)
	}
}

// lateShards delivers one data shard in four 15 ms late when late is set,
// writing it into the caller's buffer then whatever the caller's context
// says.
type lateShards struct {
	blobstore.ShardStore
	late *atomic.Bool
}

func (l lateShards) Get(ctx context.Context, id blobstore.ShardID) ([]byte, error) {
	return l.GetInto(ctx, id, nil)
}

func (l lateShards) GetInto(ctx context.Context, id blobstore.ShardID, dst []byte) ([]byte, error) {
	if l.late.Load() && id.Index < 4 && rand.IntN(4) == 0 {
		time.Sleep(15 * time.Millisecond)
		ctx = context.WithoutCancel(ctx)
	}
	return l.ShardStore.(blobstore.ShardReaderInto).GetInto(ctx, id, dst)
}

// slowBuffer is a bytes.Buffer whose writes take a millisecond before they
// copy: a reader that holds a segment's pieces a while.
type slowBuffer struct{ bytes.Buffer }

func (b *slowBuffer) Write(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	return b.Buffer.Write(p)
}

// Segment buffers are pooled: a buffer goes back for another segment only
// once its reader (or the cache, and every reader of the cached segment)
// and every fetch still writing into it are done. Readers pull blobs side
// by side through a cache smaller than what they read, while one data shard
// in four arrives late: hedged reads finish without it, and the late fetch,
// deaf to the read's cancellation (a transfer already under way), writes
// into its region after the read has returned. Every read must come back
// byte for byte (and, under the race detector, without a race on a reused
// buffer), though each takes its time writing what it read out.
func TestPooledSegmentBuffersOutliveLateFetches(t *testing.T) {
	for _, withCache := range []bool{true, false} {
		c := newCluster(t, 6)
		var late atomic.Bool
		nodes := func() []blobstore.Node {
			ns := c.nodes()
			for i := range ns {
				ns[i].Shards = lateShards{ns[i].Shards, &late}
			}
			return ns
		}
		cfg := blobstore.Config{SegmentSize: testSeg, K: 4, M: 2, SmallBlobThreshold: 4 << 10, HedgeAfter: 2 * time.Millisecond}
		if withCache {
			cfg.SegmentCache = blobstore.NewSegmentCache(12*testSeg, nil) // half of what is read
		}
		s, err := blobstore.New(cfg, nodes)
		if err != nil {
			t.Fatal(err)
		}
		var blobs [][]byte
		var layouts [][]*metastorepb.Segment
		for i := range 6 {
			data := randomData(uint64(100+i), 4*testSeg-i*1000)
			blobs, layouts = append(blobs, data), append(layouts, write(t, s, data))
		}
		late.Store(true)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for r := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := range 12 {
					i := (r + n*5) % len(blobs)
					var out slowBuffer
					if err := s.ReadRange(bg, &out, layouts[i], 0, int64(len(blobs[i]))); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(out.Bytes(), blobs[i]) {
						errs <- fmt.Errorf("reader %d, read %d: blob %d came back different", r, n, i)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("cache %v: %v", withCache, err)
		}
	}
}
