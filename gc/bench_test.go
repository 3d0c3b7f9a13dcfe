package gc_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/gc"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// BenchmarkCollect measures collection throughput: N unreferenced blobs
// (default 100,000; STRATA_GC_BENCH_BLOBS), each with one 1 KiB shard on a
// real disk, committed through a real single-node Raft, then collected by
// one run with no grace (CollectBlob through Raft, shard deletion, orphan
// records dropped). Reports blobs/s and MB/s.
func BenchmarkCollect(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("STRATA_GC_BENCH_BLOBS")); err == nil && v > 0 {
		n = v
	}
	const size = 1024
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		st, err := metastore.Open(filepath.Join(dir, "pebble"))
		if err != nil {
			b.Fatal(err)
		}
		node, err := cluster.Open(cluster.Config{NodeID: "n1", Dir: filepath.Join(dir, "raft"), RaftAddr: "127.0.0.1:0", Bootstrap: true}, st)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		if err := node.WaitLeader(ctx); err != nil {
			b.Fatal(err)
		}
		meta, _ := cluster.NewMeta(cluster.MetaConfig{Node: node, Store: st})
		ls, err := blobstore.OpenLocal("d0", filepath.Join(dir, "shards"))
		if err != nil {
			b.Fatal(err)
		}
		nodes := []blobstore.Node{{Info: blobstore.NodeInfo{ID: "d0", Zone: "d0"}, Shards: ls}}
		data := make([]byte, size)
		sum := blake3.Sum256(data)
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < 32; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					j := int(next.Add(1)) - 1
					if j >= n {
						return
					}
					id := fmt.Sprintf("%032x", j)
					if err := ls.Put(ctx, blobstore.ShardID{Segment: id}, data, sum); err != nil {
						b.Error(err)
						return
					}
					err := meta.Propose(ctx, &pb.Command{Op: &pb.Command_CommitBlob{CommitBlob: &pb.CommitBlob{
						Repo: "bench", Digest: fmt.Sprintf("sha256:%064x", j), Size: size,
						Segments: []*pb.Segment{{Id: id, Length: size, K: 1, ShardSize: size, Format: 1,
							Shards: []*pb.ShardRef{{Index: 0, Node: "d0", Blake3: sum[:]}}}},
					}}})
					if err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.Logf("set up %d blobs in %v", n, time.Since(start).Round(time.Second))
		col := gc.NewCollector(gc.CollectorConfig{Grace: -1, SweepMinAge: -1}, st, meta,
			func() []blobstore.Node { return nodes }, node.IsLeader, nil, nil)
		b.StartTimer()
		t0 := time.Now()
		stats, err := col.RunOnce(ctx, 0, false)
		el := time.Since(t0)
		b.StopTimer()
		if err != nil || stats.BlobsCollected != n || stats.SegmentsDeleted != n {
			b.Fatalf("collected %+v: %v", stats, err)
		}
		b.ReportMetric(float64(n)/el.Seconds(), "blobs/s")
		b.ReportMetric(float64(n*size)/el.Seconds()/1e6, "MB/s")
		cancel()
		node.Close()
		ls.Close()
		st.Close()
	}
}
