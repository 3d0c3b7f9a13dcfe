package cluster

import (
	"context"
	"errors"
	"time"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Audit compares what the registry places on every healthy storage node
// (the nodeshard index) with what the node's disk holds, and queues for
// repair every shard that is missing there. Reads fetch data shards only
// and scrubbers verify the files a disk has, so without this a lost parity
// shard (or a lost replica of a small blob) would go unnoticed until a read
// happened to need it. It runs on the leader; stats is bounded to
// statsPerSecond. It returns how many shards it found missing.
func (r *Repairer) Audit(ctx context.Context, statsPerSecond int) (int, error) {
	if !r.meta.node.IsLeader() {
		return 0, nil
	}
	view, err := r.refresh()
	if err != nil {
		return 0, err
	}
	if statsPerSecond <= 0 {
		statsPerSecond = 2000
	}
	tick := time.NewTicker(time.Second / time.Duration(statsPerSecond))
	defer tick.Stop()
	missing := 0
	for _, id := range view.ids {
		node := view.byID[id]
		if node.state != metastore.NodeAlive || node.store == nil {
			continue
		}
		after := metastore.ShardLoc{}
		for {
			locs, err := r.meta.store.ShardsOnNode(id, after, 1000)
			if err != nil {
				return missing, err
			}
			if len(locs) == 0 {
				break
			}
			after = locs[len(locs)-1]
			for _, loc := range locs {
				select {
				case <-ctx.Done():
					return missing, ctx.Err()
				case <-tick.C:
				}
				_, err := node.store.Stat(ctx, blobstore.ShardID{Segment: loc.Segment, Index: loc.Index})
				if !errors.Is(err, blobstore.ErrShardNotFound) {
					continue // present, or the node is unreachable (the dead-node path covers it)
				}
				missing++
				err = r.meta.Propose(ctx, &pb.Command{Op: &pb.Command_ReportShard{ReportShard: &pb.ReportShard{
					SegmentId: loc.Segment, Index: loc.Index, Node: id, Reason: "missing on disk (audit)"}}})
				if err != nil && !errors.Is(err, metastore.ErrBlobUnknown) {
					r.log.Warn("audit: reporting a missing shard", "node", id, "segment", loc.Segment, "index", loc.Index, "err", err)
				}
			}
		}
	}
	if missing > 0 {
		r.log.Warn("audit: shards missing on disk queued for repair", "shards", missing)
		r.Kick()
	}
	return missing, nil
}

// RunAudit audits every interval while this node leads, until ctx ends.
func (r *Repairer) RunAudit(ctx context.Context, interval time.Duration, statsPerSecond int) {
	if interval <= 0 {
		interval = 10 * time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := r.Audit(ctx, statsPerSecond); err != nil && ctx.Err() == nil {
			r.log.Warn("audit", "err", err)
		}
	}
}
