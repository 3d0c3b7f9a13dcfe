package blobstore_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"testing"

	"github.com/strata-registry/strata/blobstore"
)

// The benchmarks run the real pipelines on LocalStores in temporary
// directories on the real disk (fsync included), default 8 MiB segments,
// 64 MiB blobs. Run them with: go test -run XXX -bench . ./blobstore/

const benchBlob = 64 << 20

var benchGeometries = []struct {
	k, m, nodes int
}{{1, 0, 1}, {4, 2, 6}}

func benchStore(b *testing.B, k, m, nodes int) (*cluster, *blobstore.Store) {
	c := newCluster(b, nodes)
	s, err := blobstore.New(blobstore.Config{K: k, M: m}, c.nodes)
	if err != nil {
		b.Fatal(err)
	}
	return c, s
}

func BenchmarkWrite(b *testing.B) {
	data := randomData(1, benchBlob)
	for _, g := range benchGeometries {
		for _, withHash := range []bool{false, true} {
			name := fmt.Sprintf("%d+%d", g.k, g.m)
			if withHash {
				name += "/sha256"
			}
			b.Run(name, func(b *testing.B) {
				_, s := benchStore(b, g.k, g.m, g.nodes)
				b.SetBytes(benchBlob)
				for b.Loop() {
					var h hash.Hash
					if withHash {
						h = sha256.New()
					}
					segs, _, err := s.Write(bg, bytes.NewReader(data), h)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					if err := s.Delete(bg, segs); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
		}
	}
}

func BenchmarkRead(b *testing.B) {
	data := randomData(2, benchBlob)
	for _, g := range benchGeometries {
		for _, degraded := range []bool{false, true} {
			if degraded && g.m == 0 {
				continue
			}
			name := fmt.Sprintf("%d+%d", g.k, g.m)
			if degraded {
				name += fmt.Sprintf("/%d-nodes-down", g.m)
			}
			b.Run(name, func(b *testing.B) {
				c, s := benchStore(b, g.k, g.m, g.nodes)
				segs, _, err := s.Write(bg, bytes.NewReader(data), nil)
				if err != nil {
					b.Fatal(err)
				}
				if degraded {
					for i := range g.m {
						c.faulty[i].Down()
					}
				}
				b.SetBytes(benchBlob)
				for b.Loop() {
					if err := s.ReadRange(bg, io.Discard, segs, 0, benchBlob); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
