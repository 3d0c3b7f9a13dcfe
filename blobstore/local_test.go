package blobstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/blake3"

	"github.com/strata-registry/strata/blobstore"
)

var bg = context.Background()

func putShard(t *testing.T, s blobstore.ShardStore, id blobstore.ShardID, data []byte) {
	t.Helper()
	if err := s.Put(bg, id, data, blake3.Sum256(data)); err != nil {
		t.Fatal(err)
	}
}

func TestLocalDetectsCorruptionOnDisk(t *testing.T) {
	data := bytes.Repeat([]byte("strata"), 1000)
	for _, tc := range []struct {
		name        string
		damage      func(b []byte) []byte
		payloadOnly bool
	}{
		{"payload byte", func(b []byte) []byte { b[len(b)-100] ^= 1; return b }, true},
		{"header sum", func(b []byte) []byte { b[30] ^= 1; return b }, false},
		{"header index", func(b []byte) []byte { b[8] ^= 1; return b }, false},
		{"magic", func(b []byte) []byte { b[0] = 'X'; return b }, false},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, false},
		{"extended", func(b []byte) []byte { return append(b, 0) }, false},
		{"header only", func(b []byte) []byte { return b[:64] }, false},
		{"short header", func(b []byte) []byte { return b[:10] }, false},
		{"empty", func(b []byte) []byte { return nil }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openLocal(t)
			id := blobstore.ShardID{Segment: "c0ffee", Index: 2}
			putShard(t, s, id, data)
			path := s.ShardPath(id)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.damage(b), 0o644); err != nil {
				t.Fatal(err)
			}
			// Verify (the scrubber's check) catches every kind of damage.
			if _, err := s.Verify(bg, id); !errors.Is(err, blobstore.ErrShardCorrupt) {
				t.Fatalf("Verify of a damaged shard = %v, want ErrShardCorrupt", err)
			}
			// Get checks the header and the length, not the payload's hash:
			// a damaged payload is returned as it is, for the reader's end to
			// end check against the layout (TestReadDetectsFlippedPayload).
			got, err := s.Get(bg, id)
			if tc.payloadOnly {
				if err != nil || len(got) != len(data) || bytes.Equal(got, data) {
					t.Fatalf("Get of a shard with a flipped payload byte = %d bytes, %v; want the damaged payload", len(got), err)
				}
			} else if !errors.Is(err, blobstore.ErrShardCorrupt) {
				t.Fatalf("Get of a damaged shard = %v, want ErrShardCorrupt", err)
			}
			// A damaged shard is still listed, so that a scrubber finds it.
			infos, err := s.List(bg, "", 0)
			if err != nil || len(infos) != 1 || infos[0].ID != id {
				t.Fatalf("List = %v, %v; want the damaged shard", infos, err)
			}
		})
	}
}

