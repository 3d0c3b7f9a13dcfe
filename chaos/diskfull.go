package chaos

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"
)

// ShardFSSize is the size of the small filesystem (a tmpfs) that scenarios
// with a full-disk fault mount on every storage node's shard directory.
const ShardFSSize = 1 << 30

// countShardFiles counts the shard files under a shard directory.
func countShardFiles(dir string) int {
	n := 0
	_ = filepath.WalkDir(filepath.Join(dir, "shards"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// diskFull fills the shard filesystem of a storage node (a filler file takes
// every free block, so every write of a shard fails with ENOSPC) for the
// fault's hold, then deletes the filler. While the disk is full, pushes must
// go on being acknowledged: frontends put the node's shards elsewhere (the
// node refuses them with RESOURCE_EXHAUSTED, and the frontends count it
// full until it reports room again), and reads are served as before. After
// the disk is freed the node must take new shards again, and the segments
// written meanwhile with a shard short must be repaired before the next
// fault (so that no segment ever misses more than m shards).
func (in *injector) diskFull(ctx context.Context, f Fault) {
	ev := FaultEvent{Kind: f.Kind}
	df, ok := in.c.be.(diskFiller)
	if !ok {
		ev.Start, ev.Detail = time.Now(), "skipped: the "+in.c.be.Name()+" backend has no small disks to fill"
		in.record(ev)
		return
	}
	id := pickN(in.c.IDs(RoleStorage), 1, f.Pick)[0]
	dir := in.c.ShardDir(id)
	ev.Targets = []string{id}
	acks := in.h.Acks()
	ev.Start = time.Now()
	filled, err := df.Fill(id, 0)
	if err != nil {
		ev.Error = err.Error()
		_ = df.Unfill(id)
		in.record(ev)
		return
	}
	before := countShardFiles(dir)
	in.h.Note("fault: " + string(f.Kind))
	sleepCtx(ctx, f.Hold)
	during := in.h.Acks() - acks
	added := countShardFiles(dir) - before
	if err := df.Unfill(id); err != nil {
		in.fail("freeing the disk of %s: %v", id, err)
	}
	freed := time.Now()
	ev.Detail = fmt.Sprintf("%.0f MiB of filler left no free block for %v; %d pushes acknowledged meanwhile; %d shard files written to it meanwhile",
		float64(filled)/mib, f.Hold.Round(time.Millisecond), during, added)
	if during == 0 && ctx.Err() == nil {
		in.fail("no push was acknowledged in the %v the disk of %s was full: writes did not go around the full node", f.Hold, id)
	}
	// The node takes shards again once it has room.
	after := countShardFiles(dir)
	for countShardFiles(dir) <= after && time.Since(freed) < 60*time.Second && ctx.Err() == nil {
		sleepCtx(ctx, 250*time.Millisecond)
	}
	if n := countShardFiles(dir); n > after {
		ev.Detail += fmt.Sprintf("; took shards again %v after its disk was freed", time.Since(freed).Round(time.Millisecond))
	} else if ctx.Err() == nil {
		in.fail("%s took no new shard within 60s after its disk was freed", id)
		ev.Error = "took no new shard after its disk was freed"
	}
	// Segments written with a shard short wait for repair before the next
	// fault may take storage nodes down.
	if _, _, waited, err := in.c.WaitRepaired(ctx, 2*time.Minute); err != nil {
		ev.Detail += "; repair not done: " + err.Error()
	} else {
		ev.Detail += fmt.Sprintf("; repair done %v later", waited.Round(time.Millisecond))
	}
	in.record(ev)
}
