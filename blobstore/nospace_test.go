package blobstore_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/zeebo/blake3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

// smallFS mounts a tmpfs of size bytes for the test, or skips it (mounting
// needs root).
func smallFS(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("a small filesystem needs mount(8) as root: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// TestLocalPutNoSpace: a LocalStore on a full filesystem refuses a shard
// with ErrNoSpace (ENOSPC), keeps nothing of it (no staging file, the usage
// totals unchanged), takes shards again once space is freed, and the error
// crosses gRPC as RESOURCE_EXHAUSTED and back as ErrNoSpace.
func TestLocalPutNoSpace(t *testing.T) {
	dir := smallFS(t, 1<<20)
	s, err := blobstore.OpenLocal("full-node", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big := randomData(1, 2<<20)
	id := blobstore.ShardID{Segment: "aa00000000000000000000000000bb01", Index: 0}
	err = s.Put(bg, id, big, blake3.Sum256(big))
	if !errors.Is(err, blobstore.ErrNoSpace) {
		t.Fatalf("Put of 2 MiB on a 1 MiB filesystem: %v, want ErrNoSpace", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "staging")); len(ents) != 0 {
		t.Errorf("staging holds %d files after the refused Put", len(ents))
	}
	if u, _ := s.Usage(bg); u.Shards != 0 || u.Used != 0 {
		t.Errorf("usage after the refused Put: %+v", u)
	}
	if _, err := s.Stat(bg, id); !errors.Is(err, blobstore.ErrShardNotFound) {
		t.Errorf("Stat of the refused shard: %v", err)
	}

	// Over gRPC.
	n := serveShards(t, s)
	err = n.remote.Put(bg, id, big, blake3.Sum256(big))
	if !errors.Is(err, blobstore.ErrNoSpace) || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("remote Put: %v (code %v), want ErrNoSpace / RESOURCE_EXHAUSTED", err, status.Code(err))
	}

	// A shard that fits goes through.
	small := randomData(2, 100<<10)
	if err := n.remote.Put(bg, id, small, blake3.Sum256(small)); err != nil {
		t.Fatalf("Put of 100 KiB: %v", err)
	}
	got, err := s.Get(bg, id)
	if err != nil || string(got) != string(small) {
		t.Fatalf("Get after the Put that fitted: %v", err)
	}
}

func TestPlaceForPutsFullNodesLast(t *testing.T) {
	nodes := testNodes(8, 0, 1<<30)
	nodes[2].Full = true
	nodes[5].Free = 1 << 10 // less than a shard
	for s := range 100 {
		got, err := blobstore.PlaceFor(fmt.Sprintf("seg%d", s), nodes, 8, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		last := []string{got[6].ID, got[7].ID}
		slices.Sort(last)
		if last[0] != "node-02" || last[1] != "node-05" {
			t.Fatalf("segment %d: placed %v, want node-02 and node-05 last", s, ids(got))
		}
		// With no size to fit, a node with a little room is not full.
		got, _ = blobstore.PlaceFor(fmt.Sprintf("seg%d", s), nodes, 8, 0)
		if got[7].ID != "node-02" {
			t.Fatalf("segment %d: Full node not last without a size: %v", s, ids(got))
		}
	}
}

// TestWriteAvoidsFullNode: a node whose disk is full refuses its shard with
// ErrNoSpace; the write puts it on a spare node, reports the full node
// through OnNoSpace, and once the node source counts it full (as a
// frontend's StorageView does) it is not even tried.
func TestWriteAvoidsFullNode(t *testing.T) {
	c := newCluster(t, 7)
	full := 3
	c.faulty[full].Inject(blobstore.Fault{Op: blobstore.OpPut, Err: fmt.Errorf("%w: put: disk full", blobstore.ErrNoSpace)})
	var mu sync.Mutex
	reported := map[string]int{}
	s := newStore(t, c, 4, 2, func(cfg *blobstore.Config) {
		cfg.OnNoSpace = func(id string) {
			mu.Lock()
			reported[id]++
			mu.Unlock()
		}
	})
	fullID := c.local[full].NodeID()
	var segs []*metastorepb.Segment
	for i := range 20 {
		data := randomData(uint64(i), testSeg)
		segs = append(segs, write(t, s, data)...)
	}
	for _, seg := range segs {
		if len(seg.Shards) != 6 {
			t.Fatalf("segment %s: %d shards, want 6 (the spare takes the full node's)", seg.Id, len(seg.Shards))
		}
		for _, r := range seg.Shards {
			if r.Node == fullID {
				t.Fatalf("segment %s has a shard on the full node", seg.Id)
			}
		}
	}
	if reported[fullID] == 0 {
		t.Fatal("the full node was never reported through OnNoSpace")
	}
	tried := c.faulty[full].Calls(blobstore.OpPut)
	c.setRoom(full, 0, true)
	for i := range 20 {
		write(t, s, randomData(uint64(100+i), testSeg))
	}
	if again := c.faulty[full].Calls(blobstore.OpPut) - tried; again != 0 {
		t.Errorf("a node counted full was still sent %d shards while six others had room", again)
	}
}

// TestRebuildPrefersDoublingToAFullNode: when the only node without a
// shard of the segment is full, a rebuilt shard goes to a node that holds
// one already (as when nodes are missing) instead of being sent to the full
// node to be refused; a full node that is all there is still gets tried.
func TestRebuildPrefersDoublingToAFullNode(t *testing.T) {
	c := newCluster(t, 7)
	c.setRoom(6, 0, true) // node-6 is full: the segment goes to node-0..5
	s := newStore(t, c, 4, 2)
	seg := write(t, s, randomData(9, testSeg))[0]
	for _, r := range seg.Shards {
		if r.Node == c.local[6].NodeID() {
			t.Fatal("a shard was placed on the full node")
		}
	}
	dead := seg.Shards[0].Node
	avoid := func(id string) bool { return id == dead }
	res, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{seg.Shards[0].Index}, Avoid: avoid})
	if err != nil || len(res.Replacements) != 1 {
		t.Fatalf("Rebuild: %v, %+v", err, res)
	}
	if got := res.Replacements[0].NewNode; got == c.local[6].NodeID() || got == dead {
		t.Fatalf("rebuilt shard went to %s; want a node that holds a shard already", got)
	}
	if n := c.faulty[6].Calls(blobstore.OpPut); n != 0 {
		t.Errorf("the full node was sent %d shards", n)
	}
	// With room again, node-6 is the natural home.
	c.setRoom(6, 1<<40, false)
	res, err = s.Rebuild(bg, blobstore.RebuildRequest{Segment: seg, Indexes: []uint32{seg.Shards[0].Index}, Avoid: avoid})
	if err != nil || len(res.Replacements) != 1 || res.Replacements[0].NewNode != c.local[6].NodeID() {
		t.Fatalf("Rebuild with room on node-6: %v, %+v", err, res)
	}
}

// TestWriteLeavesAFullNodesShardForRepair: with exactly k+m nodes, one of
// them full, a write sends it nothing (its shard would be refused) and
// writes the other k+m-1 shards, which makes the write quorum; the missing
// shard is left for repair. With more than m nodes full the write fails
// with ErrWriteQuorum (a retryable 503 at the API) after trying them.
func TestWriteLeavesAFullNodesShardForRepair(t *testing.T) {
	c := newCluster(t, 6)
	c.setRoom(2, 0, true)
	s := newStore(t, c, 4, 2)
	data := randomData(5, testSeg)
	segs := write(t, s, data)
	for _, seg := range segs {
		if len(seg.Shards) != 5 {
			t.Fatalf("segment %s: %d shards, want 5 (k+m-1: the full node's left for repair)", seg.Id, len(seg.Shards))
		}
	}
	if n := c.faulty[2].Calls(blobstore.OpPut); n != 0 {
		t.Errorf("the full node was sent %d shards", n)
	}
	if got := readAll(t, s, segs, len(data)); string(got) != string(data) {
		t.Fatal("read back differs")
	}

	for _, i := range []int{0, 1, 3} {
		c.setRoom(i, 0, true)
		c.faulty[i].Inject(blobstore.Fault{Op: blobstore.OpPut, Err: fmt.Errorf("%w: disk full", blobstore.ErrNoSpace)})
	}
	c.faulty[2].Inject(blobstore.Fault{Op: blobstore.OpPut, Err: fmt.Errorf("%w: disk full", blobstore.ErrNoSpace)})
	_, _, err := s.Write(bg, bytesReader(randomData(6, testSeg)), nil)
	if !errors.Is(err, blobstore.ErrWriteQuorum) {
		t.Fatalf("write with 4 of 6 nodes full: %v, want ErrWriteQuorum", err)
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
