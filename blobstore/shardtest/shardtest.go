// Package shardtest is the conformance suite of blobstore.ShardStore. Every
// implementation (the local disk store, the gRPC client of a storage node,
// fault-injecting wrappers with no faults) runs the same tests:
//
//	func TestConformance(t *testing.T) {
//		shardtest.Run(t, func(t *testing.T) blobstore.ShardStore { return openMine(t) })
//	}
package shardtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/zeebo/blake3"

	"github.com/strata-registry/strata/blobstore"
)

// Option changes what Run expects of a store.
type Option func(*options)

type options struct{ trustsPutSums bool }

// TrustsPutSums is for a store that records the checksum given to Put
// without hashing the data (blobstore.LocalStore, whose callers are in its own
// process): Put with a wrong sum must then succeed, and VerifyShard must
// report the shard as corrupt. Without it, Put must refuse a wrong sum.
func TrustsPutSums() Option { return func(o *options) { o.trustsPutSums = true } }

// Run runs the suite. open must return a new, empty store for each call;
// it should register its own cleanup with t.
func Run(t *testing.T, open func(t *testing.T) blobstore.ShardStore, opts ...Option) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	testPutBadSum := func(t *testing.T, s blobstore.ShardStore) { testPutBadSum(t, s, o) }
	tests := []struct {
		name string
		fn   func(t *testing.T, s blobstore.ShardStore)
	}{
		{"NodeID", testNodeID},
		{"PutGet", testPutGet},
		{"NotFound", testNotFound},
		{"PutIdempotent", testPutIdempotent},
		{"PutReplaces", testPutReplaces},
		{"PutBadSum", testPutBadSum},
		{"PutDoesNotKeepData", testPutDoesNotKeepData},
		{"Delete", testDelete},
		{"Stat", testStat},
		{"List", testList},
		{"ListPaging", testListPaging},
		{"Usage", testUsage},
		{"InvalidID", testInvalidID},
		{"CancelledContext", testCancelledContext},
		{"Concurrent", testConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, open(t))
		})
	}
}

var ctx = context.Background()

func payload(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, s blobstore.ShardStore, id blobstore.ShardID, data []byte) {
	t.Helper()
	if err := s.Put(ctx, id, data, blake3.Sum256(data)); err != nil {
		t.Fatalf("Put(%s): %v", id, err)
	}
}

func get(t *testing.T, s blobstore.ShardStore, id blobstore.ShardID, want []byte) {
	t.Helper()
	got, err := s.Get(ctx, id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%s): %d bytes differ from the %d put", id, len(got), len(want))
	}
}

func sid(seg string, i uint32) blobstore.ShardID { return blobstore.ShardID{Segment: seg, Index: i} }

func testNodeID(t *testing.T, s blobstore.ShardStore) {
	if s.NodeID() == "" {
		t.Fatal("empty NodeID")
	}
}

func testPutGet(t *testing.T, s blobstore.ShardStore) {
	for i, n := range []int{0, 1, 63, 64, 65, 4096, 1<<20 + 3} {
		id := sid(fmt.Sprintf("seg%02d", i), uint32(i))
		data := payload(1, n)
		put(t, s, id, data)
		get(t, s, id, data)
	}
}

func testNotFound(t *testing.T, s blobstore.ShardStore) {
	put(t, s, sid("present", 0), []byte("x"))
	for _, id := range []blobstore.ShardID{sid("absent", 0), sid("present", 1), sid("presen", 0)} {
		if _, err := s.Get(ctx, id); !errors.Is(err, blobstore.ErrShardNotFound) {
			t.Errorf("Get(%s) = %v, want ErrShardNotFound", id, err)
		}
		if _, err := s.Stat(ctx, id); !errors.Is(err, blobstore.ErrShardNotFound) {
			t.Errorf("Stat(%s) = %v, want ErrShardNotFound", id, err)
		}
	}
}

func testPutIdempotent(t *testing.T, s blobstore.ShardStore) {
	id, data := sid("again", 3), payload(2, 1000)
	for range 3 {
		put(t, s, id, data)
	}
	get(t, s, id, data)
	infos, err := s.List(ctx, "", 0)
	if err != nil || len(infos) != 1 {
		t.Fatalf("List after repeated Put = %v, %v; want one shard", infos, err)
	}
}

