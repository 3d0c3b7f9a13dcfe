package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Roles of a node.
const (
	RoleMeta    = "meta"
	RoleStorage = "storage"
	RoleAPI     = "api"
)

// Service is the Cluster gRPC service of a node with the meta role, and the
// leader's duties that come with it: membership changes, heartbeats of
// storage nodes, and declaring silent nodes dead.
type Service struct {
	cpb.UnimplementedClusterServer
	meta      *Meta
	log       *slog.Logger
	deadAfter time.Duration

	mu     sync.Mutex
	beats  map[string]beat // leader's view, in memory
	since  time.Time       // when this node last became leader
	repair *Repairer       // nil unless SetRepairer
	maint  Maintenance     // zero unless SetMaintenance
}

// SetRepairer attaches the node's repairer: Status reports it and Drain
// wakes it.
func (s *Service) SetRepairer(r *Repairer) {
	s.mu.Lock()
	s.repair = r
	s.mu.Unlock()
}

func (s *Service) repairer() *Repairer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.repair
}

type beat struct {
	at                   time.Time
	used, free, capacity uint64
}

// FreeSpace is the free space storage node id reported in its last
// heartbeat to this node, if it is the leader and has heard one.
func (s *Service) FreeSpace(id string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.beats[id]
	return b.free, ok && !b.at.IsZero()
}

// NewService returns the gRPC service over meta, which must have the meta
// role. deadAfter is how long a storage node may stay silent before the
// leader declares it dead.
func NewService(meta *Meta, deadAfter time.Duration, log *slog.Logger) (*Service, error) {
	if meta.node == nil {
		return nil, errors.New("cluster: the cluster service needs the meta role")
	}
	if log == nil {
		log = slog.Default()
	}
	if deadAfter <= 0 {
		deadAfter = 5 * time.Minute
	}
	return &Service{meta: meta, log: log, deadAfter: deadAfter, beats: map[string]beat{}}, nil
}

// Register adds the service to a gRPC server.
func (s *Service) Register(g *grpc.Server) { cpb.RegisterClusterServer(g, s) }

func (s *Service) Propose(ctx context.Context, req *cpb.ProposeRequest) (*cpb.ProposeResponse, error) {
	s.meta.nameLeader(ctx)
	err := s.meta.propose(ctx, req.Command, nil, req.Hops)
	if err != nil && metastore.ErrorCode(err) == "" {
		return nil, toStatus(err)
	}
	return &cpb.ProposeResponse{Result: toResult(err)}, nil
}

