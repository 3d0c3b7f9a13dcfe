package chaos_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/strata-registry/strata/cluster/clustertest"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// TestReadAfterLeaderChangeIsNotStale: a write is acknowledged by the leader
// L with the votes of F, while a third node B lags behind (cut off from L);
// L is then cut off before F learns that the write committed. F wins the
// election (B's log is shorter) and must bring B up to date before it can
// commit anything of its own term, while reads keep coming to F. A
// linearizable read on F must see the acknowledged write; the bug is that
// F answers from a state that does not have it yet (its commit index is
// still the one it had as a follower).
func TestReadAfterLeaderChangeIsNotStale(t *testing.T) {
	if testing.Short() {
		t.Skip("leader-change scenario")
	}
	c := clustertest.Start(t, 3, clustertest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	stale := 0
	for round := 0; round < 10 && ctx.Err() == nil; round++ {
		c.Heal()
		c.WaitConverged()
		l := c.Leader()
		var f, b *clustertest.Node
		for _, n := range c.Up() {
			switch {
			case n == l:
			case f == nil:
				f = n
			default:
				b = n
			}
		}
		// B falls behind: cut off from L (not from F), while L commits
		// a few hundred entries with F.
		c.Partition([]*clustertest.Node{b}, []*clustertest.Node{l})
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					id := fmt.Sprintf("r%d-w%d-%d", round, w, i)
					_ = l.Meta.Propose(ctx, &pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: id, Repo: "stale/read"}}})
				}
			}()
		}
		wg.Wait()
		// The write under test, then L cut off at once: F has the entry
		// but most likely not yet the news that it committed.
		x := fmt.Sprintf("r%d-x", round)
		if err := l.Meta.Propose(ctx, &pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: x, Repo: "stale/read"}}}); err != nil {
			t.Fatalf("round %d: write: %v", round, err)
		}
		acked := time.Now()
		c.Partition([]*clustertest.Node{l}, []*clustertest.Node{f, b})
		// Read x on F until 200 reads have answered (the leader election
		// runs meanwhile); every answer must know x.
		deadline := time.Now().Add(20 * time.Second)
		roundStale := 0
		var first, last time.Duration
		var firstErr error
		for answered := 0; answered < 200 && time.Now().Before(deadline); {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			_, err := f.Meta.Upload(rctx, x)
			rcancel()
			switch {
			case err == nil:
				answered++
			case isUnknown(err):
				answered++
				if roundStale == 0 {
					first, firstErr = time.Since(acked), err
				}
				roundStale++
				last = time.Since(acked)
			default:
				time.Sleep(time.Millisecond) // no leader yet
			}
		}
		if roundStale > 0 {
			stale += roundStale
			t.Errorf("round %d: %d linearizable reads on %s (the new leader) from %v to %v after the write was acknowledged did not see it: %v",
				round, roundStale, f.ID, first.Round(time.Millisecond), last.Round(time.Millisecond), firstErr)
		}
	}
	if stale > 0 {
		t.Logf("%d stale reads", stale)
	}
}

func isUnknown(err error) bool {
	return err != nil && (contains(err.Error(), "unknown") || contains(err.Error(), "not found"))
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
