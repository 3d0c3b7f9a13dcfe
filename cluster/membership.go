package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"

	"github.com/strata-registry/strata/blobstore"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Join asks the cluster, through the seeds of meta, to admit self: it is
// registered, and added as a Raft voter if it has the meta role.
func Join(ctx context.Context, meta *Meta, self *pb.NodeRecord) error {
	seeds := meta.peers.Seeds()
	if len(seeds) == 0 {
		return errors.New("cluster: no member to join through (--join)")
	}
	var errs []error
	for _, addr := range seeds {
		c, err := meta.peers.Client(addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = c.Join(cctx, &cpb.JoinRequest{Node: self})
		cancel()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, fromStatus(err)))
	}
	return errors.Join(errs...)
}

// Heartbeat sends one heartbeat to the leader.
func (m *Meta) Heartbeat(ctx context.Context, req *cpb.HeartbeatRequest) error {
	c, err := m.target(ctx)
	if err != nil {
		return err
	}
	_, err = c.Heartbeat(ctx, req)
	return fromStatus(err)
}

// RunHeartbeats tells the leader every interval that node id is alive, with
// its storage usage, until ctx ends.
func RunHeartbeats(ctx context.Context, meta *Meta, id string, usage func(context.Context) (used, free, capacity uint64),
	interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		used, free, capacity := usage(ctx)
		hctx, cancel := context.WithTimeout(ctx, max(interval, time.Second))
		err := meta.Heartbeat(hctx, &cpb.HeartbeatRequest{Id: id, UsedBytes: used, FreeBytes: free, CapacityBytes: capacity})
		cancel()
		if err != nil && !failing && ctx.Err() == nil {
			log.Warn("heartbeat failed", "err", err)
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Ready reports whether this node can serve metadata: a meta node knows a
// leader; any other node can read from the meta nodes.
func (m *Meta) Ready(ctx context.Context) error {
	if m.node != nil {
		if m.node.LeaderID() == "" {
			return ErrNoLeader
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := m.readVia(ctx, &cpb.ReadRequest{Kind: cpb.ReadKind_REPOSITORIES, N: 1}, false)
	return err
}

// StorageView keeps a frontend's list of storage nodes current from the node
// registry, with a gRPC shard client for each (or the local store when the
// node is this process), and rebuilds the blob pipeline when the cluster's
// default erasure geometry changes with the number of storage nodes.
type StorageView struct {
	meta   *Meta
	peers  *Peers
	selfID string
	local  []blobstore.Node
	log    *slog.Logger

	nodes atomic.Pointer[[]blobstore.Node] // current, replaced whole
	count atomic.Int64                     // storage nodes in the registry that are not drained

	usageMu sync.Mutex
	free    map[string]uint64 // last free space each node reported
	full    map[string]bool   // reported no free space, or refused a shard for lack of it, since
	weighed time.Time
}

// NewStorageView returns a view; call NewStore and then Run.
func NewStorageView(meta *Meta, peers *Peers, selfID string, local []blobstore.Node, log *slog.Logger) *StorageView {
	return &StorageView{meta: meta, peers: peers, selfID: selfID, local: local, log: log}
}

// Nodes returns the storage nodes to use now.
func (v *StorageView) Nodes() []blobstore.Node {
	if p := v.nodes.Load(); p != nil {
		return *p
	}
	return nil
}

// refresh reads the registry and rebuilds the node list.
func (v *StorageView) refresh(ctx context.Context) error {
	recs, err := v.meta.Nodes(ctx)
	if err != nil {
		return err
	}
	var nodes []blobstore.Node
	count := 0
	for _, r := range recs {
		if !slices.Contains(r.Roles, RoleStorage) || r.State == metastore.NodeDrained {
			continue
		}
		count++
		if r.State == metastore.NodeDead {
			continue
		}
		info := blobstore.NodeInfo{ID: r.Id, Zone: r.Zone, ReadOnly: r.State == metastore.NodeDraining}
		if r.Id == v.selfID && len(v.local) > 0 {
			nodes = append(nodes, blobstore.Node{Info: info, Shards: v.local[0].Shards})
			continue
		}
		conn, err := v.peers.Conn(r.GrpcAddr)
		if err != nil {
			continue
		}
		nodes = append(nodes, blobstore.Node{Info: info, Shards: blobstore.NewRemoteStore(r.Id, conn)})
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Info.ID < nodes[j].Info.ID })
	v.weigh(ctx, nodes)
	v.nodes.Store(&nodes)
	v.count.Store(int64(count))
	return nil
}

// NoSpace records that node id refused a shard for lack of space
// (blobstore.Config.OnNoSpace): until the node is asked for its free space
// again, placement counts it full.
func (v *StorageView) NoSpace(id string) {
	v.usageMu.Lock()
	if v.full == nil {
		v.full = map[string]bool{}
	}
	if !v.full[id] {
		v.full[id] = true
		v.log.Warn("storage node has no room for shards; placing them elsewhere until it reports free space", "node", id)
	}
	v.usageMu.Unlock()
	if p := v.nodes.Load(); p != nil {
		nodes := slices.Clone(*p)
		for i := range nodes {
			if nodes[i].Info.ID == id {
				nodes[i].Info.Full = true
			}
		}
		v.nodes.Store(&nodes)
	}
}

// usageEvery is how often a frontend asks the storage nodes for their free
// space, which weights placement (rendezvous hashing by free capacity).
const usageEvery = 10 * time.Second

// weigh sets each node's free space, asking the nodes at most every
// usageEvery and remembering the answers in between.
func (v *StorageView) weigh(ctx context.Context, nodes []blobstore.Node) {
	v.usageMu.Lock()
	defer v.usageMu.Unlock()
	if v.free == nil {
		v.free, v.full = map[string]uint64{}, map[string]bool{}
	}
	if time.Since(v.weighed) >= usageEvery {
		v.weighed = time.Now()
		clear(v.full) // the answers below say anew which nodes are full
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				uctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				if u, err := n.Shards.Usage(uctx); err == nil {
					mu.Lock()
					v.free[n.Info.ID] = u.Free
					v.full[n.Info.ID] = u.Free == 0 && u.Capacity > 0
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	for i := range nodes {
		nodes[i].Info.Free = v.free[nodes[i].Info.ID]
		nodes[i].Info.Full = v.full[nodes[i].Info.ID]
	}
}

// BestFit is the default erasure geometry for n storage nodes: 4+2 from six
// nodes, 2+1 from three, 1+1 on two, a single copy on one.
func BestFit(n int) (k, m int) {
	switch {
	case n >= 6:
		return 4, 2
	case n >= 3:
		return 2, 1
	case n == 2:
		return 1, 1
	}
	return 1, 0
}

// geometry applies the cluster default unless cfg sets one.
func (v *StorageView) geometry(cfg blobstore.Config) blobstore.Config {
	if cfg.K <= 0 {
		cfg.K, cfg.M = BestFit(int(v.count.Load()))
	}
	return cfg
}

// NewStore builds the pipeline for the current view, waiting briefly for a
// first registry read so that the geometry fits the cluster.
func (v *StorageView) NewStore(cfg blobstore.Config) (*blobstore.Store, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.refresh(ctx); err != nil {
		v.log.Warn("reading the storage nodes", "err", err)
	}
	return blobstore.New(v.geometry(cfg), v.Nodes)
}

// Run refreshes the view every second until ctx ends, and calls set with a
// new pipeline whenever the default geometry changes.
func (v *StorageView) Run(ctx context.Context, cfg blobstore.Config, set func(*blobstore.Store)) {
	cur := v.geometry(cfg)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := v.refresh(rctx)
		cancel()
		if err != nil {
			continue
		}
		if g := v.geometry(cfg); g.K != cur.K || g.M != cur.M {
			s, err := blobstore.New(g, v.Nodes)
			if err != nil {
				v.log.Error("erasure geometry", "k", g.K, "m", g.M, "err", err)
				continue
			}
			v.log.Info("erasure geometry changed", "k", g.K, "m", g.M, "storage_nodes", v.count.Load())
			set(s)
			cur = g
		}
	}
}

// LoadTLS builds the mutual-TLS configuration of internal gRPC from a
// certificate, its key and the CA that every peer's certificate must chain
// to. All empty: nil (plaintext, as in --dev).
func LoadTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" && caFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("cluster: tls key pair: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("cluster: tls ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("cluster: tls ca %s: no certificates", caFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// ServerOptions are the gRPC server options of a node.
func ServerOptions(tlsConf *tls.Config) []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize),
		experimental.BufferPool(grpcBuffers)}
	if tlsConf != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsConf)))
	}
	return opts
}
