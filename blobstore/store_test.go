package blobstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

// cluster is n real LocalStores in temporary directories, each behind a
// Faulty wrapper and in its own zone.
type cluster struct {
	local  []*blobstore.LocalStore
	faulty []*blobstore.Faulty

	mu     sync.Mutex
	hidden map[string]bool               // nodes left out of the node list
	room   map[string]blobstore.NodeInfo // Free and Full to report instead of plenty of room
}

func newCluster(tb testing.TB, n int) *cluster {
	tb.Helper()
	c := &cluster{hidden: map[string]bool{}}
	for i := range n {
		s, err := blobstore.OpenLocal(fmt.Sprintf("node-%d", i), tb.TempDir())
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { s.Close() })
		c.local = append(c.local, s)
		c.faulty = append(c.faulty, blobstore.NewFaulty(s))
	}
	return c
}

func (c *cluster) nodes() []blobstore.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []blobstore.Node
	for i, f := range c.faulty {
		id := c.local[i].NodeID()
		if c.hidden[id] {
			continue
		}
		info := blobstore.NodeInfo{ID: id, Zone: "zone-" + id, Free: 1 << 40}
		if r, ok := c.room[id]; ok {
			info.Free, info.Full = r.Free, r.Full
		}
		out = append(out, blobstore.Node{Info: info, Shards: f})
	}
	return out
}

// setRoom makes node i report free bytes free (and full).
func (c *cluster) setRoom(i int, free uint64, full bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.room == nil {
		c.room = map[string]blobstore.NodeInfo{}
	}
	c.room[c.local[i].NodeID()] = blobstore.NodeInfo{Free: free, Full: full}
}

func (c *cluster) hide(i int) {
	c.mu.Lock()
	c.hidden[c.local[i].NodeID()] = true
	c.mu.Unlock()
}

func (c *cluster) byNode(id string) int {
	for i, s := range c.local {
		if s.NodeID() == id {
			return i
		}
	}
	panic("no node " + id)
}

func (c *cluster) shardCount(tb testing.TB) int64 {
	var n int64
	for _, s := range c.local {
		u, err := s.Usage(bg)
		if err != nil {
			tb.Fatal(err)
		}
		n += u.Shards
	}
	return n
}

func (c *cluster) clearFaults() {
	for _, f := range c.faulty {
		f.Clear()
	}
}

const testSeg = 64 << 10

func newStore(tb testing.TB, c *cluster, k, m int, tweak ...func(*blobstore.Config)) *blobstore.Store {
	tb.Helper()
	cfg := blobstore.Config{SegmentSize: testSeg, K: k, M: m, SmallBlobThreshold: 4 << 10}
	for _, f := range tweak {
		f(&cfg)
	}
	s, err := blobstore.New(cfg, c.nodes)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func randomData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func write(t *testing.T, s *blobstore.Store, data []byte) []*metastorepb.Segment {
	t.Helper()
	h := sha256.New()
	segs, n, err := s.Write(bg, bytes.NewReader(data), h)
	if err != nil {
		t.Fatalf("Write of %d bytes: %v", len(data), err)
	}
	if n != int64(len(data)) {
		t.Fatalf("Write read %d bytes, want %d", n, len(data))
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("the hash did not see exactly the bytes written")
	}
	return segs
}

func readAll(t *testing.T, s *blobstore.Store, segs []*metastorepb.Segment, size int) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := s.ReadRange(bg, &out, segs, 0, int64(size)); err != nil {
		t.Fatalf("ReadRange: %v", err)
	}
	return out.Bytes()
}

var geometries = []struct{ k, m, nodes int }{{1, 0, 1}, {2, 1, 3}, {4, 2, 6}}

