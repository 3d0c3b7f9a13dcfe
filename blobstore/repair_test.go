package blobstore_test

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

// apply records replacements in a copy of seg, as ReplaceShard does.
func apply(seg *metastorepb.Segment, reps []blobstore.Replacement) *metastorepb.Segment {
	out := proto.Clone(seg).(*metastorepb.Segment)
	for _, rep := range reps {
		ref := &metastorepb.ShardRef{Index: rep.Index, Node: rep.NewNode, Blake3: append([]byte(nil), rep.Sum[:]...)}
		i := slices.IndexFunc(out.Shards, func(r *metastorepb.ShardRef) bool { return r.Index == rep.Index })
		if i >= 0 {
			out.Shards[i] = ref
		} else {
			out.Shards = append(out.Shards, ref)
		}
	}
	slices.SortFunc(out.Shards, func(a, b *metastorepb.ShardRef) int { return int(a.Index) - int(b.Index) })
	return out
}

// checkDistinct fails unless seg has k+m shards on distinct nodes, none of
// them in avoid.
func checkDistinct(t *testing.T, seg *metastorepb.Segment, avoid map[string]bool) {
	t.Helper()
	if len(seg.Shards) != int(seg.K+seg.M) {
		t.Fatalf("segment %s has %d shards, want %d", seg.Id, len(seg.Shards), seg.K+seg.M)
	}
	nodes := map[string]bool{}
	for _, r := range seg.Shards {
		if nodes[r.Node] {
			t.Fatalf("segment %s has two shards on %s", seg.Id, r.Node)
		}
		if avoid[r.Node] {
			t.Fatalf("segment %s keeps shard %d on avoided node %s", seg.Id, r.Index, r.Node)
		}
		nodes[r.Node] = true
	}
}

// checkOnDisk verifies every shard of seg on its node's disk against its ref.
func checkOnDisk(t *testing.T, c *cluster, seg *metastorepb.Segment) {
	t.Helper()
	for _, r := range seg.Shards {
		info, err := c.local[c.byNode(r.Node)].Verify(bg, blobstore.ShardID{Segment: seg.Id, Index: r.Index})
		if err != nil || !bytes.Equal(info.Sum[:], r.Blake3) {
			t.Fatalf("shard %d of %s on %s: %v (sum match %v)", r.Index, seg.Id, r.Node, err, bytes.Equal(info.Sum[:], r.Blake3))
		}
	}
}

func avoidSet(ids ...string) (map[string]bool, func(string) bool) {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m, func(id string) bool { return m[id] }
}

func TestRebuildLostShards(t *testing.T) {
	c := newCluster(t, 8)
	s := newStore(t, c, 4, 2)
	size := 3*testSeg - 100
	data := randomData(20, size)
	segs := write(t, s, data)

	for n, seg := range segs {
		// Two nodes of the segment are lost: a data shard's and a parity
		// shard's.
		lost := []*metastorepb.ShardRef{seg.Shards[n%4], seg.Shards[4+n%2]}
		for _, r := range lost {
			c.hide(c.byNode(r.Node))
		}
		avoid, fn := avoidSet(lost[0].Node, lost[1].Node)
		res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{lost[1].Index, lost[0].Index}, Avoid: fn})
		if err != nil {
			t.Fatalf("segment %d: %v", n, err)
		}
		if len(res.Replacements) != 2 || res.Replacements[0].Index != lost[0].Index || res.Replacements[1].Index != lost[1].Index {
			t.Fatalf("segment %d: replacements %+v", n, res.Replacements)
		}
		for i, rep := range res.Replacements {
			if rep.OldNode != lost[i].Node || rep.Moved || !bytes.Equal(rep.Sum[:], lost[i].Blake3) {
				t.Fatalf("segment %d: replacement %+v of %v", n, rep, lost[i])
			}
		}
		shardSize := int64(seg.ShardSize)
		if res.BytesRead != 4*shardSize || res.BytesWritten != 2*shardSize {
			t.Fatalf("segment %d: read %d, wrote %d; want %d and %d", n, res.BytesRead, res.BytesWritten, 4*shardSize, 2*shardSize)
		}
		segs[n] = apply(seg, res.Replacements)
		checkDistinct(t, segs[n], avoid)
		checkOnDisk(t, c, segs[n])
		c.mu.Lock()
		clear(c.hidden)
		c.mu.Unlock()
	}
	// Any two nodes may now fail again.
	everyCombination(8, 2, func(down []int) {
		defer c.clearFaults()
		for _, i := range down {
			c.faulty[i].Down()
		}
		if got := readAll(t, s, segs, size); !bytes.Equal(got, data) {
			t.Fatalf("nodes %v down after repair: read differs", down)
		}
	})
}

