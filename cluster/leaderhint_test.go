package cluster_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/cluster/clustertest"
	"github.com/strata-registry/strata/metastore"
)

// A node without the meta role (a frontend) seeded with a follower learns
// the leader from the first answer and sends later requests straight to it;
// when the leader dies, it forgets it and learns the new one.
func TestFrontendLearnsTheLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := clustertest.Start(t, 3, clustertest.Options{})
	leader, follower := c.Leader(), c.Follower()
	peers := cluster.NewPeers([]string{follower.GRPCAddr}, nil)
	t.Cleanup(func() { peers.Close() })
	front, err := cluster.NewMeta(cluster.MetaConfig{Peers: peers})
	if err != nil {
		t.Fatal(err)
	}
	if h := front.LeaderHint(); h != "" {
		t.Fatalf("hint before any request: %q", h)
	}
	// A read of something absent is still an answer from the leader.
	if _, err := front.Tag(ctx, "nothing", "here"); !errors.Is(err, metastore.ErrTagUnknown) {
		t.Fatalf("Tag = %v, want ErrTagUnknown", err)
	}
	if h := front.LeaderHint(); h != leader.GRPCAddr {
		t.Fatalf("hint after a read relayed by the follower = %q, want the leader %s", h, leader.GRPCAddr)
	}
	// Proposals go to the leader directly and keep the hint.
	if err := front.Propose(ctx, commitBlob("hinted", 1)); err != nil {
		t.Fatal(err)
	}
	if h := front.LeaderHint(); h != leader.GRPCAddr {
		t.Fatalf("hint after a proposal = %q", h)
	}

	c.Kill(leader)
	var next *clustertest.Node
	for next == nil || next == leader {
		next = c.Leader()
	}
	if _, err := front.Tag(ctx, "hinted", "none"); !errors.Is(err, metastore.ErrTagUnknown) {
		t.Fatalf("read after the leader died: %v, want ErrTagUnknown", err)
	}
	if h := front.LeaderHint(); h != next.GRPCAddr {
		t.Fatalf("hint after the failover = %q, want the new leader %s", h, next.GRPCAddr)
	}
}
