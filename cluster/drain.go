package cluster

import (
	"context"
	"errors"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// drainSample is how many of a node's shards Drain looks at to learn the
// widest erasure geometry the node takes part in.
const drainSample = 4096

// Drain marks a storage node draining (or, with cancel, alive again) on the
// leader, and wakes the repairer, which moves the node's shards away and
// then marks it drained. Unless forced, it refuses a drain the other alive
// storage nodes cannot absorb: a segment of k+m shards needs k+m distinct
// nodes, so draining one of exactly k+m nodes would leave its segments
// stuck below full redundancy.
func (s *Service) Drain(ctx context.Context, req *cpb.DrainRequest) (*cpb.DrainResponse, error) {
	if req.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "drain: which node?")
	}
	if !s.meta.node.IsLeader() {
		var resp *cpb.DrainResponse
		err := s.forward(ctx, req.Hops, func(c cpb.ClusterClient) error {
			var err error
			resp, err = c.Drain(ctx, &cpb.DrainRequest{Id: req.Id, Cancel: req.Cancel, Force: req.Force, Hops: req.Hops + 1})
			return err
		})
		return resp, err
	}
	st := s.meta.store
	rec, err := st.Node(req.Id)
	if errors.Is(err, metastore.ErrNodeUnknown) {
		return nil, status.Errorf(codes.NotFound, "drain: no node %q in the registry", req.Id)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	if !slices.Contains(rec.Roles, RoleStorage) {
		return nil, status.Errorf(codes.InvalidArgument, "drain: %s is not a storage node (roles %v)", req.Id, rec.Roles)
	}
	target := metastore.NodeDraining
	switch {
	case req.Cancel && (rec.State == metastore.NodeDraining || rec.State == metastore.NodeDrained):
		target = metastore.NodeAlive
	case req.Cancel:
		target = rec.State // nothing to cancel
	case rec.State == metastore.NodeDrained:
		target = rec.State // done already
	case !req.Force && rec.State != metastore.NodeDraining:
		if err := s.checkDrainable(rec.Id); err != nil {
			return nil, err
		}
	}
	if target != rec.State {
		err := s.meta.node.Propose(ctx, &pb.Command{RequestId: newRequestID(),
			Op: &pb.Command_SetNodeState{SetNodeState: &pb.SetNodeState{Id: rec.Id, State: target}}})
		if err != nil {
			return nil, toStatus(err)
		}
		s.log.Info("node state changed", "node", rec.Id, "state", target, "by", "drain")
	}
	if r := s.repairer(); r != nil {
		r.Kick()
	}
	n, err := st.CountShardsOnNode(rec.Id)
	if err != nil {
		return nil, toStatus(err)
	}
	return &cpb.DrainResponse{State: target, ShardCount: uint64(n)}, nil
}

// checkDrainable refuses to drain a node when the other alive storage nodes
// are fewer than the widest geometry of the segments it holds shards of.
func (s *Service) checkDrainable(id string) error {
	st := s.meta.store
	locs, err := st.ShardsOnNode(id, metastore.ShardLoc{}, drainSample)
	if err != nil {
		return toStatus(err)
	}
	widest := uint32(0)
	seen := map[string]bool{}
	for _, l := range locs {
		if seen[l.Segment] {
			continue
		}
		seen[l.Segment] = true
		if _, seg, err := st.Segment(l.Segment); err == nil {
			widest = max(widest, seg.K+seg.M)
		}
	}
	nodes, err := st.Nodes()
	if err != nil {
		return toStatus(err)
	}
	others := 0
	for _, n := range nodes {
		if n.Id != id && slices.Contains(n.Roles, RoleStorage) && n.State == metastore.NodeAlive {
			others++
		}
	}
	if uint32(others) < widest {
		return status.Errorf(codes.FailedPrecondition,
			"drain: %s holds shards of %d-shard segments, and only %d other storage nodes are alive to take them; "+
				"add a storage node first, or drain with force to move what can be moved", id, widest, others)
	}
	return nil
}
