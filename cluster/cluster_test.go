package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-registry/strata/api"
	"github.com/strata-registry/strata/cluster"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/cluster/clustertest"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

func dg(i int) string { return fmt.Sprintf("sha256:%064x", i) }

func commitBlob(repo string, i int) *pb.Command {
	return &pb.Command{Op: &pb.Command_CommitBlob{CommitBlob: &pb.CommitBlob{
		Repo: repo, Digest: dg(i), Size: 1, Segments: []*pb.Segment{{Id: fmt.Sprintf("seg-%d", i), Length: 1, K: 1, ShardSize: 1}},
	}}}
}

func tagCmd(repo, tag string, i int) *pb.Command {
	return &pb.Command{Op: &pb.Command_PutManifest{PutManifest: &pb.PutManifest{
		Repo: repo, Digest: dg(1_000_000 + i), MediaType: "application/vnd.oci.image.manifest.v1+json",
		Body: []byte(fmt.Sprintf(`{"schemaVersion":2,"n":%d}`, i)), Tags: []string{tag},
	}}}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// checkBlobs asserts that every node in nodes has the blobs [0, n) of repo.
func checkBlobs(t *testing.T, nodes []*clustertest.Node, repo string, acked []int) {
	t.Helper()
	for _, n := range nodes {
		for _, i := range acked {
			if _, err := n.Store.RepoBlob(repo, dg(i)); err != nil {
				t.Fatalf("%s lost acknowledged blob %d: %v", n.ID, i, err)
			}
		}
	}
}

// Leader SIGKILL: a new leader is elected, writes continue through any
// member, and nothing acknowledged is lost.
func TestLeaderFailover(t *testing.T) {
	for _, size := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d-nodes", size), func(t *testing.T) {
			c := clustertest.Start(t, size, clustertest.Options{})
			var acked []int
			for i := 0; i < 20; i++ {
				via := c.Nodes[i%size]
				if err := via.Meta.Propose(ctxT(t, 10*time.Second), commitBlob("r", i)); err != nil {
					t.Fatal(err)
				}
				acked = append(acked, i)
			}
			old := c.Leader()
			c.Kill(old)
			var follower *clustertest.Node
			for _, n := range c.Up() {
				follower = n
			}
			// The proposal waits out the election and lands.
			start := time.Now()
			if err := follower.Meta.Propose(ctxT(t, 15*time.Second), commitBlob("r", 100)); err != nil {
				t.Fatalf("write after leader loss: %v", err)
			}
			t.Logf("first write after killing the leader took %v", time.Since(start))
			acked = append(acked, 100)
			if nl := c.Leader(); nl == old {
				t.Fatal("dead node still leads")
			}
			c.WaitConverged()
			checkBlobs(t, c.Up(), "r", acked)
			// The old leader comes back as a follower and catches up.
			c.Restart(old)
			c.WaitConverged()
			checkBlobs(t, []*clustertest.Node{old}, "r", acked)
		})
	}
}

