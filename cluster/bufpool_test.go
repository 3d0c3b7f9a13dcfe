package cluster

import "testing"

func TestTransportPool(t *testing.T) {
	p := new(transportPool)
	for _, n := range []int{0, 1, 255, 256, 257, 16 << 10, 16<<10 + 1, 1 << 22, 1<<22 + 1, 9 << 20} {
		b := p.Get(n)
		if len(*b) != n {
			t.Fatalf("Get(%d) has length %d", n, len(*b))
		}
		if n <= 1<<maxPoolTier && (cap(*b) < n || cap(*b)&(cap(*b)-1) != 0 || cap(*b) > max(2*n, 1<<minPoolTier)) {
			t.Fatalf("Get(%d) has capacity %d, want the smallest power of two that holds it", n, cap(*b))
		}
		for i := range *b {
			(*b)[i] = 0xAA
		}
		p.Put(b)
	}
	// A reused buffer comes back with the length asked for, whatever it had.
	b := p.Get(1000)
	p.Put(b)
	if c := p.Get(600); len(*c) != 600 || cap(*c) != 1024 {
		t.Fatalf("reused Get(600) = len %d cap %d", len(*c), cap(*c))
	}
	// Buffers of odd capacities are not pooled (they would be handed out for
	// sizes they cannot hold).
	odd := make([]byte, 3000)
	p.Put(&odd)
	if c := p.Get(3000); cap(*c) != 4096 {
		t.Fatalf("Get(3000) after Put of a 3000-byte buffer: cap %d", cap(*c))
	}
}
