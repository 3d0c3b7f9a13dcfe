package blobstore_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

// A blob shorter than InlineMax written whole is one inline segment: its
// sealed bytes and their BLAKE3 in the layout, no shard on any node. It reads
// back whole and in ranges, in the clear and sealed; damaged inline bytes are
// refused. Blobs of InlineMax bytes or more, and writes that do not start the
// blob, are erasure coded as before.
func TestInlineSegments(t *testing.T) {
	const inlineMax = 2 << 10
	c := newCluster(t, 6)
	s := newStore(t, c, 4, 2, func(cfg *blobstore.Config) { cfg.InlineMax = inlineMax })

	data := randomData(21, inlineMax-1)
	segs := write(t, s, data)
	if len(segs) != 1 || segs[0].Inline == nil || segs[0].K != 0 || segs[0].M != 0 || len(segs[0].Shards) != 0 {
		t.Fatalf("small blob: %d segments, first k %d m %d, %d shards, inline %v", len(segs), segs[0].K, segs[0].M, len(segs[0].Shards), segs[0].Inline != nil)
	}
	if n := c.shardCount(t); n != 0 {
		t.Fatalf("an inline blob left %d shard files", n)
	}
	if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
		t.Fatal("inline read differs")
	}
	var part bytes.Buffer
	if err := s.ReadRange(bg, &part, segs, 100, 900); err != nil || !bytes.Equal(part.Bytes(), data[100:1000]) {
		t.Fatalf("inline range: %v, equal %v", err, bytes.Equal(part.Bytes(), data[100:1000]))
	}
	if err := s.Delete(bg, segs); err != nil {
		t.Fatalf("Delete of an inline segment: %v", err)
	}

	// Damaged in the metadata: refused, never served.
	bad := cloneSegment(segs[0])
	bad.Inline, bad.InlineBlake3 = bytes.Clone(segs[0].Inline), segs[0].InlineBlake3
	bad.Inline[10] ^= 1
	if err := s.ReadRange(bg, io.Discard, []*metastorepb.Segment{bad}, 0, 10); !errors.Is(err, blobstore.ErrSegmentUnreadable) {
		t.Fatalf("damaged inline segment: %v", err)
	}
	for name, mutate := range map[string]func(*metastorepb.Segment){
		"geometry": func(seg *metastorepb.Segment) { seg.K = 1 },
		"shards":   func(seg *metastorepb.Segment) { seg.Shards = []*metastorepb.ShardRef{{Node: "node-0"}} },
		"length":   func(seg *metastorepb.Segment) { seg.Length = uint64(len(seg.Inline)) + 1 },
	} {
		seg := cloneSegment(segs[0])
		seg.Inline, seg.InlineBlake3 = segs[0].Inline, segs[0].InlineBlake3
		mutate(seg)
		if err := s.ReadRange(bg, io.Discard, []*metastorepb.Segment{seg}, 0, 10); !errors.Is(err, blobstore.ErrInvalidSegment) {
			t.Errorf("%s: ReadRange = %v", name, err)
		}
	}
	if _, err := s.Rebuild(bg, blobstore.RebuildRequest{Segment: segs[0], Indexes: []uint32{0}}); !errors.Is(err, blobstore.ErrInvalidSegment) {
		t.Fatalf("Rebuild of an inline segment: %v", err)
	}

	// Sealed: the inline bytes are ciphertext, and open only with the key.
	seal, err := blobstore.NewAESGCMSealer(keys.NewDataKey())
	if err != nil {
		t.Fatal(err)
	}
	segs, _, err = s.WriteWith(bg, bytes.NewReader(data), sha256.New(), blobstore.WriteOptions{Sealer: seal})
	if err != nil || len(segs) != 1 || segs[0].Inline == nil {
		t.Fatalf("sealed inline write: %v, %d segments", err, len(segs))
	}
	if bytes.Contains(segs[0].Inline, data[:64]) || segs[0].KeyId != seal.KeyID() {
		t.Fatal("a sealed inline segment holds plaintext or no key id")
	}
	var out bytes.Buffer
	if err := s.ReadRangeWith(bg, &out, segs, 0, int64(len(data)), blobstore.ReadOptions{Sealer: seal}); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("sealed inline read: %v", err)
	}
	if err := s.ReadRange(bg, io.Discard, segs, 0, 10); !errors.Is(err, blobstore.ErrKeyRequired) {
		t.Fatalf("sealed inline read without the key: %v", err)
	}

	// Not inline: a blob of InlineMax bytes, and a write later in a blob.
	segs = write(t, s, randomData(22, inlineMax))
	if segs[0].Inline != nil || len(segs[0].Shards) == 0 {
		t.Fatal("a blob of InlineMax bytes was stored inline")
	}
	segs, _, err = s.WriteWith(bg, bytes.NewReader(data[:100]), nil, blobstore.WriteOptions{Offset: 5000})
	if err != nil || segs[0].Inline != nil {
		t.Fatalf("a write at offset 5000: %v, inline %v", err, segs[0].Inline != nil)
	}

	if _, err := blobstore.New(blobstore.Config{InlineMax: blobstore.MaxInline + 1}, c.nodes); err == nil {
		t.Fatal("an inline maximum above MaxInline was accepted")
	}
}

// With WriteOptions.Size (a request's Content-Length) segments are cut the
// same as without, from buffers sized to the data; a reader holding more
// than it declared is refused, and one holding less writes what it held.
func TestWriteWithDeclaredSize(t *testing.T) {
	c := newCluster(t, 3)
	s := newStore(t, c, 2, 1)
	for _, size := range []int{1, 5000, testSeg - 1, testSeg, testSeg + 1, 3*testSeg + 17} {
		data := randomData(uint64(size), size)
		segs, n, err := s.WriteWith(bg, bytes.NewReader(data), nil, blobstore.WriteOptions{Size: int64(size)})
		if err != nil || n != int64(size) {
			t.Fatalf("%d bytes declared and sent: %v, wrote %d", size, err, n)
		}
		if want := (size + testSeg - 1) / testSeg; len(segs) != want {
			t.Fatalf("%d bytes: %d segments, want %d", size, len(segs), want)
		}
		if got := readAll(t, s, segs, size); !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read differs", size)
		}
	}
	before := c.shardCount(t)
	data := randomData(30, testSeg+10)
	if _, _, err := s.WriteWith(bg, bytes.NewReader(data), nil, blobstore.WriteOptions{Size: testSeg + 9}); err == nil {
		t.Fatal("a body longer than declared was accepted")
	}
	if n := c.shardCount(t); n != before {
		t.Fatalf("a refused write left %d shard files", n-before)
	}
	segs, n, err := s.WriteWith(bg, bytes.NewReader(data[:100]), nil, blobstore.WriteOptions{Size: 1000})
	if err != nil || n != 100 || len(segs) != 1 {
		t.Fatalf("a body shorter than declared: %v, wrote %d in %d segments", err, n, len(segs))
	}
}
