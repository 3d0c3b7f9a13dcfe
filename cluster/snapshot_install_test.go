package cluster_test

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/strata-registry/strata/cluster/clustertest"
)

// TestRestartAfterInterruptedSnapshotInstall: a follower that installs a
// snapshot from the leader stores it in its Raft snapshot store first and
// restores its state machine from it second. This test leaves on the
// follower's disk what a crash between the two leaves (the leader's
// snapshot in the follower's store, its Pebble state untouched), then
// restarts it under a new leader, which knows only what the follower says it
// has. The follower must end up with every acknowledged write. Before the
// fix (cluster.Open restores a state machine that is behind the latest
// snapshot) it silently lacked every write between its old state and the
// snapshot. chaos/failpoint_snapshot_test.go reaches the same state through
// the snapshot-restore failpoint (go test -tags failpoints ./chaos/).
func TestRestartAfterInterruptedSnapshotInstall(t *testing.T) {
	c := clustertest.Start(t, 3, clustertest.Options{SnapshotThreshold: 1 << 20, TrailingLogs: 16})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l := c.Leader()
	f := c.Follower()
	var acked []string
	propose := func(via *clustertest.Node, prefix string, n int) {
		acked = append(acked, c.ProposeUploads(ctx, via, prefix, n)...)
	}
	propose(l, "before", 10)
	c.WaitConverged()
	c.Kill(f)
	propose(l, "while-down", 100)
	if err := l.Raft.Snapshot(); err != nil {
		t.Fatal(err)
	}

	// What InstallSnapshot does before it restores the state machine: the
	// leader's snapshot goes into the follower's snapshot store.
	logger := hclog.NewNullLogger()
	from, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(l.Dir, "raft"), 2, logger)
	if err != nil {
		t.Fatal(err)
	}
	metas, err := from.List()
	if err != nil || len(metas) == 0 {
		t.Fatalf("leader's snapshots: %v, %v", metas, err)
	}
	meta, rc, err := from.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	to, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(f.Dir, "raft"), 2, logger)
	if err != nil {
		t.Fatal(err)
	}
	_, trans := raft.NewInmemTransport("")
	sink, err := to.Create(meta.Version, meta.Index, meta.Term, meta.Configuration, meta.ConfigurationIndex, trans)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(sink, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}

	// A new leader, which knows only what f says it has.
	c.Kill(l)
	c.Restart(f)
	nl := c.Leader()
	propose(nl, "after", 10)
	c.Restart(l)
	for deadline := time.Now().Add(30 * time.Second); ; {
		_, commit, _ := nl.Raft.Indexes()
		if _, _, applied := f.Raft.Indexes(); applied >= commit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not catch up within 30s", f.ID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var missing []string
	for _, id := range acked {
		if _, err := f.Store.Upload(id); err != nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%s lacks %d of %d acknowledged writes after restarting with a snapshot it had not restored (first %s)",
			f.ID, len(missing), len(acked), missing[0])
	}
	c.WaitConverged()
}
