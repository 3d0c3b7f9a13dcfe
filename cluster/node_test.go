package cluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

type testNode struct {
	node *Node
	st   *metastore.Store
	dir  string
}

func openNode(t *testing.T, dir string, threshold uint64) *testNode {
	t.Helper()
	st, err := metastore.Open(filepath.Join(dir, "pebble"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(Config{NodeID: "n1", Dir: filepath.Join(dir, "raft"), RaftAddr: "127.0.0.1:0",
		Bootstrap: true, SnapshotThreshold: threshold, TrailingLogs: 10}, st)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return &testNode{node: n, st: st, dir: dir}
}

func (tn *testNode) close(t *testing.T) {
	t.Helper()
	if err := tn.node.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tn.st.Close(); err != nil {
		t.Fatal(err)
	}
}

func commit(repo, dgst string) *pb.Command {
	return &pb.Command{Op: &pb.Command_CommitBlob{CommitBlob: &pb.CommitBlob{
		Repo: repo, Digest: dgst, Size: 1,
		Segments: []*pb.Segment{{Id: dgst, Length: 1, K: 1, ShardSize: 1}},
	}}}
}

func dg(i int) string { return fmt.Sprintf("sha256:%064x", i) }

// A single voter over real TCP and real disks: proposals apply, refusals come
// back as metastore errors, and a restart keeps everything.
func TestSingleNodeProposeAndRestart(t *testing.T) {
	dir := t.TempDir()
	tn := openNode(t, dir, 8192)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- tn.node.Propose(ctx, commit("r", dg(i)))
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	err := tn.node.Propose(ctx, &pb.Command{Op: &pb.Command_MountBlob{MountBlob: &pb.MountBlob{Repo: "x", Digest: dg(999), From: "r"}}})
	if !errors.Is(err, metastore.ErrBlobUnknown) {
		t.Fatalf("refused proposal returned %v", err)
	}
	if err := tn.node.LinearizableRead(ctx); err != nil {
		t.Fatal(err)
	}
	tn.close(t)

	tn = openNode(t, dir, 8192)
	defer tn.close(t)
	for i := 0; i < 50; i++ {
		if _, err := tn.st.RepoBlob("r", dg(i)); err != nil {
			t.Fatalf("blob %d lost over restart: %v", i, err)
		}
	}
	if rc, _ := tn.st.RefCount(dg(3)); rc.Links != 1 {
		t.Fatalf("restart replayed entries twice: %v", rc)
	}
	if err := tn.node.Propose(ctx, commit("r2", dg(1000))); err != nil {
		t.Fatalf("propose after restart: %v", err)
	}
}

// With snapshots taken and the log compacted behind them, a restart still
// has every entry exactly once.
func TestRestartAfterSnapshotAndCompaction(t *testing.T) {
	dir := t.TempDir()
	tn := openNode(t, dir, 20)
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		if err := tn.node.Propose(ctx, commit(fmt.Sprintf("r%d", i%4), dg(i%10))); err != nil {
			t.Fatal(err)
		}
		if i == 60 {
			if err := tn.node.Snapshot(); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := map[string]int64{}
	for i := 0; i < 10; i++ {
		rc, _ := tn.st.RefCount(dg(i))
		want[dg(i)] = rc.Links
	}
	tn.close(t)
	tn = openNode(t, dir, 20)
	defer tn.close(t)
	for d, links := range want {
		rc, _ := tn.st.RefCount(d)
		if rc.Links != links {
			t.Fatalf("%s: %d links after restart, want %d", d, rc.Links, links)
		}
	}
}

// A node that restarts on existing state has forgotten which leader it heard
// from and would vote at once: before Raft starts it waits until any read
// lease it helped grant in its last life has run out.
func TestRestartWaitsOutReadLeases(t *testing.T) {
	dir := t.TempDir()
	tn := openNode(t, dir, 8192)
	ctx := context.Background()
	if err := tn.node.Propose(ctx, commit("r", dg(1))); err != nil {
		t.Fatal(err)
	}
	if _, ok := tn.node.ReadLease(); !ok {
		t.Fatal("a committed proposal granted no read lease")
	}
	tn.node.Close()
	began := time.Now()
	n, err := Open(Config{NodeID: "n1", Dir: filepath.Join(dir, "raft"), RaftAddr: "127.0.0.1:0", Bootstrap: true}, tn.st)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if took < readLeaseDuration {
		t.Fatalf("restart on existing state took %v, less than the read lease (%v)", took, readLeaseDuration)
	}
	if err := tn.st.Close(); err != nil {
		t.Fatal(err)
	}
}