func TestRoundTrip(t *testing.T) {
	for _, g := range geometries {
		t.Run(fmt.Sprintf("%d+%d", g.k, g.m), func(t *testing.T) {
			c := newCluster(t, g.nodes)
			s := newStore(t, c, g.k, g.m)
			for i, size := range []int{0, 1, 4<<10 - 1, 4 << 10, testSeg - 1, testSeg, testSeg + 1, 3*testSeg + 17} {
				data := randomData(uint64(i), size)
				segs := write(t, s, data)
				if want := (size + testSeg - 1) / testSeg; len(segs) != want {
					t.Fatalf("size %d: %d segments, want %d", size, len(segs), want)
				}
				var total uint64
				for j, seg := range segs {
					total += seg.Length
					k, m := g.k, g.m
					if seg.Length < 4<<10 {
						k = 1 // small segments are replicas
					}
					if int(seg.K) != k || int(seg.M) != m || seg.Format != 1 || seg.KeyId != "" || len(seg.Id) != 32 {
						t.Fatalf("size %d segment %d: %+v", size, j, seg)
					}
					if want := (seg.Length + uint64(k) - 1) / uint64(k); seg.ShardSize != want {
						t.Fatalf("size %d segment %d: shard size %d, want %d", size, j, seg.ShardSize, want)
					}
					if len(seg.Shards) != k+m {
						t.Fatalf("size %d segment %d: %d shard refs, want %d", size, j, len(seg.Shards), k+m)
					}
					nodes := map[string]bool{}
					for idx, ref := range seg.Shards {
						if int(ref.Index) != idx || len(ref.Blake3) != 32 || nodes[ref.Node] {
							t.Fatalf("size %d segment %d: bad ref %v", size, j, ref)
						}
						nodes[ref.Node] = true
					}
				}
				if total != uint64(size) {
					t.Fatalf("size %d: segments hold %d bytes", size, total)
				}
				if got := readAll(t, s, segs, size); !bytes.Equal(got, data) {
					t.Fatalf("size %d: read differs from written", size)
				}
			}
		})
	}
}

func TestWriteLargeBlobManySegments(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2, func(cfg *blobstore.Config) { cfg.WriteConcurrency = 3 })
	data := randomData(99, 20*testSeg+5)
	// A reader that returns short reads must not change the segmentation.
	segs, n, err := s.Write(bg, iotest.HalfReader(bytes.NewReader(data)), nil)
	if err != nil || n != int64(len(data)) || len(segs) != 21 {
		t.Fatalf("Write = %d segments, %d bytes, %v", len(segs), n, err)
	}
	for i, seg := range segs[:20] {
		if seg.Length != testSeg {
			t.Fatalf("segment %d has %d bytes", i, seg.Length)
		}
	}
	if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read differs")
	}
}

func TestReadRangeBoundaries(t *testing.T) {
	c := newCluster(t, 3)
	s := newStore(t, c, 2, 1)
	size := 3*testSeg + 100
	data := randomData(5, size)
	segs := write(t, s, data)

	var points []int
	for _, b := range []int{0, testSeg, 2 * testSeg, 3 * testSeg, size} {
		for _, d := range []int{-1, 0, 1} {
			if p := b + d; p >= 0 && p <= size {
				points = append(points, p)
			}
		}
	}
	points = append(points, testSeg/2, testSeg/2+1) // inside a segment, at the data shard boundary
	reads := 0
	for _, from := range points {
		for _, to := range points {
			if to < from {
				continue
			}
			var out bytes.Buffer
			if err := s.ReadRange(bg, &out, segs, int64(from), int64(to-from)); err != nil {
				t.Fatalf("ReadRange(%d, %d): %v", from, to-from, err)
			}
			if !bytes.Equal(out.Bytes(), data[from:to]) {
				t.Fatalf("ReadRange(%d, %d) returned the wrong bytes", from, to-from)
			}
			reads++
		}
	}
	t.Logf("%d ranged reads", reads)

	for _, r := range [][2]int64{{-1, 1}, {0, -1}, {int64(size), 1}, {int64(size) + 1, 0}, {1, int64(size)}, {5, 1 << 62}} {
		if err := s.ReadRange(bg, io.Discard, segs, r[0], r[1]); !errors.Is(err, blobstore.ErrInvalidRange) {
			t.Errorf("ReadRange(%d, %d) = %v, want ErrInvalidRange", r[0], r[1], err)
		}
	}
}

func TestReadFetchesOnlyOverlappingDataShards(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2)
	data := randomData(6, 4*testSeg)
	segs := write(t, s, data)
	gets := func() int {
		n := 0
		for _, f := range c.faulty {
			n += f.Calls(blobstore.OpGet)
		}
		return n
	}
	before := gets()
	var out bytes.Buffer
	if err := s.ReadRange(bg, &out, segs, testSeg+10, testSeg); err != nil { // two segments
		t.Fatal(err)
	}
	if got := gets() - before; got != 2*4 {
		t.Fatalf("a healthy read of 2 segments made %d shard Gets, want 8 (k per segment)", got)
	}
}