// A minority partition refuses writes with a clear error, and never serves a
// tag older than a write acknowledged by the majority.
func TestMinorityPartition(t *testing.T) {
	c := clustertest.Start(t, 5, clustertest.Options{})
	leader := c.Leader()
	if err := leader.Meta.Propose(ctxT(t, 10*time.Second), tagCmd("r", "latest", 1)); err != nil {
		t.Fatal(err)
	}
	c.WaitConverged()
	// Cut the leader and one follower off from the other three.
	var minority, majority []*clustertest.Node
	minority = append(minority, leader)
	for _, n := range c.Nodes {
		if n == leader {
			continue
		}
		if len(minority) < 2 {
			minority = append(minority, n)
		} else {
			majority = append(majority, n)
		}
	}
	c.Partition(minority, majority)
	newLeader := c.Leader(majority...)
	if err := newLeader.Meta.Propose(ctxT(t, 10*time.Second), tagCmd("r", "latest", 2)); err != nil {
		t.Fatalf("majority write: %v", err)
	}
	for _, n := range minority {
		err := n.Meta.Propose(ctxT(t, 1500*time.Millisecond), tagCmd("r", "latest", 3))
		if err == nil {
			t.Fatalf("minority node %s acknowledged a write", n.ID)
		}
		if !errors.Is(err, cluster.ErrNotLeader) && !errors.Is(err, cluster.ErrNoLeader) &&
			!errors.Is(err, cluster.ErrUnreachable) && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("minority write failed with an unclear error: %v", err)
		}
		tag, err := n.Meta.Tag(ctxT(t, 1500*time.Millisecond), "r", "latest")
		if err == nil && tag.Digest != dg(1_000_002) {
			t.Fatalf("minority node %s served stale tag %s after the majority acknowledged a newer one", n.ID, tag.Digest)
		}
	}
	// An HTTP client of a frontend on the minority side gets 503 with an OCI
	// error body, and Retry-After.
	hs := httptest.NewServer(api.New(api.Config{RequestTimeout: 1500 * time.Millisecond}, minority[1].Meta, nil).Handler())
	defer hs.Close()
	body := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` +
		strings.Repeat("a", 64) + `","size":2},"layers":[]}`
	req, _ := http.NewRequest("PUT", hs.URL+"/v2/r/manifests/latest", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), `"code":"UNAVAILABLE"`) || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("minority frontend answered %d %s", resp.StatusCode, b)
	}
	for _, n := range majority {
		tag, err := n.Meta.Tag(ctxT(t, 10*time.Second), "r", "latest")
		if err != nil || tag.Digest != dg(1_000_002) {
			t.Fatalf("majority node %s: %v %v", n.ID, tag, err)
		}
	}
	c.Heal()
	c.WaitConverged()
	for _, n := range minority {
		tag, err := n.Meta.Tag(ctxT(t, 10*time.Second), "r", "latest")
		if err != nil || tag.Digest != dg(1_000_002) {
			t.Fatalf("healed node %s: %v %v", n.ID, tag, err)
		}
	}
}

// Members are added and removed while writes run; nothing acknowledged is
// lost and nobody restarts.
func TestMembershipChangesUnderLoad(t *testing.T) {
	c := clustertest.Start(t, 3, clustertest.Options{})
	var (
		mu    sync.Mutex
		acked []int
		stop  atomic.Bool
		wg    sync.WaitGroup
		next  atomic.Int64
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				i := int(next.Add(1))
				up := c.Up()
				via := up[i%len(up)]
				if err := via.Meta.Propose(ctxT(t, 15*time.Second), commitBlob("load", i)); err == nil {
					mu.Lock()
					acked = append(acked, i)
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	n4 := c.AddNode()
	n5 := c.AddNode()
	time.Sleep(300 * time.Millisecond)
	victim := c.Nodes[1]
	if _, err := clusterClientRemove(t, c, victim.ID); err != nil {
		t.Fatal(err)
	}
	c.Kill(victim)
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if len(acked) < 20 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}
	c.WaitConverged()
	checkBlobs(t, c.Up(), "load", acked)
	servers, err := c.Leader().Raft.Servers()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, s := range servers {
		ids[string(s.ID)] = true
	}
	if len(servers) != 4 || ids[victim.ID] || !ids[n4.ID] || !ids[n5.ID] {
		t.Fatalf("raft configuration %v", servers)
	}
	if _, err := c.Leader().Store.Node(victim.ID); !errors.Is(err, metastore.ErrNodeUnknown) {
		t.Fatalf("removed node still registered: %v", err)
	}
}

func clusterClientRemove(t *testing.T, c *clustertest.Cluster, id string) (any, error) {
	// Ask a node that is not the leader, to exercise forwarding.
	for _, n := range c.Up() {
		if !n.Raft.IsLeader() && n.ID != id {
			return n.Service.Remove(ctxT(t, 10*time.Second), &cpb.RemoveRequest{Id: id})
		}
	}
	return c.Leader().Service.Remove(ctxT(t, 10*time.Second), &cpb.RemoveRequest{Id: id})
}

// A new member far behind a compacted log is brought up to date by a
// snapshot.
func TestSnapshotInstallToNewMember(t *testing.T) {
	c := clustertest.Start(t, 3, clustertest.Options{SnapshotThreshold: 50, TrailingLogs: 10})
	var acked []int
	for i := 0; i < 150; i++ {
		if err := c.Nodes[0].Meta.Propose(ctxT(t, 10*time.Second), commitBlob("snap", i)); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, i)
	}
	if err := c.Leader().Raft.Snapshot(); err != nil {
		t.Fatal(err)
	}
	n := c.AddNode()
	c.WaitConverged()
	checkBlobs(t, []*clustertest.Node{n}, "snap", acked)
	if st := n.Raft.Stats(); st["last_snapshot_index"] == "0" {
		t.Fatalf("new member did not install a snapshot: %v", st)
	}
}

