package blobstore_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/blake3"
	"google.golang.org/protobuf/proto"

	"golang.org/x/sync/errgroup"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

func newSealer(t testing.TB) *blobstore.AESGCMSealer {
	t.Helper()
	s, err := blobstore.NewAESGCMSealer(keys.NewDataKey())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeSealed(t *testing.T, s *blobstore.Store, sl blobstore.Sealer, data []byte, offset int64) []*metastorepb.Segment {
	t.Helper()
	h := sha256.New()
	segs, n, err := s.WriteWith(bg, bytes.NewReader(data), h, blobstore.WriteOptions{Sealer: sl, Offset: offset})
	if err != nil {
		t.Fatalf("WriteWith of %d bytes: %v", len(data), err)
	}
	if n != int64(len(data)) {
		t.Fatalf("WriteWith read %d bytes, want %d", n, len(data))
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("the hash did not see the plaintext")
	}
	return segs
}

// readConcurrently runs n readers at once, fn(i) for each, and fails the
// test with the first error one returns.
func readConcurrently(t *testing.T, n int, fn func(i int) error) {
	t.Helper()
	var g errgroup.Group
	for i := range n {
		g.Go(func() error { return fn(i) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// readsAs returns a reader for readConcurrently that reads [off, off+n) of
// segs and checks it against want.
func readsAs(s *blobstore.Store, sl blobstore.Sealer, segs []*metastorepb.Segment, off, n int64, want []byte) func(int) error {
	return func(int) error {
		got, err := readSealed(s, sl, segs, off, n)
		if err == nil && !bytes.Equal(got, want) {
			err = fmt.Errorf("[%d, +%d): wrong bytes", off, n)
		}
		return err
	}
}

func readSealed(s *blobstore.Store, sl blobstore.Sealer, segs []*metastorepb.Segment, off, n int64) ([]byte, error) {
	var out bytes.Buffer
	err := s.ReadRangeWith(bg, &out, segs, off, n, blobstore.ReadOptions{Sealer: sl})
	return out.Bytes(), err
}

func blobSize(segs []*metastorepb.Segment) int64 {
	var n int64
	for _, seg := range segs {
		n += int64(seg.Length)
	}
	return n
}

var sealedGeometries = []struct{ k, m, nodes int }{{1, 0, 1}, {2, 1, 3}, {4, 2, 6}}

func TestSealedRoundTrip(t *testing.T) {
	for _, g := range sealedGeometries {
		t.Run(fmt.Sprintf("%d+%d", g.k, g.m), func(t *testing.T) {
			c := newCluster(t, g.nodes)
			s := newStore(t, c, g.k, g.m)
			sl := newSealer(t)
			for i, size := range []int{1, 4<<10 - 1, 4 << 10, testSeg - 1, testSeg, testSeg + 1, 3*testSeg + 17} {
				data := randomData(uint64(100+i), size)
				segs := writeSealed(t, s, sl, data, 0)
				for j, seg := range segs {
					k := uint64(seg.K)
					if seg.Format != blobstore.FormatAESGCM || seg.KeyId != sl.KeyID() ||
						seg.ShardSize != (seg.Length+16+k-1)/k || len(seg.Shards) != int(seg.K+seg.M) {
						t.Fatalf("size %d segment %d: %+v", size, j, seg)
					}
				}
				got, err := readSealed(s, sl, segs, 0, int64(size))
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("size %d: read back differs (%v)", size, err)
				}
				// Ranges inside and across segments.
				r := rand.New(rand.NewPCG(uint64(size), 1))
				for range 5 {
					off := r.Int64N(int64(size))
					n := r.Int64N(int64(size)-off) + 1
					got, err := readSealed(s, sl, segs, off, n)
					if err != nil || !bytes.Equal(got, data[off:off+n]) {
						t.Fatalf("size %d range [%d,+%d): %v", size, off, n, err)
					}
				}
				// Without the key nothing is read.
				if _, err := readSealed(s, nil, segs, 0, int64(size)); !errors.Is(err, blobstore.ErrKeyRequired) {
					t.Fatalf("size %d read without a key: %v", size, err)
				}
			}
		})
	}
}

// An upload written by several requests (as PATCHes are), each with the
// offset it starts at, reads back as one blob.
func TestSealedChunkedUpload(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2)
	sl := newSealer(t)
	data := randomData(7, 5*testSeg+1234)
	var segs []*metastorepb.Segment
	for _, cut := range [][2]int{{0, 1000}, {1000, testSeg + 5}, {testSeg + 5, 4 * testSeg}, {4 * testSeg, len(data)}} {
		segs = append(segs, writeSealed(t, s, sl, data[cut[0]:cut[1]], int64(cut[0]))...)
	}
	got, err := readSealed(s, sl, segs, 0, int64(len(data)))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("chunked upload: %v", err)
	}
	// A request written with the wrong offset does not read back.
	bad := writeSealed(t, s, sl, data[1000:2000], 0)
	if _, err := readSealed(s, sl, append(append([]*metastorepb.Segment(nil), segs[:1]...), bad...), 0, 2000); !errors.Is(err, blobstore.ErrSegmentAuth) {
		t.Fatalf("segment sealed at the wrong offset: %v", err)
	}
}

// Config.Sealer makes plain Write and ReadRange seal.
func TestConfigSealer(t *testing.T) {
	c := newCluster(t, 1)
	sl := newSealer(t)
	s := newStore(t, c, 1, 0, func(cfg *blobstore.Config) { cfg.Sealer = sl })
	data := randomData(9, 2*testSeg+3)
	segs := write(t, s, data)
	if segs[0].Format != blobstore.FormatAESGCM {
		t.Fatalf("format %d", segs[0].Format)
	}
	if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	plain := newStore(t, c, 1, 0)
	if _, err := readSealed(plain, nil, segs, 0, int64(len(data))); !errors.Is(err, blobstore.ErrKeyRequired) {
		t.Fatalf("plain store reading sealed segments: %v", err)
	}
	// A sealer never opens plaintext segments: that would be a downgrade.
	psegs := write(t, plain, data)
	if _, err := readSealed(s, nil, psegs, 0, int64(len(data))); !errors.Is(err, blobstore.ErrInvalidSegment) {
		t.Fatalf("sealer opening a plaintext segment: %v", err)
	}
}

// walkFiles calls f with the contents of every file under the nodes' data
// directories.
func walkFiles(t *testing.T, c *cluster, f func(path string, b []byte)) int {
	t.Helper()
	n := 0
	for _, l := range c.local {
		err := filepath.WalkDir(l.Dir(), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			n++
			f(path, b)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// Data carrying a marker, written sealed, leaves the marker in no file on
// any node; written plain, it is found (so the search works).
func TestSealedMarkerOnDisk(t *testing.T) {
	marker := []byte("STRATA-MARKER-6a1f0c9e")
	var data []byte
	for len(data) < 3*testSeg+999 {
		data = append(data, marker...)
		data = append(data, randomData(uint64(len(data)), 100)...)
	}
	small := bytes.Repeat(marker, 10) // a small blob: replicas, not erasure coded
	for _, g := range []struct{ k, m, nodes int }{{1, 0, 1}, {4, 2, 6}} {
		t.Run(fmt.Sprintf("%d+%d", g.k, g.m), func(t *testing.T) {
			c := newCluster(t, g.nodes)
			s := newStore(t, c, g.k, g.m)
			sl := newSealer(t)
			writeSealed(t, s, sl, data, 0)
			writeSealed(t, s, sl, small, 0)
			files := walkFiles(t, c, func(path string, b []byte) {
				if bytes.Contains(b, marker) {
					t.Errorf("marker found in %s", path)
				}
			})
			if want := int(g.k+g.m) * 4; files < want {
				t.Fatalf("only %d files searched, want at least %d", files, want)
			}

			write(t, s, data)
			found := 0
			walkFiles(t, c, func(_ string, b []byte) {
				if bytes.Contains(b, marker) {
					found++
				}
			})
			if found == 0 {
				t.Fatal("control: the marker of a plaintext write was not found")
			}
		})
	}
}

// shardOf returns the local store holding shard ref of seg, and its id.
func shardOf(c *cluster, seg *metastorepb.Segment, ref *metastorepb.ShardRef) (*blobstore.LocalStore, blobstore.ShardID) {
	return c.local[c.byNode(ref.Node)], blobstore.ShardID{Segment: seg.Id, Index: ref.Index}
}

// forgeShard replaces a shard with data, as an attacker with the disk and
// the metadata could: the file gets a valid header and the layout a matching
// BLAKE3, so only the seal is left to notice.
func forgeShard(t *testing.T, c *cluster, seg *metastorepb.Segment, ref *metastorepb.ShardRef, data []byte) {
	t.Helper()
	l, id := shardOf(c, seg, ref)
	sum := blake3.Sum256(data)
	if err := l.Put(bg, id, data, sum); err != nil {
		t.Fatal(err)
	}
	ref.Blake3 = sum[:]
}

func getShard(t *testing.T, c *cluster, seg *metastorepb.Segment, ref *metastorepb.ShardRef) []byte {
	t.Helper()
	l, id := shardOf(c, seg, ref)
	b, err := l.Get(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func cloneSegs(segs []*metastorepb.Segment) []*metastorepb.Segment {
	out := make([]*metastorepb.Segment, len(segs))
	for i, seg := range segs {
		out[i] = proto.Clone(seg).(*metastorepb.Segment)
	}
	return out
}

func TestSealedFlippedByte(t *testing.T) {
	for _, g := range []struct{ k, m, nodes int }{{1, 0, 1}, {4, 2, 6}} {
		t.Run(fmt.Sprintf("%d+%d", g.k, g.m), func(t *testing.T) {
			c := newCluster(t, g.nodes)
			var bad []string
			s := newStore(t, c, g.k, g.m, func(cfg *blobstore.Config) {
				cfg.OnShardError = func(seg string, ref *metastorepb.ShardRef, err error) {
					bad = append(bad, fmt.Sprintf("%s.%d", seg, ref.Index))
				}
			})
			sl := newSealer(t)
			data := randomData(11, 3*testSeg)
			segs := writeSealed(t, s, sl, data, 0)

			// One flipped byte in a data shard file on disk: the shard's
			// checksum catches it; with parity the segment is rebuilt and
			// the shard reported, without parity the read is refused.
			seg := segs[1]
			l, id := shardOf(c, seg, seg.Shards[0])
			path := l.ShardPath(id)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)-7] ^= 0x01
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := readSealed(s, sl, segs, 0, int64(len(data)))
			if g.m > 0 {
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("rebuild from parity: %v", err)
				}
				if len(bad) != 1 || bad[0] != id.String() {
					t.Fatalf("reported %v, want [%s]", bad, id)
				}
			} else {
				if !errors.Is(err, blobstore.ErrSegmentUnreadable) || !errors.Is(err, blobstore.ErrShardCorrupt) {
					t.Fatalf("flipped byte without parity: %v", err)
				}
				if !bytes.Equal(got, data[:testSeg]) {
					t.Fatalf("served %d bytes, want only the %d of the good segment before it", len(got), testSeg)
				}
			}

			b[len(b)-7] ^= 0x01 // put it back
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}

			// A shard rewritten with a valid file header but not the
			// layout's checksum: the storage node serves it, the sealed
			// read (which leaves per-shard checks to GCM) fails to
			// authenticate, and the segment is read again with every shard
			// verified: with parity the bad shard is reported and the
			// segment rebuilt; without, refused as corrupt.
			bad = nil
			orig := getShard(t, c, segs[0], segs[0].Shards[0])
			rot := bytes.Clone(orig)
			rot[3] ^= 0x40
			stale := cloneSegs(segs)[0] // the layout keeps the old sum
			forgeShard(t, c, stale, stale.Shards[0], rot)
			got, err = readSealed(s, sl, segs, 0, int64(len(data)))
			rid := blobstore.ShardID{Segment: segs[0].Id, Index: segs[0].Shards[0].Index}
			if g.m > 0 {
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("unverified shard that does not match the layout: %v", err)
				}
				if len(bad) != 1 || bad[0] != rid.String() {
					t.Fatalf("reported %v, want [%s]", bad, rid)
				}
			} else if !errors.Is(err, blobstore.ErrShardCorrupt) || len(got) != 0 {
				t.Fatalf("without parity: %v, %d bytes served", err, len(got))
			}
			forgeShard(t, c, stale, stale.Shards[0], orig)

			// The attacker also recomputed the checksums (the shard file's
			// and the layout's): GCM still refuses, and no byte of the
			// segment is served.
			forged := cloneSegs(segs)
			shard := getShard(t, c, segs[2], segs[2].Shards[0])
			shard[len(shard)/2] ^= 0x80
			forgeShard(t, c, forged[2], forged[2].Shards[0], shard)
			got, err = readSealed(s, sl, forged, 0, int64(len(data)))
			if !errors.Is(err, blobstore.ErrSegmentAuth) {
				t.Fatalf("forged shard with good checksums: %v", err)
			}
			if len(got) != 2*testSeg || !bytes.Equal(got, data[:len(got)]) {
				t.Fatalf("served %d bytes of a segment that failed authentication", len(got))
			}
		})
	}
}

// Whatever is moved around, under one key or two, does not open.
func TestSealedSwapsRefused(t *testing.T) {
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2)
	keyA, keyB := newSealer(t), newSealer(t)
	size := int64(3 * testSeg)
	// Every case gets blobs of its own: forging rewrites shard files.
	// a and a2 are two blobs under key A, b one under key B.
	type blobs struct{ a, a2, b []*metastorepb.Segment }
	for _, tc := range []struct {
		name string
		segs func(x blobs) []*metastorepb.Segment
		want error
	}{
		{"shards of another blob's segment, other key", func(x blobs) []*metastorepb.Segment {
			for i, ref := range x.a[0].Shards {
				forgeShard(t, c, x.a[0], ref, getShard(t, c, x.b[0], x.b[0].Shards[i]))
			}
			return x.a
		}, blobstore.ErrSegmentAuth},
		{"shards of another blob's segment, same key", func(x blobs) []*metastorepb.Segment {
			for i, ref := range x.a[0].Shards {
				forgeShard(t, c, x.a[0], ref, getShard(t, c, x.a2[0], x.a2[0].Shards[i]))
			}
			return x.a
		}, blobstore.ErrSegmentAuth},
		{"shards of the next segment", func(x blobs) []*metastorepb.Segment {
			for i, ref := range x.a[0].Shards {
				forgeShard(t, c, x.a[0], ref, getShard(t, c, x.a[1], x.a[1].Shards[i]))
			}
			return x.a
		}, blobstore.ErrSegmentAuth},
		{"one shard of another segment", func(x blobs) []*metastorepb.Segment {
			forgeShard(t, c, x.a[1], x.a[1].Shards[2], getShard(t, c, x.a[2], x.a[2].Shards[2]))
			return x.a
		}, blobstore.ErrSegmentAuth},
		{"segments reordered", func(x blobs) []*metastorepb.Segment {
			x.a[0], x.a[1] = x.a[1], x.a[0]
			return x.a
		}, blobstore.ErrSegmentAuth},
		{"segment of another blob under another key", func(x blobs) []*metastorepb.Segment {
			x.a[1] = x.b[1]
			return x.a
		}, blobstore.ErrWrongKey},
		{"segment of another key with a forged key id", func(x blobs) []*metastorepb.Segment {
			x.a[1] = x.b[1]
			x.a[1].KeyId = keyA.KeyID()
			return x.a
		}, blobstore.ErrSegmentAuth},
		{"length cut short", func(x blobs) []*metastorepb.Segment {
			x.a[0].Length--
			return x.a
		}, blobstore.ErrSegmentAuth},
		{"marked plaintext", func(x blobs) []*metastorepb.Segment {
			x.a[2].Format, x.a[2].KeyId = blobstore.FormatPlain, ""
			return x.a
		}, blobstore.ErrInvalidSegment},
		// Under one key at the same position, another blob's segment is a
		// valid segment: the layout is trusted metadata (Raft), and such a
		// splice is caught by the digest.
		{"segment of another blob, same key, same position", func(x blobs) []*metastorepb.Segment {
			x.a[1] = x.a2[1]
			return x.a
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := blobs{
				a:  writeSealed(t, s, keyA, randomData(21, int(size)), 0),
				a2: writeSealed(t, s, keyA, randomData(22, int(size)), 0),
				b:  writeSealed(t, s, keyB, randomData(23, int(size)), 0),
			}
			segs := tc.segs(x)
			got, err := readSealed(s, keyA, segs, 0, min(size, blobSize(segs)))
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if int64(len(got)) >= size {
				t.Fatalf("served all %d bytes", len(got))
			}
		})
	}
}

func TestSealedWrongKey(t *testing.T) {
	c := newCluster(t, 3)
	s := newStore(t, c, 2, 1)
	right, wrong := newSealer(t), newSealer(t)
	data := randomData(31, testSeg+100)
	segs := writeSealed(t, s, right, data, 0)
	got, err := readSealed(s, wrong, segs, 0, int64(len(data)))
	if !errors.Is(err, blobstore.ErrWrongKey) || len(got) != 0 {
		t.Fatalf("wrong key: %v (%d bytes)", err, len(got))
	}
	// Even told that the wrong key is the right one, GCM refuses.
	forged := cloneSegs(segs)
	for _, seg := range forged {
		seg.KeyId = wrong.KeyID()
	}
	if got, err := readSealed(s, wrong, forged, 0, int64(len(data))); !errors.Is(err, blobstore.ErrSegmentAuth) || len(got) != 0 {
		t.Fatalf("wrong key with forged key ids: %v (%d bytes)", err, len(got))
	}
	// A data key that went through a wrap and unwrap is the same key.
	kr, err := keys.OpenKeyring(filepath.Join(t.TempDir(), "keyring.json"), true)
	if err != nil {
		t.Fatal(err)
	}
	dk := keys.NewDataKey()
	wk, err := keys.Wrap(bg, kr, keys.DefaultKeyName, dk)
	if err != nil {
		t.Fatal(err)
	}
	sl, _ := blobstore.NewAESGCMSealer(dk)
	segs = writeSealed(t, s, sl, data, 0)
	dk2, err := keys.Unwrap(bg, kr, wk)
	if err != nil {
		t.Fatal(err)
	}
	sl2, _ := blobstore.NewAESGCMSealer(dk2)
	if got, err := readSealed(s, sl2, segs, 0, int64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("through wrap and unwrap: %v", err)
	}
}