// everyCombination calls f with every set of r of n indexes.
func everyCombination(n, r int, f func([]int)) {
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		if len(cur) == r {
			f(cur)
			return
		}
		for i := start; i < n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(0, nil)
}

func TestReadSurvivesMNodesFailing(t *testing.T) {
	c := newCluster(t, 6)
	var reported sync.Map
	s := newStore(t, c, 4, 2, func(cfg *blobstore.Config) {
		cfg.OnShardError = func(seg string, ref *metastorepb.ShardRef, err error) { reported.Store(ref.Node, err) }
	})
	size := 2*testSeg + 3
	data := randomData(7, size)
	segs := write(t, s, data)

	everyCombination(6, 2, func(down []int) {
		defer c.clearFaults()
		for _, i := range down {
			c.faulty[i].Down()
		}
		if got := readAll(t, s, segs, size); !bytes.Equal(got, data) {
			t.Fatalf("nodes %v down: read differs", down)
		}
	})
	nreported := 0
	reported.Range(func(_, _ any) bool { nreported++; return true })
	if nreported == 0 {
		t.Error("OnShardError was not told of failing shards")
	}

	// Corrupted payloads (bitrot the node did not notice) and a node that is
	// gone from the node list are survived the same way.
	c.faulty[1].Inject(blobstore.Fault{Op: blobstore.OpGet, Corrupt: true})
	c.hide(3)
	if got := readAll(t, s, segs, size); !bytes.Equal(got, data) {
		t.Fatal("read with a corrupting node and a missing node differs")
	}

	// m+1 failures are too many.
	c.faulty[5].Down()
	err := s.ReadRange(bg, io.Discard, segs, 0, int64(size))
	if !errors.Is(err, blobstore.ErrSegmentUnreadable) {
		t.Fatalf("read with 3 of 6 shards bad = %v, want ErrSegmentUnreadable", err)
	}
}

func TestReadSurvivesCorruptShardFiles(t *testing.T) {
	c := newCluster(t, 6)
	var mu sync.Mutex
	var corrupt int
	s := newStore(t, c, 4, 2, func(cfg *blobstore.Config) {
		cfg.OnShardError = func(_ string, _ *metastorepb.ShardRef, err error) {
			if errors.Is(err, blobstore.ErrShardCorrupt) {
				mu.Lock()
				corrupt++
				mu.Unlock()
			}
		}
	})
	size := 3 * testSeg
	data := randomData(8, size)
	segs := write(t, s, data)
	flip := func(seg *metastorepb.Segment, index int) {
		ref := seg.Shards[index]
		local := c.local[c.byNode(ref.Node)]
		path := local.ShardPath(blobstore.ShardID{Segment: seg.Id, Index: ref.Index})
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-1-index] ^= 0x80
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, seg := range segs {
		flip(seg, i%4)     // a data shard
		flip(seg, (i+1)%6) // and another shard
	}
	if got := readAll(t, s, segs, size); !bytes.Equal(got, data) {
		t.Fatal("read with 2 corrupt shards per segment differs")
	}
	if corrupt < len(segs) {
		t.Fatalf("%d corrupt shards reported, want at least %d", corrupt, len(segs))
	}
	flip(segs[1], 5)
	flip(segs[1], 4)
	if err := s.ReadRange(bg, io.Discard, segs, 0, int64(size)); !errors.Is(err, blobstore.ErrSegmentUnreadable) {
		t.Fatalf("read with too many corrupt shards = %v, want ErrSegmentUnreadable", err)
	}
	// The other segments are still readable on their own.
	var out bytes.Buffer
	if err := s.ReadRange(bg, &out, segs, 2*testSeg, testSeg); err != nil || !bytes.Equal(out.Bytes(), data[2*testSeg:]) {
		t.Fatalf("read of an intact segment: %v", err)
	}
}