// All members restarted at once lose nothing.
func TestRestartAllNodes(t *testing.T) {
	c := clustertest.Start(t, 3, clustertest.Options{SnapshotThreshold: 40, TrailingLogs: 5})
	var acked []int
	for i := 0; i < 100; i++ {
		if err := c.Nodes[i%3].Meta.Propose(ctxT(t, 10*time.Second), commitBlob("all", i)); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, i)
	}
	fp := c.WaitConverged()
	for _, n := range c.Nodes {
		c.Kill(n)
	}
	for _, n := range c.Nodes {
		c.Restart(n)
	}
	c.Leader()
	if got := c.WaitConverged(); got != fp {
		t.Fatal("state changed across a full restart")
	}
	checkBlobs(t, c.Nodes, "all", acked)
	if err := c.Nodes[2].Meta.Propose(ctxT(t, 10*time.Second), commitBlob("all", 1000)); err != nil {
		t.Fatal(err)
	}
}

// Stale reads are served by followers from their own state, within the
// staleness bound: they keep answering right after the leader dies, where a
// linearizable read would have to wait for a new leader.
func TestStaleReadsFromFollowers(t *testing.T) {
	c := clustertest.Start(t, 3, clustertest.Options{ReadConsistency: "stale"})
	if err := c.Nodes[0].Meta.Propose(ctxT(t, 10*time.Second), tagCmd("s", "v", 1)); err != nil {
		t.Fatal(err)
	}
	c.WaitConverged()
	// An upload opened through the leader is never reported unknown by a
	// follower that has not applied it yet: absence is the leader's to say.
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("up-%d", i)
		if err := c.Leader().Meta.Propose(ctxT(t, 5*time.Second), &pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: id, Repo: "s"}}}); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Up() {
			if _, err := n.Meta.Upload(ctxT(t, 5*time.Second), id); err != nil {
				t.Fatalf("stale read of a fresh upload on %s: %v", n.ID, err)
			}
		}
	}
	leader := c.Leader()
	c.Kill(leader)
	for _, n := range c.Up() {
		start := time.Now()
		tag, err := n.Meta.Tag(ctxT(t, 5*time.Second), "s", "v")
		if err != nil || tag.Digest != dg(1_000_001) {
			t.Fatalf("stale read on %s: %v %v", n.ID, tag, err)
		}
		if n.Raft.LeaderID() != "" && n.Raft.LeaderID() != leader.ID {
			continue // a new leader was already elected: nothing to prove here
		}
		t.Logf("%s answered a stale read in %v while the leader was down", n.ID, time.Since(start))
	}
}

// A member restarted with an empty disk catches up (from a snapshot, as the
// log was compacted behind it).
func TestMemberWithEmptyDiskCatchesUp(t *testing.T) {
	c := clustertest.Start(t, 3, clustertest.Options{SnapshotThreshold: 30, TrailingLogs: 5})
	var acked []int
	for i := 0; i < 80; i++ {
		if err := c.Nodes[0].Meta.Propose(ctxT(t, 10*time.Second), commitBlob("wipe", i)); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, i)
	}
	var victim *clustertest.Node
	for _, n := range c.Nodes {
		if !n.Raft.IsLeader() {
			victim = n
		}
	}
	c.Kill(victim)
	for i := 80; i < 120; i++ {
		if err := c.Leader().Meta.Propose(ctxT(t, 10*time.Second), commitBlob("wipe", i)); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, i)
	}
	if err := c.Leader().Raft.Snapshot(); err != nil {
		t.Fatal(err)
	}
	c.Rejoin(victim)
	c.WaitConverged()
	checkBlobs(t, []*clustertest.Node{victim}, "wipe", acked)
}

// Proposals and reads in flight on a leader that is closed all return (with
// an error or not), even without a deadline: Raft leaves batched applies it
// had queued unanswered at shutdown, and a request waiting on one must not
// hang. Found in CI: a tag PUT to a frontend whose meta node was killed
// hung, and the test server's Close with it, until the test timeout.
func TestRequestsInFlightEndWhenTheNodeCloses(t *testing.T) {
	c := clustertest.Start(t, 3, clustertest.Options{})
	leader := c.Leader()
	var (
		wg       sync.WaitGroup
		started  atomic.Int64
		answered atomic.Int64
	)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				started.Add(1)
				var err error
				if i%4 == 3 {
					err = leader.Raft.LinearizableRead(context.Background())
				} else {
					err = leader.Raft.Propose(context.Background(), commitBlob(fmt.Sprintf("r%d", w), i))
				}
				answered.Add(1)
				if err != nil {
					return // the node is closing
				}
			}
		}(w)
	}
	for started.Load() < 2000 {
		time.Sleep(5 * time.Millisecond)
	}
	c.Kill(leader)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("%d of %d requests still waiting a minute after the node closed", started.Load()-answered.Load(), started.Load())
	}
}