func TestRebuildMovesOffDrainingNode(t *testing.T) {
	c := newCluster(t, 7)
	s := newStore(t, c, 4, 2)
	data := randomData(21, testSeg)
	seg := write(t, s, data)[0]
	ref := seg.Shards[2]
	avoid, fn := avoidSet(ref.Node) // draining: still readable
	res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{2}, Avoid: fn})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replacements) != 1 || !res.Replacements[0].Moved || res.BytesRead != int64(seg.ShardSize) {
		t.Fatalf("move: %+v, read %d bytes; want one moved shard and one shard read", res.Replacements, res.BytesRead)
	}
	moved := apply(seg, res.Replacements)
	checkDistinct(t, moved, avoid)
	checkOnDisk(t, c, moved)

	// When the draining node's copy is bad, the shard is reconstructed.
	ref = moved.Shards[3]
	c.faulty[c.byNode(ref.Node)].Inject(blobstore.Fault{Op: blobstore.OpGet, Corrupt: true})
	avoid, fn = avoidSet(ref.Node)
	var reported atomic.Int32
	res, err = s.Rebuild(bg, blobstore.RebuildRequest{Segment: moved, Indexes: []uint32{3}, Avoid: fn,
		OnShardError: func(*metastorepb.ShardRef, error) { reported.Add(1) }})
	if err != nil || len(res.Replacements) != 1 || res.Replacements[0].Moved {
		t.Fatalf("move of a corrupt copy: %+v, %v; want a reconstructed shard", res.Replacements, err)
	}
	if reported.Load() != 0 {
		t.Fatal("the bad copy of the shard being rebuilt was reported")
	}
	moved = apply(moved, res.Replacements)
	checkDistinct(t, moved, avoid)
	c.clearFaults()
	if got := readAll(t, s, []*metastorepb.Segment{moved}, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read after moves differs")
	}
}

func TestRebuildCorruptShardInPlace(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2)
	data := randomData(22, 2*testSeg)
	segs := write(t, s, data)
	seg := segs[1]
	ref := seg.Shards[1]
	local := c.local[c.byNode(ref.Node)]
	id := blobstore.ShardID{Segment: seg.Id, Index: ref.Index}
	flipByte(t, local.ShardPath(id), 64+100)
	if _, err := local.Verify(bg, id); !errors.Is(err, blobstore.ErrShardCorrupt) {
		t.Fatalf("Verify of a flipped shard = %v", err)
	}
	res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{ref.Index}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replacements) != 1 || res.Replacements[0].NewNode != ref.Node || res.Replacements[0].OldNode != ref.Node {
		t.Fatalf("replacements %+v, want shard %d rewritten on %s", res.Replacements, ref.Index, ref.Node)
	}
	checkOnDisk(t, c, seg)

	// A shard with no location at all (written below full redundancy).
	short := proto.Clone(segs[0]).(*metastorepb.Segment)
	short.Shards = slices.Delete(short.Shards, 0, 1)
	res, err = s.Rebuild(bg, blobstore.RebuildRequest{Segment: short, Indexes: []uint32{0}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replacements) != 1 || res.Replacements[0].OldNode != "" || res.Replacements[0].NewNode == "" {
		t.Fatalf("replacements %+v", res.Replacements)
	}
	full := apply(short, res.Replacements)
	checkDistinct(t, full, nil)
	if !bytes.Equal(full.Shards[0].Blake3, segs[0].Shards[0].Blake3) {
		t.Fatal("rebuilt data shard differs from the one written")
	}
}

