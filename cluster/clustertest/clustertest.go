// Package clustertest starts in-process Strata metadata clusters built from
// the real constructors: each node has its own Pebble database and Raft log
// on disk, Raft over real TCP (through a cluster.Bridge so links can be cut),
// and the real gRPC service for forwarding and membership. Tests use it to
// kill leaders, partition minorities, change membership and restart nodes.
package clustertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Node is one meta node of a test cluster.
type Node struct {
	ID       string
	Dir      string
	RaftAddr string
	GRPCAddr string

	Store   *metastore.Store
	Raft    *cluster.Node
	Meta    *cluster.Meta
	Service *cluster.Service
	Bridge  *cluster.Bridge

	grpc   *grpc.Server
	peers  *cluster.Peers
	cancel context.CancelFunc
	up     atomic.Bool
}

// Up reports whether the node is running.
func (n *Node) Up() bool { return n.up.Load() }

// Options tune a test cluster.
type Options struct {
	SnapshotThreshold uint64
	TrailingLogs      uint64
	ReadConsistency   string
	NoReadLease       bool
}

// Cluster is a set of meta nodes.
type Cluster struct {
	t     testing.TB
	opts  Options
	mu    sync.Mutex
	Nodes []*Node
}

// Start starts n meta nodes: the first bootstraps, the others join through
// it. The cluster is stopped when the test ends.
func Start(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t, opts: opts}
	t.Cleanup(c.Stop)
	for i := 0; i < n; i++ {
		c.AddNode()
	}
	return c
}