func TestReadHedgesAroundStalledNode(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2, func(cfg *blobstore.Config) { cfg.HedgeAfter = 20 * time.Millisecond })
	data := randomData(9, 2*testSeg)
	segs := write(t, s, data)
	// A data shard and the first parity shard both stall: the first hedge
	// asks for the stalled parity shard, the next for the other one.
	for _, f := range c.faulty {
		f.Inject(blobstore.Fault{Op: blobstore.OpGet, Stall: true, Match: func(id blobstore.ShardID) bool { return id.Index == 0 || id.Index == 4 }})
	}
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := s.ReadRange(ctx, &out, segs, 0, int64(len(data))); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("read around stalled nodes: %v", err)
	}
}

func TestWriteQuorum(t *testing.T) {
	t.Run("4+2 with 2 of 6 down", func(t *testing.T) {
		c := newCluster(t, 6)
		s := newStore(t, c, 4, 2)
		c.faulty[0].Down()
		c.faulty[4].Inject(blobstore.Fault{Op: blobstore.OpPut, Err: errors.New("disk full")})
		data := randomData(10, 2*testSeg+1)
		segs := write(t, s, data)
		for _, seg := range segs {
			if want := min(int(seg.K+seg.M), 6-2); len(seg.Shards) != want {
				t.Fatalf("segment has %d shard refs, want the %d written", len(seg.Shards), want)
			}
			for _, ref := range seg.Shards {
				if ref.Node == c.local[0].NodeID() || ref.Node == c.local[4].NodeID() {
					t.Fatalf("a shard is recorded on a failed node: %v", ref)
				}
			}
		}
		if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
			t.Fatal("read differs")
		}
	})
	t.Run("4+2 with 2 of 8 down uses spares", func(t *testing.T) {
		c := newCluster(t, 8)
		s := newStore(t, c, 4, 2)
		c.faulty[1].Down()
		c.faulty[6].Down()
		data := randomData(11, 3*testSeg)
		segs := write(t, s, data)
		for _, seg := range segs {
			if len(seg.Shards) != 6 {
				t.Fatalf("segment has %d shard refs, want all 6 on spares", len(seg.Shards))
			}
		}
		if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
			t.Fatal("read differs")
		}
	})
	for _, tc := range []struct {
		name       string
		k, m, n    int
		down       []int
		ok         bool
		wantShards int
	}{
		{"4+2 with 3 of 6 down", 4, 2, 6, []int{0, 2, 5}, false, 0},
		{"2+2 with 1 of 4 down", 2, 2, 4, []int{3}, true, 3},
		{"2+2 with 2 of 4 down: k+1 needed", 2, 2, 4, []int{0, 1}, false, 0},
		{"2+1 with 1 of 3 down", 2, 1, 3, []int{1}, true, 2},
		{"1+0 down", 1, 0, 1, []int{0}, false, 0},
		{"2+0 with 1 of 2 down", 2, 0, 2, []int{1}, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, tc.n)
			s := newStore(t, c, tc.k, tc.m)
			for _, i := range tc.down {
				c.faulty[i].Down()
			}
			data := randomData(12, 2*testSeg)
			h := sha256.New()
			segs, n, err := s.Write(bg, bytes.NewReader(data), h)
			if !tc.ok {
				if !errors.Is(err, blobstore.ErrWriteQuorum) || segs != nil {
					t.Fatalf("Write = %d segments, %v; want ErrWriteQuorum", len(segs), err)
				}
				if got := c.shardCount(t); got != 0 {
					t.Fatalf("%d shards left behind by a failed write", got)
				}
				return
			}
			if err != nil || n != int64(len(data)) {
				t.Fatalf("Write: %d, %v", n, err)
			}
			for _, seg := range segs {
				if len(seg.Shards) != tc.wantShards {
					t.Fatalf("%d shard refs, want %d", len(seg.Shards), tc.wantShards)
				}
			}
			c.clearFaults()
			if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
				t.Fatal("read differs")
			}
		})
	}
	t.Run("not enough nodes", func(t *testing.T) {
		c := newCluster(t, 3)
		s := newStore(t, c, 4, 2)
		_, _, err := s.Write(bg, bytes.NewReader(randomData(1, testSeg)), nil)
		if !errors.Is(err, blobstore.ErrWriteQuorum) || !errors.Is(err, blobstore.ErrNotEnoughNodes) {
			t.Fatalf("Write on 3 nodes for 4+2 = %v", err)
		}
	})
	t.Run("fewer nodes than shards but a quorum", func(t *testing.T) {
		c := newCluster(t, 5)
		s := newStore(t, c, 4, 2)
		data := randomData(2, testSeg)
		segs := write(t, s, data)
		if len(segs[0].Shards) != 5 {
			t.Fatalf("%d shards, want 5", len(segs[0].Shards))
		}
		if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
			t.Fatal("read differs")
		}
	})
}