// With fewer healthy nodes than shards, a node that holds the fewest shards
// of the segment takes a second one: the segment is back to k+m shards.
func TestRebuildColocatesWhenNodesAreShort(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2)
	seg := write(t, s, randomData(23, testSeg))[0]
	gone := seg.Shards[0].Node
	_, fn := avoidSet(gone)
	res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{0}, Avoid: fn})
	if err != nil || len(res.Replacements) != 1 {
		t.Fatalf("rebuild on 5 of 6 nodes = %+v, %v", res, err)
	}
	r := res.Replacements[0]
	if r.NewNode == gone {
		t.Fatal("rebuilt onto the avoided node")
	}
	held := 0
	for _, ref := range seg.Shards {
		if ref.Node == r.NewNode {
			held++
		}
	}
	if held != 1 {
		t.Fatalf("the new node held %d shards of the segment before, want exactly 1 (every healthy node holds one)", held)
	}
}

// With no healthy node at all there is nowhere to go, and nothing is fetched.
func TestRebuildNeedsRoom(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2)
	seg := write(t, s, randomData(23, testSeg))[0]
	var ids []string
	for _, ref := range seg.Shards {
		ids = append(ids, ref.Node)
	}
	_, fn := avoidSet(ids...)
	gets := func() (n int) {
		for _, f := range c.faulty {
			n += f.Calls(blobstore.OpGet)
		}
		return n
	}
	before := gets()
	res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{0}, Avoid: fn})
	if !errors.Is(err, blobstore.ErrNotEnoughNodes) || len(res.Replacements) != 0 {
		t.Fatalf("rebuild with no healthy node = %+v, %v; want ErrNotEnoughNodes", res, err)
	}
	if gets() != before {
		t.Fatal("shards were fetched for a rebuild that had nowhere to go")
	}
}

func TestRebuildUnreadable(t *testing.T) {
	c := newCluster(t, 8)
	s := newStore(t, c, 4, 2)
	seg := write(t, s, randomData(24, testSeg))[0]
	// Shard 0 is lost; three of the other five cannot be read.
	for _, r := range seg.Shards[1:4] {
		c.faulty[c.byNode(r.Node)].Down()
	}
	c.hide(c.byNode(seg.Shards[0].Node))
	_, fn := avoidSet(seg.Shards[0].Node)
	var reported atomic.Int32
	res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{0}, Avoid: fn,
		OnShardError: func(*metastorepb.ShardRef, error) { reported.Add(1) }})
	if !errors.Is(err, blobstore.ErrSegmentUnreadable) || len(res.Replacements) != 0 {
		t.Fatalf("rebuild from 2 good shards of 4+2 = %+v, %v; want ErrSegmentUnreadable", res, err)
	}
	if reported.Load() != 3 {
		t.Fatalf("%d unreadable shards reported, want 3", reported.Load())
	}
}

func TestRebuildPutFailsOverToSpare(t *testing.T) {
	c := newCluster(t, 9)
	s := newStore(t, c, 4, 2)
	seg := write(t, s, randomData(25, testSeg))[0]
	// The first Put, wherever it goes, fails.
	var failed atomic.Bool
	for _, f := range c.faulty {
		f.Inject(blobstore.Fault{Op: blobstore.OpPut, Match: func(blobstore.ShardID) bool { return failed.CompareAndSwap(false, true) },
			Err: fmt.Errorf("disk full")})
	}
	avoid, fn := avoidSet(seg.Shards[5].Node)
	res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{5}, Avoid: fn})
	if err != nil || len(res.Replacements) != 1 {
		t.Fatalf("rebuild with a failing first target = %+v, %v", res, err)
	}
	if res.BytesWritten != 2*int64(seg.ShardSize) {
		t.Fatalf("wrote %d bytes, want two attempts of %d", res.BytesWritten, seg.ShardSize)
	}
	checkDistinct(t, apply(seg, res.Replacements), avoid)
}

