//go:build failpoints

package chaos_test

import (
	"context"
	"testing"
	"time"

	"github.com/strata-registry/strata/chaos/failpoint"
	"github.com/strata-registry/strata/cluster/clustertest"
)

// TestSnapshotInstallInterrupted: a follower that was down while the leader
// compacted its log must install a snapshot when it comes back. Raft stores
// the snapshot on disk first and then restores the state machine from it;
// the failpoint snapshot-restore fails the restore at its last step (the
// whole snapshot staged in a Pebble batch, nothing committed), and the
// follower is then stopped, which leaves on disk exactly what a crash at
// that moment leaves: the new snapshot in Raft's store, the old state in
// Pebble. Started again, the follower must end up with every acknowledged
// write (its state the same as the others'), not apply the entries after
// the snapshot onto the old state.
func TestSnapshotInstallInterrupted(t *testing.T) {
	c := clustertest.Start(t, 3, clustertest.Options{SnapshotThreshold: 1 << 20, TrailingLogs: 16})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l := c.Leader()
	f := c.Follower()
	propose := func(prefix string, n int) []string { return c.ProposeUploads(ctx, l, prefix, n) }
	acked := propose("before", 20)
	c.WaitConverged()
	c.Kill(f)
	fLast, _, _ := f.Raft.Indexes()

	// While f is down: more writes, a snapshot, and the log compacted past
	// what f has.
	acked = append(acked, propose("while-down", 200)...)
	if err := l.Raft.Snapshot(); err != nil {
		t.Fatal(err)
	}
	first, snap := l.Raft.LogBounds()
	if first <= fLast+1 {
		t.Fatalf("the leader's log starts at %d, follower has up to %d: no snapshot needed", first, fLast)
	}
	t.Logf("follower %s stopped at index %d; leader %s snapshot at %d, log from %d", f.ID, fLast, l.ID, snap, first)

	if err := failpoint.Enable(failpoint.SnapshotRestore, "error(crash here)"); err != nil {
		t.Fatal(err)
	}
	defer failpoint.Disable(failpoint.SnapshotRestore)
	fired := func() int64 {
		for _, st := range failpoint.Status() {
			if st.Name == failpoint.SnapshotRestore {
				return st.Fired
			}
		}
		return 0
	}
	before := fired()
	c.Restart(f)
	for fired() == before {
		if ctx.Err() != nil {
			t.Fatal("the follower never tried to install the snapshot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Kill(f) // "crashed" in the middle of the restore
	failpoint.Disable(failpoint.SnapshotRestore)
	t.Logf("snapshot install interrupted %d times; follower stopped", fired()-before)

	// The leader remembers that f needs a snapshot and would send it
	// again; a new leader knows only what f says it has. So the old leader
	// goes down too (a leader change is all it takes), f comes back, and
	// f and the third node carry on.
	c.Kill(l)
	c.Restart(f)
	nl := c.Leader()
	l = nl
	acked = append(acked, propose("after", 20)...)
	for _, n := range c.Nodes {
		if !n.Up() {
			c.Restart(n)
		}
	}
	// f must hold every acknowledged write.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, commit, _ := l.Raft.Indexes()
		_, _, applied := f.Raft.Indexes()
		if applied >= commit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("follower applied %d of %d", applied, commit)
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
		t.Fatalf("after the interrupted snapshot install, %s lacks %d of %d acknowledged writes (first %s, last %s): it applied the entries after the snapshot onto its old state",
			f.ID, len(missing), len(acked), missing[0], missing[len(missing)-1])
	}
	c.WaitConverged()
}