func TestWriteStragglerIsCut(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2, func(cfg *blobstore.Config) { cfg.StragglerTimeout = 20 * time.Millisecond })
	c.faulty[2].Inject(blobstore.Fault{Op: blobstore.OpPut, Stall: true})
	data := randomData(13, testSeg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		segs := write(t, s, data)
		if len(segs[0].Shards) != 5 {
			t.Errorf("%d shard refs, want 5", len(segs[0].Shards))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Write waited for a stalled node")
	}
}

func TestSmallSegmentsAreReplicas(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2)
	data := randomData(14, 1000)
	segs := write(t, s, data)
	seg := segs[0]
	if seg.K != 1 || seg.M != 2 || seg.ShardSize != 1000 || len(seg.Shards) != 3 {
		t.Fatalf("small segment = k %d m %d shard size %d refs %d", seg.K, seg.M, seg.ShardSize, len(seg.Shards))
	}
	if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read differs")
	}
}

type failingReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func TestWriteFailuresLeaveNothing(t *testing.T) {
	c := newCluster(t, 3)
	s := newStore(t, c, 2, 1)
	data := randomData(15, 5*testSeg)

	boom := errors.New("connection reset")
	h := sha256.New()
	segs, n, err := s.Write(bg, &failingReader{bytes.NewReader(data), 3*testSeg + 10, boom}, h)
	if !errors.Is(err, boom) || segs != nil || n != 3*testSeg+10 {
		t.Fatalf("Write from a failing reader = %d segments, %d bytes, %v", len(segs), n, err)
	}
	if want := sha256.Sum256(data[:n]); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("the hash did not see exactly the bytes read")
	}
	if got := c.shardCount(t); got != 0 {
		t.Fatalf("%d shards left behind", got)
	}

	ctx, cancel := context.WithCancel(bg)
	cancel()
	if _, _, err := s.Write(ctx, bytes.NewReader(data), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Write with a cancelled context = %v", err)
	}
	if got := c.shardCount(t); got != 0 {
		t.Fatalf("%d shards left behind", got)
	}
}

func TestDelete(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2)
	segs := write(t, s, randomData(16, 3*testSeg+5))
	if c.shardCount(t) == 0 {
		t.Fatal("no shards written")
	}
	c.hide(0)
	if err := s.Delete(bg, segs); !errors.Is(err, blobstore.ErrNodeUnavailable) {
		t.Fatalf("Delete with a node missing = %v, want ErrNodeUnavailable", err)
	}
	c.mu.Lock()
	c.hidden = map[string]bool{}
	c.mu.Unlock()
	if err := s.Delete(bg, segs); err != nil {
		t.Fatal(err)
	}
	if got := c.shardCount(t); got != 0 {
		t.Fatalf("%d shards left after Delete", got)
	}
	if err := s.Delete(bg, segs); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
}

func TestReadRejectsBadMetadata(t *testing.T) {
	c := newCluster(t, 3)
	s := newStore(t, c, 2, 1)
	data := randomData(17, testSeg)
	segs := write(t, s, data)
	for name, mutate := range map[string]func(*metastorepb.Segment){
		"k zero":    func(seg *metastorepb.Segment) { seg.K = 0 },
		"length":    func(seg *metastorepb.Segment) { seg.ShardSize = 1 },
		"format":    func(seg *metastorepb.Segment) { seg.Format = 99 },
		"key":       func(seg *metastorepb.Segment) { seg.KeyId = "k1" },
		"no shards": func(seg *metastorepb.Segment) { seg.Shards = nil },
		"wrong sums": func(seg *metastorepb.Segment) {
			seg.Shards[0].Blake3, seg.Shards[2].Blake3 = seg.Shards[2].Blake3, seg.Shards[0].Blake3
		},
		"shard index": func(seg *metastorepb.Segment) { seg.Shards[0].Index, seg.Shards[1].Index = 7, 8 },
	} {
		seg := cloneSegment(segs[0])
		mutate(seg)
		err := s.ReadRange(bg, io.Discard, []*metastorepb.Segment{seg}, 0, 10)
		if !errors.Is(err, blobstore.ErrInvalidSegment) && !errors.Is(err, blobstore.ErrSegmentUnreadable) {
			t.Errorf("%s: ReadRange = %v", name, err)
		}
	}
}

