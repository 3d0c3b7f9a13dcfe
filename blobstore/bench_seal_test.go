package blobstore_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

// What encryption costs the pipelines: the same writes and reads as
// BenchmarkWrite and BenchmarkRead (64 MiB blobs, 8 MiB segments), plain and
// sealed with AES-256-GCM, on real LocalStores ("disk", fsync included) and
// on in-memory stores ("mem", where the pipeline's CPU work is all there is,
// so the relative cost is the largest it can be). Besides MB/s each reports
// cpu-ms/op, the CPU time (user and system, all goroutines) the process
// spent per 64 MiB: unlike wall time it barely moves when other processes
// compete for the cores, so it shows what sealing adds even on a busy
// machine. Run with:
//
//	go test -run XXX -bench 'Sealed' -count 5 ./blobstore/

var benchSealings = []string{"plain", "aes-gcm"}

func benchSealer(b *testing.B, name string) blobstore.Sealer {
	if name == "plain" {
		return blobstore.Plain
	}
	s, err := blobstore.NewAESGCMSealer(keys.NewDataKey())
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchNodes(b *testing.B, backend string, n int) func() []blobstore.Node {
	if backend == "disk" {
		return newCluster(b, n).nodes
	}
	var nodes []blobstore.Node
	for i := range n {
		id := fmt.Sprintf("mem-%d", i)
		nodes = append(nodes, blobstore.Node{
			Info:   blobstore.NodeInfo{ID: id, Zone: "zone-" + id, Free: 1 << 40},
			Shards: &memStore{id: id, shards: map[blobstore.ShardID][]byte{}},
		})
	}
	return func() []blobstore.Node { return nodes }
}

func BenchmarkSealedWrite(b *testing.B) {
	data := randomData(3, benchBlob)
	for _, backend := range []string{"disk", "mem"} {
		for _, g := range benchGeometries {
			for _, sealing := range benchSealings {
				b.Run(fmt.Sprintf("%s/%d+%d/%s", backend, g.k, g.m, sealing), func(b *testing.B) {
					s, err := blobstore.New(blobstore.Config{K: g.k, M: g.m}, benchNodes(b, backend, g.nodes))
					if err != nil {
						b.Fatal(err)
					}
					opts := blobstore.WriteOptions{Sealer: benchSealer(b, sealing)}
					b.SetBytes(benchBlob)
					var cpu time.Duration
					for b.Loop() {
						c0 := cpuTime()
						segs, _, err := s.WriteWith(bg, bytes.NewReader(data), nil, opts)
						if err != nil {
							b.Fatal(err)
						}
						cpu += cpuTime() - c0
						b.StopTimer()
						if err := s.Delete(bg, segs); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
				})
			}
		}
	}
}

func BenchmarkSealedRead(b *testing.B) {
	data := randomData(4, benchBlob)
	for _, backend := range []string{"disk", "mem"} {
		for _, g := range benchGeometries {
			for _, sealing := range benchSealings {
				b.Run(fmt.Sprintf("%s/%d+%d/%s", backend, g.k, g.m, sealing), func(b *testing.B) {
					s, err := blobstore.New(blobstore.Config{K: g.k, M: g.m}, benchNodes(b, backend, g.nodes))
					if err != nil {
						b.Fatal(err)
					}
					sl := benchSealer(b, sealing)
					segs, _, err := s.WriteWith(bg, bytes.NewReader(data), nil, blobstore.WriteOptions{Sealer: sl})
					if err != nil {
						b.Fatal(err)
					}
					b.SetBytes(benchBlob)
					c0 := cpuTime()
					for b.Loop() {
						if err := s.ReadRangeWith(bg, io.Discard, segs, 0, benchBlob, blobstore.ReadOptions{Sealer: sl}); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64((cpuTime()-c0).Milliseconds())/float64(b.N), "cpu-ms/op")
				})
			}
		}
	}
}

// BenchmarkAESGCMSealer: sealing and opening one 8 MiB segment, alone.
func BenchmarkAESGCMSealer(b *testing.B) {
	const n = blobstore.DefaultSegmentSize
	sl, err := blobstore.NewAESGCMSealer(keys.NewDataKey())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, n, n+sl.Overhead())
	b.Run("seal", func(b *testing.B) {
		b.SetBytes(n)
		for b.Loop() {
			seg := &metastorepb.Segment{Id: "00112233445566778899aabbccddeeff", Length: n, K: 1}
			if _, err := sl.Seal(seg, 0, buf[:n]); err != nil {
				b.Fatal(err)
			}
		}
	})
	seg := &metastorepb.Segment{Id: "00112233445566778899aabbccddeeff", Length: n, K: 1}
	plain := make([]byte, n, n+sl.Overhead())
	copy(plain, randomData(5, n))
	sealed, err := sl.Seal(seg, 0, plain)
	if err != nil {
		b.Fatal(err)
	}
	work := make([]byte, len(sealed))
	b.Run("open", func(b *testing.B) {
		b.SetBytes(n)
		for b.Loop() {
			copy(work, sealed)
			if _, err := sl.Open(seg, 0, [][]byte{work}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// memStore is a ShardStore in memory, for benchmarks of the pipeline alone.
type memStore struct {
	id     string
	mu     sync.Mutex
	shards map[blobstore.ShardID][]byte
}

func (m *memStore) NodeID() string { return m.id }

func (m *memStore) Put(_ context.Context, id blobstore.ShardID, data []byte, sum [32]byte) error {
	if blake3.Sum256(data) != sum {
		return blobstore.ErrShardCorrupt
	}
	c := bytes.Clone(data)
	m.mu.Lock()
	m.shards[id] = c
	m.mu.Unlock()
	return nil
}

func (m *memStore) Get(_ context.Context, id blobstore.ShardID) ([]byte, error) {
	m.mu.Lock()
	b, ok := m.shards[id]
	m.mu.Unlock()
	if !ok {
		return nil, blobstore.ErrShardNotFound
	}
	return bytes.Clone(b), nil
}

func (m *memStore) Delete(_ context.Context, id blobstore.ShardID) error {
	m.mu.Lock()
	delete(m.shards, id)
	m.mu.Unlock()
	return nil
}

func (m *memStore) Stat(_ context.Context, id blobstore.ShardID) (blobstore.ShardInfo, error) {
	m.mu.Lock()
	b, ok := m.shards[id]
	m.mu.Unlock()
	if !ok {
		return blobstore.ShardInfo{}, blobstore.ErrShardNotFound
	}
	return blobstore.ShardInfo{ID: id, Size: int64(len(b)), Sum: blake3.Sum256(b)}, nil
}

func (m *memStore) List(context.Context, string, int) ([]blobstore.ShardInfo, error) {
	return nil, nil
}

func (m *memStore) Usage(context.Context) (blobstore.Usage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return blobstore.Usage{Shards: int64(len(m.shards)), Capacity: 1 << 40, Free: 1 << 40}, nil
}
