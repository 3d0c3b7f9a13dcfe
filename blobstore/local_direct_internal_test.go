package blobstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/zeebo/blake3"
)

// Large shards are read with direct I/O, whole, into aligned buffers: the
// payload comes back exact for every size around the block boundaries, a
// damaged file is refused as with reads through the page cache, and small
// shards are left to those.
func TestReadDirect(t *testing.T) {
	ctx := context.Background()
	s, err := OpenLocal("n1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put := func(id ShardID, data []byte) {
		t.Helper()
		if err := s.Put(ctx, id, data, blake3.Sum256(data)); err != nil {
			t.Fatal(err)
		}
	}
	// direct reports whether a read of id takes the direct path.
	direct := func(id ShardID) bool {
		t.Helper()
		f, err := os.Open(s.ShardPath(id))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		return s.useDirect(f, fi.Size())
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i, n := range []int{directMin, directMin + 1, 32*4096 - shardHeaderSize, 32*4096 - shardHeaderSize + 1, 1<<20 + 13, 2 << 20} {
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		id := ShardID{Segment: "d1ec7", Index: uint32(i)}
		put(id, data)
		if !direct(id) {
			if s.noDirect.Load() {
				t.Skip("the test directory's filesystem refuses direct I/O")
			}
			t.Fatalf("%d bytes: not read with direct I/O", n)
		}
		if got, err := s.Get(ctx, id); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: Get = %d bytes, %v", n, len(got), err)
		}
		pooled, release, err := s.GetPooled(ctx, id)
		if err != nil || !bytes.Equal(pooled, data) {
			t.Fatalf("%d bytes: GetPooled = %d bytes, %v", n, len(pooled), err)
		}
		release()
	}

	// A store whose filesystem refused direct I/O (tmpfs before Linux 6.6)
	// reads large shards through the page cache, the same bytes.
	big := ShardID{Segment: "d1ec7", Index: 5}
	want, err := s.Get(ctx, big)
	if err != nil {
		t.Fatal(err)
	}
	s.noDirect.Store(true)
	if direct(big) {
		t.Fatal("a store without direct I/O read with it")
	}
	if got, err := s.Get(ctx, big); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Get without direct I/O = %d bytes, %v", len(got), err)
	}
	if got, release, err := s.GetPooled(ctx, big); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("GetPooled without direct I/O = %d bytes, %v", len(got), err)
	} else {
		release()
	}
	s.noDirect.Store(false)

	small := ShardID{Segment: "5a11", Index: 0}
	put(small, make([]byte, directMin-1))
	if direct(small) {
		t.Fatal("a small shard is read with direct I/O; want it left to the page cache")
	}
	if _, err := s.Get(ctx, ShardID{Segment: "ab5e", Index: 0}); !errors.Is(err, ErrShardNotFound) {
		t.Fatalf("Get of a missing shard = %v", err)
	}

	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }},
		{"truncated to a block", func(b []byte) []byte { return b[:len(b)/4096*4096] }},
		{"extended", func(b []byte) []byte { return append(b, 0) }},
		{"header sum", func(b []byte) []byte { b[30] ^= 1; return b }},
		{"header index", func(b []byte) []byte { b[8] ^= 1; return b }},
	} {
		id := ShardID{Segment: "bad" + tc.name[:1], Index: 3}
		put(id, make([]byte, 300<<10+7))
		b, err := os.ReadFile(s.ShardPath(id))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s.ShardPath(id), tc.damage(b), 0o644); err != nil {
			t.Fatal(err)
		}
		if !direct(id) {
			t.Fatalf("%s: the damaged shard is not read with direct I/O", tc.name)
		}
		if _, err := s.Get(ctx, id); !errors.Is(err, ErrShardCorrupt) {
			t.Fatalf("%s: Get = %v; want ErrShardCorrupt", tc.name, err)
		}
		if _, _, err := s.GetPooled(ctx, id); !errors.Is(err, ErrShardCorrupt) {
			t.Fatalf("%s: GetPooled = %v; want ErrShardCorrupt", tc.name, err)
		}
	}
}
