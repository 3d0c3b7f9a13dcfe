package cluster_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-registry/strata/cluster/clustertest"
)

// The state machine commits its Pebble batches without an fsync (the Raft
// log is the durable record). A machine crash can then leave a node's Pebble
// at an earlier state than its Raft log: this test puts an older copy of a
// follower's Pebble directory back while the node is down, with and without a
// Raft snapshot taken past the copy in between, and checks that the restarted
// node ends up with every acknowledged write (replayed from the log, or
// restored from the snapshot).
func TestStateMachineBehindItsLog(t *testing.T) {
	for _, snapshot := range []bool{false, true} {
		name := "log"
		if snapshot {
			name = "snapshot"
		}
		t.Run(name, func(t *testing.T) {
			c := clustertest.Start(t, 3, clustertest.Options{SnapshotThreshold: 1 << 20, TrailingLogs: 16})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			l, f := c.Leader(), c.Follower()
			acked := c.ProposeUploads(ctx, l, "early", 10)
			c.WaitConverged()

			// The follower's state as a machine crash could leave it: an
			// older Pebble, taken while the node was down.
			c.Kill(f)
			old := filepath.Join(t.TempDir(), "pebble")
			if out, err := exec.Command("cp", "-a", filepath.Join(f.Dir, "pebble"), old).CombinedOutput(); err != nil {
				t.Fatalf("copy: %v: %s", err, out)
			}
			c.Restart(f)
			acked = append(acked, c.ProposeUploads(ctx, l, "later", 100)...)
			c.WaitConverged()
			if snapshot {
				// The follower's own snapshot now covers the writes its old
				// Pebble lacks; its log keeps only the last 16 entries.
				if err := f.Raft.Snapshot(); err != nil {
					t.Fatal(err)
				}
			}
			c.Kill(f)
			if err := os.RemoveAll(filepath.Join(f.Dir, "pebble")); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(old, filepath.Join(f.Dir, "pebble")); err != nil {
				t.Fatal(err)
			}
			c.Restart(f)
			acked = append(acked, c.ProposeUploads(ctx, c.Leader(), "after", 10)...)
			c.WaitConverged()
			for _, id := range acked {
				if _, err := f.Store.Upload(id); err != nil {
					t.Fatalf("%s lacks acknowledged write %s after restarting with an older state machine: %v", f.ID, id, err)
				}
			}
		})
	}
}