func TestLocalLayout(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.OpenLocal("n1", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := blobstore.ShardID{Segment: "ab12cd", Index: 10}
	putShard(t, s, id, []byte("hello"))
	want := filepath.Join(dir, "shards", "ab", "ab12cd.10")
	if s.ShardPath(id) != want {
		t.Fatalf("ShardPath = %s, want %s", s.ShardPath(id), want)
	}
	fi, err := os.Stat(want)
	if err != nil || fi.Size() != 64+5 {
		t.Fatalf("shard file: %v, %v", fi, err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "staging")); len(entries) != 0 {
		t.Fatalf("staging not empty after Put: %v", entries)
	}
}

func TestLocalReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.OpenLocal("n1", dir)
	if err != nil {
		t.Fatal(err)
	}
	putShard(t, s, blobstore.ShardID{Segment: "aa01", Index: 0}, make([]byte, 1000))
	putShard(t, s, blobstore.ShardID{Segment: "bb02", Index: 1}, make([]byte, 500))
	u, _ := s.Usage(bg)

	if _, err := blobstore.OpenLocal("n1", dir); !errors.Is(err, blobstore.ErrStoreLocked) {
		t.Fatalf("second OpenLocal of an open dir = %v, want ErrStoreLocked", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(bg, blobstore.ShardID{Segment: "aa01", Index: 0}); !errors.Is(err, blobstore.ErrClosed) {
		t.Fatalf("Get after Close = %v, want ErrClosed", err)
	}
	if _, err := blobstore.OpenLocal("n2", dir); !errors.Is(err, blobstore.ErrNodeMismatch) {
		t.Fatalf("OpenLocal under another node id = %v, want ErrNodeMismatch", err)
	}

	// A crash left garbage in staging: reopening clears it and recounts.
	junk := filepath.Join(dir, "staging", "aa01.0.12345")
	if err := os.WriteFile(junk, []byte("half a shard"), 0o644); err != nil {
		t.Fatal(err)
	}
	s2, err := blobstore.OpenLocal("n1", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := os.Stat(junk); !os.IsNotExist(err) {
		t.Fatalf("staging file survived reopen: %v", err)
	}
	u2, _ := s2.Usage(bg)
	if u2.Shards != 2 || u2.Used != u.Used || u.Used != 2*64+1500 {
		t.Fatalf("Usage after reopen = %+v, before %+v", u2, u)
	}
	if _, err := s2.Get(bg, blobstore.ShardID{Segment: "bb02", Index: 1}); err != nil {
		t.Fatal(err)
	}
}

func TestLocalListSkipsForeignFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.OpenLocal("n1", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	putShard(t, s, blobstore.ShardID{Segment: "ab01", Index: 0}, []byte("x"))
	for _, name := range []string{"ab/notashard", "ab/ab01.x", "ab/cd01.0", "zz/zz.01"} {
		p := filepath.Join(dir, "shards", name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("junk"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	infos, err := s.List(bg, "", 0)
	if err != nil || len(infos) != 1 || infos[0].ID.String() != "ab01.0" {
		t.Fatalf("List = %v, %v; want only ab01.0", infos, err)
	}
}

func TestParseShardID(t *testing.T) {
	for _, s := range []string{"ab.0", "0123456789abcdef.255", "a_b-C.4294967295"} {
		id, err := blobstore.ParseShardID(s)
		if err != nil || id.String() != s {
			t.Errorf("ParseShardID(%q) = %v, %v", s, id, err)
		}
	}
	for _, s := range []string{"", "ab", "ab.", "ab.-1", "ab.01", "ab.4294967296", "a.1", ".1", "a/b.1", "ab.1x"} {
		if _, err := blobstore.ParseShardID(s); !errors.Is(err, blobstore.ErrInvalidShardID) {
			t.Errorf("ParseShardID(%q) = %v, want ErrInvalidShardID", s, err)
		}
	}
}

func sum(s string) [32]byte { return blake3.Sum256([]byte(s)) }

// Large shards are written with direct I/O, padded to whole blocks and cut
// back: whatever the size, the file is exactly the header and the payload,
// and reads and Verify see the bytes put.
func TestLocalLargeShardsExactSize(t *testing.T) {
	s := openLocal(t)
	for i, n := range []int{64<<10 - 1, 64 << 10, 16*4096 - 64, 16*4096 - 63, 1<<20 + 13, 3 << 20} {
		id := blobstore.ShardID{Segment: fmt.Sprintf("5eed%02d", i), Index: uint32(i)}
		data := randomData(uint64(i), n)
		putShard(t, s, id, data)
		fi, err := os.Stat(s.ShardPath(id))
		if err != nil || fi.Size() != int64(64+n) {
			t.Fatalf("%d bytes: shard file %v, %v; want %d bytes", n, fi, err, 64+n)
		}
		got, err := s.Get(bg, id)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: Get = %d bytes, %v", n, len(got), err)
		}
		if info, err := s.Verify(bg, id); err != nil || info.Size != int64(n) {
			t.Fatalf("%d bytes: Verify = %+v, %v", n, info, err)
		}
	}
	if u, err := s.Usage(bg); err != nil || u.Shards != 6 {
		t.Fatalf("Usage = %+v, %v", u, err)
	}
}
