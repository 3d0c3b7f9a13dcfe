package erasure

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
)

var geometries = []struct{ k, m int }{{1, 0}, {3, 0}, {1, 2}, {2, 1}, {2, 2}, {4, 2}, {6, 3}}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func join(t *testing.T, c *Codec, shards [][]byte, size int) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := c.Join(&out, shards, size); err != nil {
		t.Fatalf("Join: %v", err)
	}
	return out.Bytes()
}

func TestNewRejectsBadGeometry(t *testing.T) {
	for _, g := range []struct{ k, m int }{{0, 0}, {0, 2}, {-1, 1}, {2, -1}, {200, 57}} {
		if _, err := New(g.k, g.m); !errors.Is(err, ErrInvalidGeometry) {
			t.Errorf("New(%d, %d) = %v, want ErrInvalidGeometry", g.k, g.m, err)
		}
	}
	if _, err := New(200, 56); err != nil {
		t.Errorf("New(200, 56): %v", err)
	}
}

func TestShardSize(t *testing.T) {
	c, _ := New(4, 2)
	for _, tc := range []struct{ n, want int }{{0, 0}, {-3, 0}, {1, 1}, {3, 1}, {4, 1}, {5, 2}, {8, 2}, {9, 3}} {
		if got := c.ShardSize(tc.n); got != tc.want {
			t.Errorf("ShardSize(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
	if got := c.EncodedSize(9); got != 18 {
		t.Errorf("EncodedSize(9) = %d, want 18", got)
	}
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, g := range geometries {
		c, err := New(g.k, g.m)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{1, 2, g.k - 1, g.k, g.k + 1, 1000, 4096, 65537} {
			if n < 1 {
				continue
			}
			t.Run(fmt.Sprintf("%d+%d/%d", g.k, g.m, n), func(t *testing.T) {
				data := randomBytes(r, n)
				orig := bytes.Clone(data)
				shards, err := c.Encode(data)
				if err != nil {
					t.Fatal(err)
				}
				if len(shards) != g.k+g.m {
					t.Fatalf("%d shards, want %d", len(shards), g.k+g.m)
				}
				for i, s := range shards {
					if len(s) != c.ShardSize(n) {
						t.Fatalf("shard %d is %d bytes, want %d", i, len(s), c.ShardSize(n))
					}
				}
				if got := join(t, c, shards, n); !bytes.Equal(got, orig) {
					t.Fatal("join differs from input")
				}
				// Everything after the data in the data shards is zero padding.
				all := bytes.Join(shards[:g.k], nil)
				if !bytes.Equal(all[n:], make([]byte, len(all)-n)) {
					t.Fatal("padding is not zero")
				}
			})
		}
	}
}

func TestNoParitySingleShardIsData(t *testing.T) {
	c, _ := New(1, 0)
	data := []byte("hello")
	shards, err := c.Encode(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) != 1 || &shards[0][0] != &data[0] || len(shards[0]) != len(data) {
		t.Fatal("1+0 must return the data itself as the only shard")
	}
}

func TestEncodeUsesSpareCapacity(t *testing.T) {
	c, _ := New(4, 2)
	n := 1<<20 + 1
	buf := make([]byte, n, c.EncodedSize(n))
	for i := range buf {
		buf[i] = byte(i)
	}
	if _, err := c.Encode(buf); err != nil { // warm up the encoder's internals
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const runs = 5
	for range runs {
		if _, err := c.Encode(buf); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	// Small bookkeeping allocations are fine; nothing shard-sized is.
	if perRun := (after.TotalAlloc - before.TotalAlloc) / runs; perRun > uint64(c.ShardSize(n)/4) {
		t.Errorf("Encode with spare capacity allocated %d bytes per call", perRun)
	}
	shards, _ := c.Encode(buf)
	full := buf[:cap(buf)]
	for i, s := range shards {
		if &s[0] != &full[i*c.ShardSize(n)] {
			t.Errorf("shard %d is not in the caller's buffer", i)
		}
	}
}

func TestEncodeEmpty(t *testing.T) {
	c, _ := New(2, 1)
	if _, err := c.Encode(nil); !errors.Is(err, ErrEmptyData) {
		t.Fatalf("Encode(nil) = %v, want ErrEmptyData", err)
	}
}

// subsets calls f with every subset of {0..n-1} of size r.
func subsets(n, r int, f func([]int)) {
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

func TestReconstructAnyMMissing(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, g := range geometries {
		if g.m == 0 {
			continue
		}
		c, _ := New(g.k, g.m)
		n := 10007
		data := randomBytes(r, n)
		shards, err := c.Encode(bytes.Clone(data))
		if err != nil {
			t.Fatal(err)
		}
		for lost := 1; lost <= g.m; lost++ {
			subsets(g.k+g.m, lost, func(missing []int) {
				work := make([][]byte, len(shards))
				copy(work, shards)
				for _, i := range missing {
					work[i] = nil
				}
				if err := c.Reconstruct(work); err != nil {
					t.Fatalf("%d+%d missing %v: %v", g.k, g.m, missing, err)
				}
				if got := join(t, c, work, n); !bytes.Equal(got, data) {
					t.Fatalf("%d+%d missing %v: data differs", g.k, g.m, missing)
				}
				full := make([][]byte, len(shards))
				copy(full, shards)
				for _, i := range missing {
					full[i] = nil
				}
				if err := c.ReconstructAll(full); err != nil {
					t.Fatal(err)
				}
				for i := range full {
					if !bytes.Equal(full[i], shards[i]) {
						t.Fatalf("%d+%d missing %v: shard %d differs after ReconstructAll", g.k, g.m, missing, i)
					}
				}
			})
		}
	}
}

func TestReconstructTooFew(t *testing.T) {
	for _, g := range geometries {
		c, _ := New(g.k, g.m)
		shards, err := c.Encode(bytes.Repeat([]byte{7}, 999))
		if err != nil {
			t.Fatal(err)
		}
		subsets(g.k+g.m, g.m+1, func(missing []int) {
			work := make([][]byte, len(shards))
			copy(work, shards)
			for _, i := range missing {
				work[i] = nil
			}
			if err := c.Reconstruct(work); !errors.Is(err, ErrTooFewShards) {
				t.Fatalf("%d+%d missing %v: got %v, want ErrTooFewShards", g.k, g.m, missing, err)
			}
		})
	}
}

func TestReconstructBadShape(t *testing.T) {
	c, _ := New(2, 1)
	shards, _ := c.Encode([]byte("abcdef"))
	if err := c.Reconstruct(shards[:2]); !errors.Is(err, ErrShardCount) {
		t.Errorf("short slice: %v", err)
	}
	bad := [][]byte{shards[0], nil, []byte("toolong")}
	if err := c.Reconstruct(bad); !errors.Is(err, ErrShardSize) {
		t.Errorf("unequal sizes: %v", err)
	}
}

func TestJoinErrors(t *testing.T) {
	c, _ := New(2, 1)
	shards, _ := c.Encode([]byte("abcdef"))
	var out bytes.Buffer
	if err := c.Join(&out, shards, 7); !errors.Is(err, ErrShortData) {
		t.Errorf("size beyond shards: %v", err)
	}
	if err := c.Join(&out, [][]byte{shards[0], nil, shards[2]}, 6); !errors.Is(err, ErrTooFewShards) {
		t.Errorf("missing data shard: %v", err)
	}
	out.Reset()
	if err := c.Join(&out, shards, 4); err != nil || out.String() != "abcd" {
		t.Errorf("prefix join = %q, %v", out.String(), err)
	}
}

func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("strata"), uint8(3), uint8(2), uint8(0b101))
	f.Fuzz(func(t *testing.T, data []byte, k, m, lose uint8) {
		if len(data) == 0 {
			return
		}
		kk, mm := int(k%8)+1, int(m%4)
		c, err := New(kk, mm)
		if err != nil {
			t.Fatal(err)
		}
		shards, err := c.Encode(bytes.Clone(data))
		if err != nil {
			t.Fatal(err)
		}
		lost := 0
		for i := range shards {
			if lose&(1<<(i%8)) != 0 && lost < mm {
				shards[i] = nil
				lost++
			}
		}
		if err := c.Reconstruct(shards); err != nil {
			t.Fatal(err)
		}
		if got := join(t, c, shards, len(data)); !bytes.Equal(got, data) {
			t.Fatal("round trip differs")
		}
	})
}
