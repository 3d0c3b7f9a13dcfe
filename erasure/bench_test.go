package erasure

import (
	"fmt"
	"testing"
)

func BenchmarkEncode(b *testing.B) {
	const size = 8 << 20
	for _, g := range []struct{ k, m int }{{1, 0}, {1, 2}, {4, 2}, {8, 3}} {
		b.Run(fmt.Sprintf("%d+%d", g.k, g.m), func(b *testing.B) {
			c, _ := New(g.k, g.m)
			buf := make([]byte, size, c.EncodedSize(size))
			b.SetBytes(size)
			for b.Loop() {
				if _, err := c.Encode(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReconstruct(b *testing.B) {
	const size = 8 << 20
	for _, g := range []struct{ k, m int }{{4, 2}, {8, 3}} {
		b.Run(fmt.Sprintf("%d+%d/lose%d", g.k, g.m, g.m), func(b *testing.B) {
			c, _ := New(g.k, g.m)
			shards, _ := c.Encode(make([]byte, size, c.EncodedSize(size)))
			work := make([][]byte, len(shards))
			b.SetBytes(size)
			for b.Loop() {
				copy(work, shards)
				for i := 0; i < g.m; i++ {
					work[i] = work[i][:0] // lose the first m data shards, reuse their memory
				}
				if err := c.Reconstruct(work); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