func cloneSegment(seg *metastorepb.Segment) *metastorepb.Segment {
	out := &metastorepb.Segment{Id: seg.Id, Length: seg.Length, K: seg.K, M: seg.M, ShardSize: seg.ShardSize, Format: seg.Format, KeyId: seg.KeyId}
	for _, r := range seg.Shards {
		out.Shards = append(out.Shards, &metastorepb.ShardRef{Index: r.Index, Node: r.Node, Blake3: bytes.Clone(r.Blake3)})
	}
	return out
}

func TestConfig(t *testing.T) {
	cfg := blobstore.Config{}.WithDefaults()
	if cfg.SegmentSize != 8<<20 || cfg.K != 1 || cfg.M != 0 || cfg.SmallBlobThreshold != 256<<10 || cfg.WriteConcurrency != 2 {
		t.Fatalf("defaults = %+v", cfg)
	}
	for _, bad := range []blobstore.Config{{SegmentSize: -1}, {K: -1}, {K: 200, M: 57}, {M: -1}, {WriteConcurrency: -2}, {SegmentSize: 2 << 30}} {
		if _, err := blobstore.New(bad, func() []blobstore.Node { return nil }); err == nil {
			t.Errorf("New(%+v) succeeded", bad)
		}
	}
	if blobstore.WriteQuorum(4, 2) != 4 || blobstore.WriteQuorum(2, 2) != 3 || blobstore.WriteQuorum(3, 0) != 3 || blobstore.WriteQuorum(1, 2) != 1 {
		t.Fatal("WriteQuorum")
	}
}

// A segment's data shards are read side by side into one buffer, one fetch
// per shard's region. A doubled shard (two refs of one index, as repair
// leaves for a while) whose first copy is slow is read from the second copy
// into a buffer of its own, while the slow fetch later finishes writing into
// its region: the read returns the right bytes, and (under -race) nothing it
// returns shares memory with the late write.
func TestReadDoubledShardWithSlowFirstCopy(t *testing.T) {
	for _, sealed := range []bool{false, true} {
		t.Run(fmt.Sprintf("sealed=%v", sealed), func(t *testing.T) {
			c := newCluster(t, 6)
			var seal blobstore.Sealer = blobstore.Plain
			if sealed {
				key := randomData(77, blobstore.DataKeySize)
				var err error
				if seal, err = blobstore.NewAESGCMSealer(key); err != nil {
					t.Fatal(err)
				}
			}
			s := newStore(t, c, 4, 2, func(cfg *blobstore.Config) { cfg.HedgeAfter = 20 * time.Millisecond; cfg.Sealer = seal })
			data := randomData(31, 2*testSeg)
			segs := write(t, s, data)
			for _, seg := range segs {
				var orig, parity *metastorepb.ShardRef
				for _, ref := range seg.Shards {
					switch ref.Index {
					case 1:
						orig = ref
					case 5:
						parity = ref
					}
				}
				id := blobstore.ShardID{Segment: seg.Id, Index: 1}
				b, err := c.local[c.byNode(orig.Node)].Get(bg, id)
				if err != nil {
					t.Fatal(err)
				}
				if err := c.local[c.byNode(parity.Node)].Put(bg, id, b, blake3.Sum256(b)); err != nil {
					t.Fatal(err)
				}
				seg.Shards = append(seg.Shards, &metastorepb.ShardRef{Index: 1, Node: parity.Node, Blake3: orig.Blake3})
				c.faulty[c.byNode(orig.Node)].Inject(blobstore.Fault{Op: blobstore.OpGet, Delay: 300 * time.Millisecond, Match: blobstore.ShardIs(id)})
			}
			if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
				t.Fatal("read with a slow first copy of a doubled shard differs")
			}
			time.Sleep(400 * time.Millisecond) // the slow fetches finish writing
			for _, f := range c.faulty {
				f.Clear()
			}
			if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
				t.Fatal("read of every data shard side by side differs")
			}
		})
	}
}