// The leader answers a steady stream of linearizable reads within its read
// lease, and the lease ends before any other node can be elected: cut off
// from the others, the old leader never serves a tag older than one the new
// leader acknowledged, and its lease has run out before a new leader is
// seen. With leases off, every read takes a heartbeat round.
func TestReadLease(t *testing.T) {
	t.Run("bounded by the election", func(t *testing.T) {
		c := clustertest.Start(t, 3, clustertest.Options{})
		leader := c.Leader()
		ctx := ctxT(t, 30*time.Second)
		if err := leader.Meta.Propose(ctx, tagCmd("r", "latest", 1)); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 200; i++ {
			if tag, err := leader.Meta.Tag(ctx, "r", "latest"); err != nil || tag.Digest != dg(1_000_001) {
				t.Fatalf("read %d: %v %v", i, tag, err)
			}
		}
		leased, confirmed := leader.Raft.ReadCounts()
		if leased < 150 {
			t.Fatalf("%d of 200 reads within the lease (%d after a round of their own)", leased, confirmed)
		}

		var majority []*clustertest.Node
		for _, n := range c.Nodes {
			if n != leader {
				majority = append(majority, n)
			}
		}
		// Reads hammer the old leader from before the cut until well after
		// the new leader acknowledged a newer tag.
		var (
			mu    sync.Mutex
			acked time.Time // when the majority acknowledged tag 2
			stale []string
			stop  = make(chan struct{})
			done  = make(chan struct{})
		)
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				began := time.Now()
				rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				tag, err := leader.Meta.Tag(rctx, "r", "latest")
				cancel()
				mu.Lock()
				if err == nil && !acked.IsZero() && began.After(acked) && tag.Digest != dg(1_000_002) {
					stale = append(stale, fmt.Sprintf("read at +%v after the ack returned %s", began.Sub(acked), tag.Digest))
				}
				mu.Unlock()
			}
		}()
		time.Sleep(50 * time.Millisecond)
		c.Partition([]*clustertest.Node{leader}, majority)
		// The lease the old leader holds now can only end earlier than it
		// says, never later: nothing it proposes commits any more.
		leaseEnd, ok := leader.Raft.ReadLease()
		if !ok {
			t.Fatal("the leader held no read lease while it was being read")
		}
		var elected time.Time
		var newLeader *clustertest.Node
		for deadline := time.Now().Add(20 * time.Second); newLeader == nil && time.Now().Before(deadline); {
			for _, n := range majority {
				if n.Raft.IsLeader() {
					elected, newLeader = time.Now(), n
				}
			}
			time.Sleep(time.Millisecond)
		}
		if newLeader == nil {
			t.Fatal("the majority elected no leader")
		}
		if !leaseEnd.Before(elected) {
			t.Fatalf("the old leader's lease ran until %v after %s was seen leading", leaseEnd.Sub(elected), newLeader.ID)
		}
		if err := newLeader.Meta.Propose(ctx, tagCmd("r", "latest", 2)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		acked = time.Now()
		mu.Unlock()
		time.Sleep(time.Second)
		close(stop)
		<-done
		if len(stale) > 0 {
			t.Fatalf("the cut-off leader served %d stale reads, first: %s", len(stale), stale[0])
		}
	})
	t.Run("off", func(t *testing.T) {
		c := clustertest.Start(t, 3, clustertest.Options{NoReadLease: true})
		leader := c.Leader()
		ctx := ctxT(t, 30*time.Second)
		if err := leader.Meta.Propose(ctx, tagCmd("r", "latest", 1)); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			if _, err := leader.Meta.Tag(ctx, "r", "latest"); err != nil {
				t.Fatal(err)
			}
		}
		if leased, confirmed := leader.Raft.ReadCounts(); leased != 0 || confirmed < 50 {
			t.Fatalf("leases off: %d reads leased, %d confirmed by a round", leased, confirmed)
		}
		if _, ok := leader.Raft.ReadLease(); ok {
			t.Fatal("a lease was granted with leases off")
		}
	})
}