func testPutReplaces(t *testing.T, s blobstore.ShardStore) {
	id := sid("replace", 0)
	put(t, s, id, payload(3, 100))
	data := payload(4, 200)
	put(t, s, id, data)
	get(t, s, id, data)
}

func testPutBadSum(t *testing.T, s blobstore.ShardStore, o options) {
	id, data := sid("badsum", 0), payload(5, 100)
	sum := blake3.Sum256(data)
	sum[0] ^= 1
	if o.trustsPutSums {
		if err := s.Put(ctx, id, data, sum); err != nil {
			t.Fatalf("Put with a wrong sum to a store that trusts sums: %v", err)
		}
		if _, err := blobstore.VerifyShard(ctx, s, id); !errors.Is(err, blobstore.ErrShardCorrupt) {
			t.Fatalf("VerifyShard of a shard put with a wrong sum = %v, want ErrShardCorrupt", err)
		}
		return
	}
	if err := s.Put(ctx, id, data, sum); !errors.Is(err, blobstore.ErrShardCorrupt) {
		t.Fatalf("Put with a wrong sum = %v, want ErrShardCorrupt", err)
	}
	if _, err := s.Get(ctx, id); !errors.Is(err, blobstore.ErrShardNotFound) {
		t.Fatalf("Get after a refused Put = %v, want ErrShardNotFound", err)
	}
}

func testPutDoesNotKeepData(t *testing.T, s blobstore.ShardStore) {
	id, data := sid("keep", 0), payload(6, 5000)
	orig := bytes.Clone(data)
	put(t, s, id, data)
	clear(data)
	get(t, s, id, orig)
	// Nor may the caller's changes to a returned payload affect the store.
	got, _ := s.Get(ctx, id)
	clear(got)
	get(t, s, id, orig)
}

func testDelete(t *testing.T, s blobstore.ShardStore) {
	id := sid("gone", 0)
	put(t, s, id, []byte("bye"))
	put(t, s, sid("gone", 1), []byte("stay"))
	if err := s.Delete(ctx, id); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Get(ctx, id); !errors.Is(err, blobstore.ErrShardNotFound) {
		t.Fatalf("Get after Delete = %v, want ErrShardNotFound", err)
	}
	if err := s.Delete(ctx, id); err != nil {
		t.Fatalf("Delete of a missing shard: %v", err)
	}
	get(t, s, sid("gone", 1), []byte("stay"))
}