func TestRebuildPrefersUnusedZones(t *testing.T) {
	// Six nodes in three zones; a 2+1 segment spans the three zones. When
	// a node of the segment is lost, its shard goes to the node left in the
	// zone the segment no longer uses.
	c := newCluster(t, 6)
	zone := func(id string) string {
		i, _ := strconv.Atoi(id[len("node-"):])
		return "z" + strconv.Itoa(i%3)
	}
	nodes := func() []blobstore.Node {
		var out []blobstore.Node
		for _, nd := range c.nodes() {
			nd.Info.Zone = zone(nd.Info.ID)
			out = append(out, nd)
		}
		return out
	}
	s, err := blobstore.New(blobstore.Config{SegmentSize: testSeg, K: 2, M: 1, SmallBlobThreshold: 1}, nodes)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		seg := write(t, s, randomData(uint64(30+i), testSeg))[0]
		lost := seg.Shards[0].Node
		_, fn := avoidSet(lost)
		res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{0}, Avoid: fn})
		if err != nil || len(res.Replacements) != 1 {
			t.Fatal(res, err)
		}
		used := map[string]bool{}
		for _, r := range seg.Shards[1:] {
			used[zone(r.Node)] = true
		}
		if z := zone(res.Replacements[0].NewNode); used[z] || z != zone(lost) {
			t.Fatalf("shard lost in zone %s rebuilt in zone %s; the segment keeps zones %v", zone(lost), z, used)
		}
	}
}

func BenchmarkRebuild(b *testing.B) {
	// 4+2 over 8 gRPC servers on loopback, each on a LocalStore (fsync
	// included), default 8 MiB segments. For lost shards the rate is of
	// segment bytes brought back to full redundancy (k shards read, the lost
	// ones reconstructed and written); for a move, of shard bytes copied off
	// a draining node.
	c := newRemoteCluster(b, 8)
	var lost atomic.Pointer[map[string]bool]
	lost.Store(&map[string]bool{})
	nodes := func() []blobstore.Node {
		var out []blobstore.Node
		for _, nd := range c.list() {
			if !(*lost.Load())[nd.Info.ID] {
				out = append(out, nd)
			}
		}
		return out
	}
	s, err := blobstore.New(blobstore.Config{K: 4, M: 2}, nodes)
	if err != nil {
		b.Fatal(err)
	}
	const size = 32 << 20
	segs, _, err := s.Write(bg, bytes.NewReader(randomData(26, size)), nil)
	if err != nil {
		b.Fatal(err)
	}
	undo := func(seg *metastorepb.Segment, reps []blobstore.Replacement) {
		b.StopTimer()
		for _, rep := range reps {
			_ = c.nodes[nodeIndex(c, rep.NewNode)].remote.Delete(bg, blobstore.ShardID{Segment: seg.Id, Index: rep.Index})
		}
		b.StartTimer()
	}
	for _, n := range []int{1, 2} {
		b.Run(fmt.Sprintf("%d-lost", n), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				for _, seg := range segs {
					idx := make([]uint32, n)
					gone := map[string]bool{}
					for i := range n {
						idx[i] = uint32(i)
						gone[seg.Shards[i].Node] = true
					}
					lost.Store(&gone)
					res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: idx, Avoid: func(id string) bool { return gone[id] }})
					if err != nil || len(res.Replacements) != n || res.Replacements[0].Moved {
						b.Fatal(res, err)
					}
					undo(seg, res.Replacements)
				}
			}
			lost.Store(&map[string]bool{})
		})
	}
	b.Run("move", func(b *testing.B) {
		b.SetBytes(int64(len(segs)) * int64(segs[0].ShardSize))
		for b.Loop() {
			for _, seg := range segs {
				from := seg.Shards[0].Node
				res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{0}, Avoid: func(id string) bool { return id == from }})
				if err != nil || len(res.Replacements) != 1 || !res.Replacements[0].Moved {
					b.Fatal(res, err)
				}
				undo(seg, res.Replacements)
			}
		}
	})
}

func nodeIndex(c *remoteCluster, id string) int {
	for i, n := range c.nodes {
		if n.remote.NodeID() == id {
			return i
		}
	}
	panic("no node " + id)
}