func (s *Service) Read(ctx context.Context, req *cpb.ReadRequest) (*cpb.ReadResponse, error) {
	s.meta.nameLeader(ctx)
	resp, err := s.meta.readOnce(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

// forward sends a leader-only request to the leader, once.
func (s *Service) forward(ctx context.Context, hops uint32, call func(cpb.ClusterClient) error) error {
	if hops > 0 {
		return toStatus(ErrNotLeader)
	}
	addr, err := s.meta.leaderGRPC()
	if err != nil {
		return toStatus(err)
	}
	c, err := s.meta.peers.Client(addr)
	if err != nil {
		return toStatus(err)
	}
	return call(c)
}

// Join registers a node and, for meta nodes, adds it as a Raft voter.
func (s *Service) Join(ctx context.Context, req *cpb.JoinRequest) (*cpb.JoinResponse, error) {
	if req.Node == nil || req.Node.Id == "" {
		return nil, toStatus(fmt.Errorf("%w: join needs a node id", metastore.ErrCommandInvalid))
	}
	if !s.meta.node.IsLeader() {
		var resp *cpb.JoinResponse
		err := s.forward(ctx, req.Hops, func(c cpb.ClusterClient) error {
			var err error
			resp, err = c.Join(ctx, &cpb.JoinRequest{Node: req.Node, Hops: req.Hops + 1})
			return err
		})
		return resp, err
	}
	if err := s.join(ctx, req.Node); err != nil {
		return nil, toStatus(err)
	}
	return &cpb.JoinResponse{LeaderId: s.meta.node.cfg.NodeID}, nil
}

func (s *Service) join(ctx context.Context, n *pb.NodeRecord) error {
	if err := s.meta.node.Propose(ctx, &pb.Command{RequestId: newRequestID(),
		Op: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNode{Node: n}}}); err != nil {
		return err
	}
	if slices.Contains(n.Roles, RoleMeta) && n.RaftAddr != "" {
		if err := s.meta.node.AddVoter(ctx, n.Id, n.RaftAddr); err != nil {
			return err
		}
	}
	s.log.Info("node joined", "node", n.Id, "roles", n.Roles, "grpc", n.GrpcAddr, "raft", n.RaftAddr)
	return nil
}

// Remove takes a node out of Raft and the registry.
func (s *Service) Remove(ctx context.Context, req *cpb.RemoveRequest) (*cpb.RemoveResponse, error) {
	if !s.meta.node.IsLeader() {
		err := s.forward(ctx, req.Hops, func(c cpb.ClusterClient) error {
			_, err := c.Remove(ctx, &cpb.RemoveRequest{Id: req.Id, Hops: req.Hops + 1})
			return err
		})
		return &cpb.RemoveResponse{}, err
	}
	if n, err := s.meta.store.CountShardsOnNode(req.Id); err == nil && n > 0 {
		return nil, status.Errorf(codes.FailedPrecondition,
			"%s still holds %d shards: drain it (strata node drain %s --wait) or let repair move them first", req.Id, n, req.Id)
	}
	if err := s.meta.node.RemoveServer(ctx, req.Id); err != nil {
		return nil, toStatus(err)
	}
	err := s.meta.node.Propose(ctx, &pb.Command{RequestId: newRequestID(),
		Op: &pb.Command_RemoveNode{RemoveNode: &pb.RemoveNode{Id: req.Id}}})
	if err != nil && !errors.Is(err, metastore.ErrNodeUnknown) {
		return nil, toStatus(err)
	}
	s.mu.Lock()
	delete(s.beats, req.Id)
	s.mu.Unlock()
	s.log.Info("node removed", "node", req.Id)
	return &cpb.RemoveResponse{}, nil
}

// Heartbeat records that a node is alive; a node the registry had declared
// dead is declared alive again.
func (s *Service) Heartbeat(ctx context.Context, req *cpb.HeartbeatRequest) (*cpb.HeartbeatResponse, error) {
	if !s.meta.node.IsLeader() {
		err := s.forward(ctx, req.Hops, func(c cpb.ClusterClient) error {
			fwd := proto.Clone(req).(*cpb.HeartbeatRequest)
			fwd.Hops++
			_, err := c.Heartbeat(ctx, fwd)
			return err
		})
		return &cpb.HeartbeatResponse{}, err
	}
	s.mu.Lock()
	s.beats[req.Id] = beat{at: time.Now(), used: req.UsedBytes, free: req.FreeBytes, capacity: req.CapacityBytes}
	s.mu.Unlock()
	if rec, err := s.meta.store.Node(req.Id); err == nil && rec.State == metastore.NodeDead {
		s.setState(ctx, req.Id, metastore.NodeAlive)
	}
	return &cpb.HeartbeatResponse{}, nil
}

func (s *Service) setState(ctx context.Context, id, state string) {
	err := s.meta.node.Propose(ctx, &pb.Command{RequestId: newRequestID(),
		Op: &pb.Command_SetNodeState{SetNodeState: &pb.SetNodeState{Id: id, State: state}}})
	if err != nil {
		s.log.Warn("setting node state", "node", id, "state", state, "err", err)
		return
	}
	s.log.Info("node state changed", "node", id, "state", state)
	if r := s.repairer(); r != nil && state == metastore.NodeDead {
		r.Kick() // its shards need rebuilding now
	}
}

// Status describes the cluster. A follower asks the leader, which alone
// knows heartbeats, and falls back to its own view.
func (s *Service) Status(ctx context.Context, req *cpb.StatusRequest) (*cpb.StatusResponse, error) {
	if !s.meta.node.IsLeader() {
		var resp *cpb.StatusResponse
		err := s.forward(ctx, 0, func(c cpb.ClusterClient) error {
			fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			var err error
			resp, err = c.Status(fctx, &cpb.StatusRequest{ShardCounts: req.ShardCounts})
			return err
		})
		if err == nil && resp != nil && resp.Leader != "" {
			return resp, nil
		}
	}
	return s.localStatus(req)
}

// localStatus is this node's own view.
func (s *Service) localStatus(req *cpb.StatusRequest) (*cpb.StatusResponse, error) {
	n := s.meta.node
	last, commit, applied := n.Indexes()
	resp := &cpb.StatusResponse{
		NodeId: n.cfg.NodeID, State: n.State(), Leader: n.LeaderID(), Term: n.Term(),
		LastIndex: last, CommitIndex: commit, AppliedIndex: applied,
	}
	resp.FirstIndex, resp.LastSnapshotIndex = n.LogBounds()
	servers, err := n.Servers()
	if err != nil {
		return nil, toStatus(err)
	}
	suffrage := map[string]string{}
	for _, sv := range servers {
		suffrage[string(sv.ID)] = map[bool]string{true: "voter", false: "nonvoter"}[sv.Suffrage == 0]
	}
	nodes, err := s.meta.store.Nodes()
	if err != nil {
		return nil, toStatus(err)
	}
	if n, err := s.meta.store.CountRepairQueue(); err == nil {
		resp.RepairQueueLength = uint64(n)
	}
	if r := s.repairer(); r != nil {
		resp.Repair = r.Status()
		resp.Repair.QueueLength = resp.RepairQueueLength
	}
	counts := map[string]uint64{}
	if req.GetShardCounts() {
		for _, rec := range nodes {
			if slices.Contains(rec.Roles, RoleStorage) {
				if n, err := s.meta.store.CountShardsOnNode(rec.Id); err == nil {
					counts[rec.Id] = uint64(n)
				}
			}
		}
	}
	seen := map[string]bool{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rec := range nodes {
		seen[rec.Id] = true
		m := &cpb.Member{Node: rec, Suffrage: suffrage[rec.Id], Leader: rec.Id == resp.Leader, ShardCount: counts[rec.Id]}
		if b, ok := s.beats[rec.Id]; ok {
			m.LastHeartbeatUnixNano, m.UsedBytes, m.FreeBytes, m.CapacityBytes = b.at.UnixNano(), b.used, b.free, b.capacity
		}
		resp.Members = append(resp.Members, m)
	}
	for _, sv := range servers { // in Raft but not (yet) registered
		if !seen[string(sv.ID)] {
			resp.Members = append(resp.Members, &cpb.Member{
				Node:     &pb.NodeRecord{Id: string(sv.ID), RaftAddr: string(sv.Address), Roles: []string{RoleMeta}},
				Suffrage: suffrage[string(sv.ID)], Leader: string(sv.ID) == resp.Leader,
			})
		}
	}
	return resp, nil
}

// SnapshotSave streams a consistent snapshot of this node's state machine.
func (s *Service) SnapshotSave(req *cpb.SnapshotSaveRequest, stream cpb.Cluster_SnapshotSaveServer) error {
	if err := s.meta.node.LinearizableRead(stream.Context()); err != nil {
		return toStatus(err)
	}
	sn := s.meta.store.Snapshot()
	defer sn.Release()
	_, err := sn.WriteTo(&chunkWriter{send: func(b []byte) error {
		return stream.Send(&cpb.SnapshotChunk{Data: b})
	}})
	return err
}

type chunkWriter struct{ send func([]byte) error }

func (w *chunkWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += 1 << 20 {
		end := min(off+1<<20, len(p))
		if err := w.send(append([]byte(nil), p[off:end]...)); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// RunLeaderDuties declares storage nodes dead when they have been silent
// past deadAfter, while this node leads. It returns when ctx ends.
func (s *Service) RunLeaderDuties(ctx context.Context) {
	t := time.NewTicker(s.deadAfter / 10)
	defer t.Stop()
	wasLeader := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		leader := s.meta.node.IsLeader()
		if leader && !wasLeader {
			// A new leader has heard no heartbeats yet: give every node
			// a full deadAfter from now.
			s.mu.Lock()
			s.since = time.Now()
			s.beats = map[string]beat{}
			s.mu.Unlock()
		}
		wasLeader = leader
		if !leader {
			continue
		}
		nodes, err := s.meta.store.Nodes()
		if err != nil {
			continue
		}
		now := time.Now()
		for _, n := range nodes {
			// A draining node stays draining when it goes silent: the
			// repairer rebuilds what it cannot copy off it, and the drain is
			// not forgotten should it come back.
			if !slices.Contains(n.Roles, RoleStorage) || n.State != metastore.NodeAlive {
				continue
			}
			s.mu.Lock()
			last := s.beats[n.Id].at
			if last.IsZero() {
				// Not heard from since this node leads: count from then, or
				// from when the node joined or last changed state, if later
				// (a node that just joined has not sent its first beat).
				last = s.since
				if upd := time.Unix(0, n.UpdatedUnixNano); upd.After(last) {
					last = upd
				}
			}
			s.mu.Unlock()
			if now.Sub(last) > s.deadAfter {
				s.log.Warn("storage node silent, declaring it dead", "node", n.Id, "silent_for", now.Sub(last).Round(time.Second))
				s.setState(ctx, n.Id, metastore.NodeDead)
			}
		}
	}
}