// AddNode starts one more meta node and joins it (the first one
// bootstraps).
func (c *Cluster) AddNode() *Node {
	c.t.Helper()
	c.mu.Lock()
	id := fmt.Sprintf("m%d", len(c.Nodes)+1)
	n := &Node{ID: id, Dir: filepath.Join(c.t.TempDir(), id), RaftAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0"}
	first := len(c.Nodes) == 0
	var seed string
	for _, o := range c.Nodes {
		if o.Up() {
			seed = o.GRPCAddr
			break
		}
	}
	c.Nodes = append(c.Nodes, n)
	c.mu.Unlock()
	c.start(n, first, seed)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	self := c.record(n)
	if first {
		if err := n.Raft.WaitLeader(ctx); err != nil {
			c.t.Fatal(err)
		}
		if err := n.Meta.Propose(ctx, &pb.Command{Op: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNode{Node: self}}}); err != nil {
			c.t.Fatal(err)
		}
		return n
	}
	for {
		err := cluster.Join(ctx, n.Meta, self)
		if err == nil {
			return n
		}
		if ctx.Err() != nil {
			c.t.Fatalf("join %s: %v", id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) record(n *Node) *pb.NodeRecord {
	return &pb.NodeRecord{Id: n.ID, RaftAddr: n.RaftAddr, GrpcAddr: n.GRPCAddr, Roles: []string{cluster.RoleMeta}, Zone: n.ID}
}

// start opens the node's state and starts Raft and gRPC on its addresses.
func (c *Cluster) start(n *Node, bootstrap bool, seed string) {
	c.t.Helper()
	var err error
	if n.Store, err = metastore.Open(filepath.Join(n.Dir, "pebble")); err != nil {
		c.t.Fatal(err)
	}
	if n.Bridge, err = cluster.NewBridge(n.RaftAddr); err != nil {
		c.t.Fatal(err)
	}
	n.RaftAddr = n.Bridge.Addr().String()
	n.Raft, err = cluster.Open(cluster.Config{NodeID: n.ID, Dir: filepath.Join(n.Dir, "raft"), StreamLayer: n.Bridge,
		Bootstrap: bootstrap, SnapshotThreshold: c.opts.SnapshotThreshold, TrailingLogs: c.opts.TrailingLogs,
		NoReadLease: c.opts.NoReadLease}, n.Store)
	if err != nil {
		c.t.Fatal(err)
	}
	var seeds []string
	if seed != "" {
		seeds = []string{seed}
	}
	n.peers = cluster.NewPeers(seeds, nil)
	if n.Meta, err = cluster.NewMeta(cluster.MetaConfig{Node: n.Raft, Store: n.Store, Peers: n.peers,
		ReadConsistency: c.opts.ReadConsistency}); err != nil {
		c.t.Fatal(err)
	}
	if n.Service, err = cluster.NewService(n.Meta, time.Minute, nil); err != nil {
		c.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", n.GRPCAddr)
	if err != nil {
		c.t.Fatal(err)
	}
	n.GRPCAddr = ln.Addr().String()
	n.grpc = grpc.NewServer(cluster.ServerOptions(nil)...)
	n.Service.Register(n.grpc)
	go n.grpc.Serve(ln)
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go n.Service.RunLeaderDuties(ctx)
	n.up.Store(true)
}

// Kill stops a node abruptly: its Raft, gRPC and database go away. Nothing
// that was not already durable survives, as after a crash of the process.
func (c *Cluster) Kill(n *Node) {
	c.t.Helper()
	if !n.up.CompareAndSwap(true, false) {
		return
	}
	n.cancel()
	n.grpc.Stop()
	n.Raft.Close()
	n.peers.Close()
	n.Store.Close()
}

// Restart starts a killed node again on the same data and addresses.
func (c *Cluster) Restart(n *Node) {
	c.t.Helper()
	c.start(n, false, "")
	for _, o := range c.all() {
		if o != n && o.Up() {
			n.peers.SetSeeds([]string{o.GRPCAddr})
			break
		}
	}
}

// Rejoin restarts a killed node with an empty disk: the same id and
// addresses, no state; it joins again and must catch up from the others.
func (c *Cluster) Rejoin(n *Node) {
	c.t.Helper()
	if err := os.RemoveAll(n.Dir); err != nil {
		c.t.Fatal(err)
	}
	var seed string
	for _, o := range c.all() {
		if o != n && o.Up() {
			seed = o.GRPCAddr
			break
		}
	}
	c.start(n, false, seed)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		err := cluster.Join(ctx, n.Meta, c.record(n))
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			c.t.Fatalf("rejoin %s: %v", n.ID, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop kills every node.
func (c *Cluster) Stop() {
	for _, n := range c.all() {
		c.Kill(n)
	}
}

// all is a snapshot of every node ever started (AddNode may run
// concurrently).
func (c *Cluster) all() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.Nodes...)
}

// Up returns the running nodes.
func (c *Cluster) Up() []*Node {
	var out []*Node
	for _, n := range c.all() {
		if n.Up() {
			out = append(out, n)
		}
	}
	return out
}

// Leader waits until exactly one running node among nodes (default: all
// running ones) leads, and returns it.
func (c *Cluster) Leader(nodes ...*Node) *Node {
	c.t.Helper()
	if len(nodes) == 0 {
		nodes = c.Up()
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var leaders []*Node
		for _, n := range nodes {
			if n.Up() && n.Raft.IsLeader() {
				leaders = append(leaders, n)
			}
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatal("no single leader within 20s")
	return nil
}

// Follower returns a running node that is not the leader.
func (c *Cluster) Follower() *Node {
	c.t.Helper()
	l := c.Leader()
	for _, n := range c.Up() {
		if n != l {
			return n
		}
	}
	c.t.Fatal("no running follower")
	return nil
}

// ProposeUploads proposes n OpenUpload commands through via, with ids
// prefix-0, prefix-1, ..., and returns the acknowledged ids (every one, or
// the test fails): small writes whose presence on every replica a test can
// check afterwards.
func (c *Cluster) ProposeUploads(ctx context.Context, via *Node, prefix string, n int) []string {
	c.t.Helper()
	ids := make([]string, 0, n)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if err := via.Meta.Propose(ctx, &pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: id, Repo: "snap/install"}}}); err != nil {
			c.t.Fatalf("propose %s: %v", id, err)
		}
		ids = append(ids, id)
	}
	return ids
}

// Partition cuts every Raft link between the two groups, both ways.
func (c *Cluster) Partition(a, b []*Node) {
	for _, x := range a {
		for _, y := range b {
			x.Bridge.Cut(y.RaftAddr)
			y.Bridge.Cut(x.RaftAddr)
		}
	}
}

// Heal restores every Raft link.
func (c *Cluster) Heal() {
	var all []string
	for _, n := range c.all() {
		all = append(all, n.RaftAddr)
	}
	for _, n := range c.all() {
		if n.Up() {
			n.Bridge.Heal(all...)
		}
	}
}

// WaitConverged waits until every running node has applied the same index
// and holds the same state, and returns that state's fingerprint.
func (c *Cluster) WaitConverged() [32]byte {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		up := c.Up()
		var fp [32]byte
		same := true
		var applied uint64
		for i, n := range up {
			f, err := n.Store.Fingerprint()
			if err != nil {
				c.t.Fatal(err)
			}
			_, commit, a := n.Raft.Indexes()
			if i == 0 {
				fp, applied = f, a
			} else if f != fp || a != applied || a < commit {
				same = false
			}
			last = fmt.Sprintf("%s applied %d commit %d", n.ID, a, commit)
		}
		if same {
			return fp
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("nodes did not converge within 30s (%s)", last)
	return [32]byte{}
}
