package cluster

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// transportPool is the buffer pool of every gRPC server and client of a node
// (ServerOptions, Peers.Conn): gRPC reads every HTTP/2 data frame and encodes
// every message into a buffer from it. It is gRPC's default design (tiers of
// powers of two) without one step: a reused buffer is not cleared before it
// is handed out. gRPC overwrites every byte it asks for before it reads any
// (io.ReadFull of a frame, protobuf marshalling into the buffer), so the
// clearing only cost time: 2.8% of a 4+2 cluster's CPU on blob pulls went to
// zeroing frame buffers that were filled from the socket right after.
type transportPool struct {
	tiers [maxPoolTier + 1]sync.Pool // tiers[i] holds buffers of capacity 1<<i
}

const (
	minPoolTier = 8  // 256 B: smaller requests get a buffer of this size
	maxPoolTier = 22 // 4 MiB (MaxMessageSize is larger; those are not pooled)
)

var grpcBuffers mem.BufferPool = new(transportPool)

// tier is the smallest pool tier whose buffers hold n bytes.
func tier(n int) int {
	if n <= 1<<minPoolTier {
		return minPoolTier
	}
	return bits.Len(uint(n - 1))
}

// Get implements mem.BufferPool.
func (p *transportPool) Get(n int) *[]byte {
	t := tier(n)
	if t > maxPoolTier {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.tiers[t].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<t)
	return &b
}

// Put implements mem.BufferPool. Buffers that are not of a tier's exact
// capacity are left to the garbage collector.
func (p *transportPool) Put(b *[]byte) {
	c := cap(*b)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	if t := bits.Len(uint(c)) - 1; t >= minPoolTier && t <= maxPoolTier {
		p.tiers[t].Put(b)
	}
}
