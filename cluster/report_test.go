package cluster_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/cluster/clustertest"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

func TestShardReporter(t *testing.T) {
	c := clustertest.Start(t, 1, clustertest.Options{})
	l := c.Leader()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sum := make([]byte, 32)
	refs := []*pb.ShardRef{{Index: 0, Node: "s1", Blake3: sum}, {Index: 1, Node: "s2", Blake3: sum}}
	seg := &pb.Segment{Id: "seg-r", Length: 1, K: 1, M: 1, ShardSize: 1, Shards: refs}
	if err := l.Meta.Propose(ctx, &pb.Command{Op: &pb.Command_CommitBlob{CommitBlob: &pb.CommitBlob{
		Repo: "r", Digest: dg(1), Size: 1, Segments: []*pb.Segment{seg}}}}); err != nil {
		t.Fatal(err)
	}

	r := cluster.NewShardReporter(l.Meta, cluster.ReporterConfig{Rate: 1000, Backlog: 3})
	if !r.Report("seg-r", 0, "s1", "scrub: bad") {
		t.Fatal("first report not queued")
	}
	if r.Report("seg-r", 0, "s1", "scrub: bad again") {
		t.Fatal("a second report of the same shard was not deduplicated")
	}
	r.OnShardError("seg-r", refs[1], fmt.Errorf("get: %w", blobstore.ErrNodeUnavailable)) // the dead-node path's business
	r.OnShardError("seg-r", refs[1], fmt.Errorf("get: %w", context.Canceled))             // a hedged read gave up
	r.OnShardError("seg-r", refs[1], fmt.Errorf("get: %w", blobstore.ErrShardCorrupt))
	r.Report("no-such-segment", 0, "s1", "scrub: bad") // an orphan: refused, skipped
	r.Report("seg-x", 0, "s1", "")                     // backlog full: dropped
	go r.Run(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := r.Stats()
		if st.Proposed == 2 && st.Skipped == 3 {
			if st.Deduplicated != 1 || st.Dropped != 1 || st.Failed != 0 {
				t.Fatalf("stats %+v", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	items, err := l.Store.RepairQueue("", 10)
	if err != nil || len(items) != 1 || items[0].SegmentId != "seg-r" || len(items[0].Reasons) != 2 ||
		!strings.Contains(items[0].Reasons[0]+items[0].Reasons[1], "shard 1 on s2: read:") {
		t.Fatalf("repair queue %v, %v", items, err)
	}
}
