package clustertest

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// StorageNode is one storage node of a test cluster: a LocalStore on a
// real disk, served by the shard gRPC service on a loopback port, and
// registered in the cluster's node registry with the storage role.
type StorageNode struct {
	ID   string
	Zone string
	Dir  string
	Addr string

	mu    sync.Mutex
	local *blobstore.LocalStore
	srv   *grpc.Server
	up    bool
}

// Local returns the node's store while it runs (nil when stopped).
func (n *StorageNode) Local() *blobstore.LocalStore {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.local
}

// Up reports whether the node runs.
func (n *StorageNode) Up() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.up
}

// Storage is a set of storage nodes registered in a test cluster.
type Storage struct {
	t testing.TB
	c *Cluster
	// Peers holds client connections to the storage nodes (and the meta
	// nodes), for the frontends and repairers of a test.
	Peers *cluster.Peers

	mu    sync.Mutex
	Nodes []*StorageNode
}

// StartStorage starts n storage nodes (s1, s2, ...; each its own zone) and
// registers them through the cluster's leader. They stop when the test ends.
func StartStorage(t testing.TB, c *Cluster, n int) *Storage {
	t.Helper()
	s := &Storage{t: t, c: c, Peers: cluster.NewPeers(nil, nil)}
	t.Cleanup(func() {
		s.mu.Lock()
		nodes := append([]*StorageNode(nil), s.Nodes...)
		s.mu.Unlock()
		for _, nd := range nodes {
			s.Stop(nd)
		}
		s.Peers.Close()
	})
	for range n {
		s.Add()
	}
	return s
}

// Add starts and registers one more storage node.
func (s *Storage) Add() *StorageNode {
	s.t.Helper()
	s.mu.Lock()
	id := fmt.Sprintf("s%d", len(s.Nodes)+1)
	nd := &StorageNode{ID: id, Zone: id, Dir: filepath.Join(s.t.TempDir(), id), Addr: "127.0.0.1:0"}
	s.Nodes = append(s.Nodes, nd)
	s.mu.Unlock()
	s.start(nd)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec := &pb.NodeRecord{Id: nd.ID, GrpcAddr: nd.Addr, Roles: []string{cluster.RoleStorage}, Zone: nd.Zone}
	if err := s.c.Leader().Meta.Propose(ctx, &pb.Command{Op: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNode{Node: rec}}}); err != nil {
		s.t.Fatalf("register %s: %v", id, err)
	}
	return nd
}

func (s *Storage) start(nd *StorageNode) {
	s.t.Helper()
	local, err := blobstore.OpenLocal(nd.ID, nd.Dir)
	if err != nil {
		s.t.Fatal(err)
	}
	var ln net.Listener
	for try := 0; ; try++ { // a restart reuses the address, which may take a moment to free
		if ln, err = net.Listen("tcp", nd.Addr); err == nil || try == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		local.Close()
		s.t.Fatal(err)
	}
	srv := grpc.NewServer()
	blobstore.RegisterShardServer(srv, local)
	go srv.Serve(ln) //nolint:errcheck // ends with Stop
	nd.mu.Lock()
	nd.Addr, nd.local, nd.srv, nd.up = ln.Addr().String(), local, srv, true
	nd.mu.Unlock()
}

// Stop stops a node abruptly: its gRPC server goes away (calls fail as
// unreachable) and its store is closed. Its shards stay on disk.
func (s *Storage) Stop(nd *StorageNode) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if !nd.up {
		return
	}
	nd.up = false
	nd.srv.Stop()
	nd.local.Close()
	nd.local = nil
}

// Restart starts a stopped node again on its directory and address.
func (s *Storage) Restart(nd *StorageNode) {
	s.t.Helper()
	if nd.Up() {
		return
	}
	s.start(nd)
}

// Node returns the node with id.
func (s *Storage) Node(id string) *StorageNode {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, nd := range s.Nodes {
		if nd.ID == id {
			return nd
		}
	}
	s.t.Fatalf("no storage node %s", id)
	return nil
}

// BlobNodes returns every storage node, running or not, as a blob
// pipeline's node source sees them (a stopped node's calls fail as
// unreachable). It ignores the registry; cluster.StorageView follows it.
func (s *Storage) BlobNodes() []blobstore.Node {
	s.mu.Lock()
	nodes := append([]*StorageNode(nil), s.Nodes...)
	s.mu.Unlock()
	var out []blobstore.Node
	for _, nd := range nodes {
		conn, err := s.Peers.Conn(nd.Addr)
		if err != nil {
			s.t.Fatal(err)
		}
		out = append(out, blobstore.Node{Info: blobstore.NodeInfo{ID: nd.ID, Zone: nd.Zone}, Shards: blobstore.NewRemoteStore(nd.ID, conn)})
	}
	return out
}

// List returns the storage nodes started so far.
func (s *Storage) List() []*StorageNode {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*StorageNode(nil), s.Nodes...)
}

// AwaitReachable waits until every connection of peers to nd is ready,
// skipping gRPC's reconnection backoff (after a Restart).
func AwaitReachable(ctx context.Context, nd *StorageNode, peers ...*cluster.Peers) error {
	for _, p := range peers {
		conn, err := p.Conn(nd.Addr)
		if err != nil {
			return err
		}
		conn.ResetConnectBackoff()
		conn.Connect()
		for st := conn.GetState(); st != connectivity.Ready; st = conn.GetState() {
			if !conn.WaitForStateChange(ctx, st) {
				return fmt.Errorf("storage node %s at %s: %s: %w", nd.ID, nd.Addr, st, ctx.Err())
			}
			if conn.GetState() == connectivity.TransientFailure {
				conn.ResetConnectBackoff()
			}
		}
	}
	return nil
}