func testStat(t *testing.T, s blobstore.ShardStore) {
	id, data := sid("stat", 7), payload(7, 12345)
	put(t, s, id, data)
	info, err := s.Stat(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != id || info.Size != int64(len(data)) || info.Sum != blake3.Sum256(data) {
		t.Fatalf("Stat = %+v, want id %s size %d and the data's sum", info, id, len(data))
	}
}

// someIDs returns shard ids over several segments and prefixes, in random order.
func someIDs(n int) []blobstore.ShardID {
	var ids []blobstore.ShardID
	for i := range n {
		ids = append(ids, sid(fmt.Sprintf("%02x%04d", (i*37)%256, i/3), uint32(i%3*5)))
	}
	rand.New(rand.NewPCG(8, 9)).Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	return ids
}

func sortedNames(ids []blobstore.ShardID) []string {
	var names []string
	for _, id := range ids {
		names = append(names, id.String())
	}
	slices.Sort(names)
	return names
}

func testList(t *testing.T, s blobstore.ShardStore) {
	if infos, err := s.List(ctx, "", 0); err != nil || len(infos) != 0 {
		t.Fatalf("List of an empty store = %v, %v", infos, err)
	}
	ids := someIDs(40)
	sizes := map[blobstore.ShardID]int{}
	for i, id := range ids {
		sizes[id] = i + 1
		put(t, s, id, payload(uint64(i), i+1))
	}
	infos, err := s.List(ctx, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, info := range infos {
		got = append(got, info.ID.String())
		if info.Size != int64(sizes[info.ID]) || info.Sum != blake3.Sum256(payload(uint64(sizes[info.ID]-1), sizes[info.ID])) {
			t.Errorf("List: %s has size %d and a sum that do not match what was put", info.ID, info.Size)
		}
	}
	if want := sortedNames(ids); !slices.Equal(got, want) {
		t.Fatalf("List = %v\nwant %v", got, want)
	}
	for _, id := range ids[:10] {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	infos, err = s.List(ctx, "", 1000)
	if err != nil || len(infos) != 30 {
		t.Fatalf("List after deleting 10 of 40 = %d shards, %v", len(infos), err)
	}
}

func testListPaging(t *testing.T, s blobstore.ShardStore) {
	ids := someIDs(57)
	for _, id := range ids {
		put(t, s, id, []byte(id.String()))
	}
	want := sortedNames(ids)
	for _, limit := range []int{1, 7, 56, 57, 100} {
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > len(ids)+1 {
				t.Fatalf("limit %d: paging does not end", limit)
			}
			infos, err := s.List(ctx, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(infos) > limit {
				t.Fatalf("limit %d: page of %d", limit, len(infos))
			}
			if len(infos) == 0 {
				break
			}
			for _, info := range infos {
				got = append(got, info.ID.String())
			}
			after = infos[len(infos)-1].ID.String()
		}
		if !slices.Equal(got, want) {
			t.Fatalf("limit %d: pages = %v\nwant %v", limit, got, want)
		}
	}
	// after need not name a shard.
	infos, err := s.List(ctx, want[10]+"x", 1)
	if err != nil || len(infos) != 1 || infos[0].ID.String() <= want[10]+"x" {
		t.Fatalf("List after a non-shard key = %v, %v", infos, err)
	}
}

func testUsage(t *testing.T, s blobstore.ShardStore) {
	u0, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u0.Capacity == 0 || u0.Free > u0.Capacity {
		t.Fatalf("Usage = %+v: want capacity > 0 and free <= capacity", u0)
	}
	put(t, s, sid("usage", 0), payload(10, 100000))
	u1, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u1.Shards != u0.Shards+1 || u1.Used < u0.Used+100000 {
		t.Fatalf("Usage after a 100000-byte Put = %+v, before %+v", u1, u0)
	}
	if err := s.Delete(ctx, sid("usage", 0)); err != nil {
		t.Fatal(err)
	}
	u2, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u2.Shards != u0.Shards || u2.Used != u0.Used {
		t.Fatalf("Usage after Delete = %+v, want back to %+v", u2, u0)
	}
}

func testInvalidID(t *testing.T, s blobstore.ShardStore) {
	for _, seg := range []string{"", "a", "../x", "a/b", "a.b", "x y"} {
		id := sid(seg, 0)
		if err := s.Put(ctx, id, []byte("x"), blake3.Sum256([]byte("x"))); !errors.Is(err, blobstore.ErrInvalidShardID) {
			t.Errorf("Put(%q) = %v, want ErrInvalidShardID", seg, err)
		}
		if _, err := s.Get(ctx, id); !errors.Is(err, blobstore.ErrInvalidShardID) {
			t.Errorf("Get(%q) = %v, want ErrInvalidShardID", seg, err)
		}
	}
}

func testCancelledContext(t *testing.T, s blobstore.ShardStore) {
	put(t, s, sid("cancel", 0), []byte("x"))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Put(cctx, sid("cancel", 1), []byte("y"), blake3.Sum256([]byte("y"))); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with a cancelled context = %v", err)
	}
	if _, err := s.Get(cctx, sid("cancel", 0)); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context = %v", err)
	}
	if _, err := s.List(cctx, "", 0); !errors.Is(err, context.Canceled) {
		t.Errorf("List with a cancelled context = %v", err)
	}
}

func testConcurrent(t *testing.T, s blobstore.ShardStore) {
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Go(func() {
			for i := range 8 {
				id := sid(fmt.Sprintf("conc%d", w), uint32(i))
				data := payload(uint64(w), 1000+i)
				if err := s.Put(ctx, id, data, blake3.Sum256(data)); err != nil {
					errs <- err
					return
				}
				got, err := s.Get(ctx, id)
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("Get(%s) = %d bytes, %v", id, len(got), err)
					return
				}
				// Racing puts of the same shard with the same content.
				same := sid("shared", uint32(i))
				if err := s.Put(ctx, same, []byte("same"), blake3.Sum256([]byte("same"))); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range 8 {
		get(t, s, sid("shared", uint32(i)), []byte("same"))
	}
}
