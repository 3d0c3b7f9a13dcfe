package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// FaultEvent is one fault as it was injected.
type FaultEvent struct {
	Seq     int       `json:"seq"`
	Kind    FaultKind `json:"kind"`
	Targets []string  `json:"targets,omitempty"`
	Start   time.Time `json:"start"` // the moment of the kill, stop or damage
	End     time.Time `json:"end"`   // when the targets were back
	Detail  string    `json:"detail,omitempty"`
	Error   string    `json:"error,omitempty"`
	// UnavailableMS is the time from Start to the next acknowledged push;
	// -1 when none followed.
	UnavailableMS float64 `json:"unavailable_ms"`
}

// damage is a shard the injector corrupted or deleted, until repair is
// seen to have healed it.
type damage struct {
	Digest  string    `json:"digest"`
	Segment string    `json:"segment"`
	Index   uint32    `json:"index"`
	Node    string    `json:"node"`
	Kind    FaultKind `json:"kind"`
	At      time.Time `json:"at"`
	Healed  time.Time `json:"healed,omitzero"`
	// Collected is set when the blob was garbage-collected (its image
	// deleted) before the shard was repaired: nothing is left to repair.
	Collected bool   `json:"collected,omitempty"`
	Path      string `json:"path"`
}

// injector carries out a schedule against a Cluster, one fault at a time:
// each fault ends (its targets are back and serving) before the next
// starts, so the cluster is never asked to survive more than the design
// promises: one meta node down of three, at most m storage nodes down or
// damaged in any segment.
type injector struct {
	c    *Cluster
	h    *History
	m    int // parity shards per segment: storage nodes that may be down
	logf func(format string, args ...any)

	mu       sync.Mutex
	events   []FaultEvent
	damaged  []*damage
	failures []string // faults that could not be healed: nodes that did not come back
	touched  map[string]bool
}

func newInjector(c *Cluster, h *History, m int, logf func(string, ...any)) *injector {
	return &injector{c: c, h: h, m: m, logf: logf, touched: map[string]bool{}}
}

// run injects the faults of schedule until the deadline passes (a fault in
// progress is finished) or ctx ends.
func (in *injector) run(ctx context.Context, schedule []Fault, until time.Time) {
	for i, f := range schedule {
		if !sleepUntil(ctx, time.Now().Add(f.Gap)) || time.Now().After(until) {
			return
		}
		in.logf("chaos: fault %d: %s", i+1, f)
		in.inject(ctx, f)
	}
}

// sleepUntil waits until t; false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func (in *injector) record(ev FaultEvent) {
	in.mu.Lock()
	defer in.mu.Unlock()
	ev.Seq = len(in.events) + 1
	if ev.End.IsZero() {
		ev.End = time.Now()
	}
	in.events = append(in.events, ev)
	msg := fmt.Sprintf("chaos: %s %v: %s", ev.Kind, ev.Targets, ev.End.Sub(ev.Start).Round(time.Millisecond))
	if ev.Detail != "" {
		msg += " (" + ev.Detail + ")"
	}
	if ev.Error != "" {
		msg += ": ERROR " + ev.Error
	}
	in.logf("%s", msg)
}

func (in *injector) fail(format string, args ...any) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.failures = append(in.failures, fmt.Sprintf(format, args...))
}

// Events returns the faults injected so far.
func (in *injector) Events() []FaultEvent {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.events)
}

func (in *injector) inject(ctx context.Context, f Fault) {
	switch f.Kind {
	case FaultLeaderKill, FaultMetaKill:
		in.killMeta(ctx, f)
	case FaultStorageKill:
		in.killStorage(ctx, f)
	case FaultPause:
		in.pause(ctx, f, in.c.IDs(""))
	case FaultPartitionLeader:
		lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		leader, err := in.c.WaitLeader(lctx)
		cancel()
		if err != nil {
			in.record(FaultEvent{Kind: f.Kind, Start: time.Now(), Error: "no leader to cut off: " + err.Error()})
			return
		}
		if !in.c.CanCut() {
			in.pause(ctx, f, []string{leader})
			return
		}
		// The leader loses the other meta nodes; frontends and storage
		// nodes still reach it (and it them).
		var others []string
		for _, id := range in.c.IDs(RoleMeta) {
			if id != leader {
				others = append(others, id)
			}
		}
		in.partition(ctx, f, leader, others)
	case FaultPartitionStorage:
		if in.storageBudget(ctx) < 1 {
			in.record(FaultEvent{Kind: f.Kind, Start: time.Now(), Detail: "skipped: damaged shards not repaired yet"})
			return
		}
		if !in.c.CanCut() {
			in.pause(ctx, f, in.c.IDs(RoleStorage))
			return
		}
		id := pickN(in.c.IDs(RoleStorage), 1, f.Pick)[0]
		in.partition(ctx, f, id, slices.DeleteFunc(in.c.IDs(""), func(x string) bool { return x == id }))
	case FaultPartitionFrontend:
		if !in.c.CanCut() {
			in.pause(ctx, f, in.c.IDs(RoleAPI))
			return
		}
		id := pickN(in.c.IDs(RoleAPI), 1, f.Pick)[0]
		in.partition(ctx, f, id, in.c.IDs(RoleMeta))
	case FaultCorrupt, FaultDeleteShards:
		in.damage(ctx, f)
	case FaultRollingRestart:
		in.rollingRestart(ctx)
	case FaultCrashBeforeCommit:
		in.crashBeforeCommit(ctx, f)
	case FaultCrashInRepair:
		in.crashInRepair(ctx, f)
	case FaultCrashInSnapshot:
		in.crashInSnapshotInstall(ctx, f)
	case FaultDiskFull:
		in.diskFull(ctx, f)
	default:
		in.record(FaultEvent{Kind: f.Kind, Start: time.Now(), Error: "unknown fault kind"})
	}
}

// waitUp waits (up to 90s) until every one of ids serves again; a node that
// does not come back is a failure of the run.
func (in *injector) waitUp(ctx context.Context, ids []string) error {
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var errs []error
	for _, id := range ids {
		if err := in.c.WaitUp(wctx, id); err != nil {
			errs = append(errs, err)
			if ctx.Err() == nil {
				in.fail("node %s did not serve again within 90s: %v", id, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (in *injector) killMeta(ctx context.Context, f Fault) {
	ev := FaultEvent{Kind: f.Kind}
	var target string
	if f.Kind == FaultLeaderKill {
		lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		leader, err := in.c.WaitLeader(lctx)
		cancel()
		if err != nil {
			ev.Start, ev.Error = time.Now(), "no leader to kill: "+err.Error()
			in.record(ev)
			return
		}
		target = leader
	} else {
		target = pickN(in.c.IDs(RoleMeta), 1, f.Pick)[0]
	}
	ev.Targets = []string{target}
	ev.Start = time.Now()
	if err := in.c.Kill(target); err != nil {
		ev.Error = err.Error()
		in.record(ev)
		return
	}
	in.h.Note("fault: " + string(f.Kind))
	sleepCtx(ctx, f.Hold)
	ev.Detail = fmt.Sprintf("down %v", f.Hold.Round(time.Millisecond))
	if err := in.c.Restart(target); err != nil {
		ev.Error = err.Error()
		in.fail("restarting %s: %v", target, err)
	} else if err := in.waitUp(ctx, ev.Targets); err != nil {
		ev.Error = err.Error()
	}
	in.record(ev)
}

// storageBudget is how many storage nodes may be taken down now: m, less
// one while a damaged shard waits for repair (so that no segment ever has
// more than m shards missing).
func (in *injector) storageBudget(ctx context.Context) int {
	if in.outstanding(ctx) > 0 {
		return in.m - 1
	}
	return in.m
}

func (in *injector) killStorage(ctx context.Context, f Fault) {
	ev := FaultEvent{Kind: f.Kind}
	n := min(f.Count, in.storageBudget(ctx))
	if n < 1 {
		ev.Start, ev.Detail = time.Now(), "skipped: damaged shards not repaired yet"
		in.record(ev)
		return
	}
	if n < f.Count {
		ev.Detail = fmt.Sprintf("%d of %d nodes (damaged shards not repaired yet); ", n, f.Count)
	}
	ev.Targets = pickN(in.c.IDs(RoleStorage), n, f.Pick)
	ev.Start = time.Now()
	var killed []string
	for _, id := range ev.Targets {
		if err := in.c.Kill(id); err != nil {
			ev.Error = err.Error()
			break
		}
		killed = append(killed, id)
	}
	in.h.Note("fault: " + string(f.Kind))
	sleepCtx(ctx, f.Hold)
	ev.Detail += fmt.Sprintf("down %v", f.Hold.Round(time.Millisecond))
	for _, id := range killed {
		if err := in.c.Restart(id); err != nil {
			ev.Error = err.Error()
			in.fail("restarting %s: %v", id, err)
		}
	}
	if err := in.waitUp(ctx, killed); err != nil && ev.Error == "" {
		ev.Error = err.Error()
	}
	in.record(ev)
}

func (in *injector) pause(ctx context.Context, f Fault, among []string) {
	ev := FaultEvent{Kind: f.Kind, Targets: pickN(among, 1, f.Pick)}
	id := ev.Targets[0]
	ev.Start = time.Now()
	if err := in.c.Pause(id); err != nil {
		ev.Error = err.Error()
		in.record(ev)
		return
	}
	in.h.Note("fault: " + string(f.Kind))
	sleepCtx(ctx, f.Hold)
	ev.Detail = fmt.Sprintf("stopped %v", f.Hold.Round(time.Millisecond))
	if err := in.c.Resume(id); err != nil {
		ev.Error = err.Error()
		in.fail("resuming %s: %v", id, err)
	} else if err := in.waitUp(ctx, ev.Targets); err != nil {
		ev.Error = err.Error()
	}
	in.record(ev)
}

// partition cuts the links between node and each of others (both ways)
// through the proxy layer for f.Hold, then heals them and waits until the
// node serves again.
func (in *injector) partition(ctx context.Context, f Fault, node string, others []string) {
	ev := FaultEvent{Kind: f.Kind, Targets: []string{node}, Start: time.Now()}
	if err := in.c.Cut(node, others); err != nil {
		ev.Error = err.Error()
		_ = in.c.Heal()
		in.record(ev)
		return
	}
	in.h.Note("fault: " + string(f.Kind))
	sleepCtx(ctx, f.Hold)
	if err := in.c.Heal(); err != nil {
		in.fail("healing the links of %s: %v", node, err)
	}
	ev.Detail = fmt.Sprintf("links to %s cut for %v", strings.Join(others, ","), f.Hold.Round(time.Millisecond))
	if in.c.be.Name() == "compose" {
		ev.Detail = fmt.Sprintf("off the network (docker network disconnect) for %v", f.Hold.Round(time.Millisecond))
	}
	if err := in.waitUp(ctx, ev.Targets); err != nil {
		ev.Error = err.Error()
	}
	in.record(ev)
}

// rollingRestart stops every node with SIGTERM and starts it again, one at
// a time: storage nodes, frontends, meta followers, the leader last.
func (in *injector) rollingRestart(ctx context.Context) {
	var order []string
	order = append(order, in.c.IDs(RoleStorage)...)
	order = append(order, in.c.IDs(RoleAPI)...)
	lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	leader, _ := in.c.WaitLeader(lctx)
	cancel()
	for _, id := range in.c.IDs(RoleMeta) {
		if id != leader {
			order = append(order, id)
		}
	}
	if leader != "" {
		order = append(order, leader)
	}
	for _, id := range order {
		if ctx.Err() != nil {
			return
		}
		if slices.Contains(in.c.IDs(RoleStorage), id) && in.storageBudget(ctx) < 1 {
			continue
		}
		ev := FaultEvent{Kind: FaultRollingRestart, Targets: []string{id}, Start: time.Now()}
		clean, err := in.c.Terminate(id, 20*time.Second)
		if err != nil {
			ev.Error = err.Error()
			in.record(ev)
			continue
		}
		if !clean {
			ev.Detail = "did not stop within 20s of SIGTERM: killed; "
			in.h.Unexpected("rolling restart: %s did not stop within 20s of SIGTERM", id)
		}
		in.h.Note("fault: " + string(FaultRollingRestart))
		if err := in.c.Restart(id); err != nil {
			ev.Error = err.Error()
			in.fail("restarting %s: %v", id, err)
		} else if err := in.waitUp(ctx, ev.Targets); err != nil {
			ev.Error = err.Error()
		}
		ev.Detail += "stopped with SIGTERM and started again"
		in.record(ev)
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

// damage corrupts (flips bytes in) or deletes f.Count shard files of
// acknowledged blobs, on running storage nodes, never two shards of one
// segment in a run, and only while no other damage waits for repair and no
// storage node is down (faults are sequential).
func (in *injector) damage(ctx context.Context, f Fault) {
	ev := FaultEvent{Kind: f.Kind, Start: time.Now()}
	if in.outstanding(ctx) > 0 && in.m < 2 {
		ev.Detail = "skipped: damaged shards not repaired yet"
		in.record(ev)
		return
	}
	r := rand.New(rand.NewPCG(f.Pick, 0xda))
	snap := in.h.Snapshot()
	var cands []BlobOp
	for _, b := range snap.LiveBlobs() {
		if b.Blob.Size >= 4*kib {
			cands = append(cands, b)
		}
	}
	slices.SortFunc(cands, func(a, b BlobOp) int { return strings.Compare(a.Repo+a.Blob.Digest, b.Repo+b.Blob.Digest) })
	var details []string
	for tries := 0; len(details) < f.Count && tries < 20*f.Count && len(cands) > 0; tries++ {
		b := cands[r.IntN(len(cands))]
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		layout, err := in.c.Meta().Blob(lctx, b.Blob.Digest)
		cancel()
		if err != nil || len(layout.GetSegments()) == 0 {
			continue
		}
		seg := layout.Segments[r.IntN(len(layout.Segments))]
		if len(seg.Shards) == 0 || in.touched[seg.Id] {
			continue
		}
		ref := seg.Shards[r.IntN(len(seg.Shards))]
		if in.c.State(ref.Node) != NodeRunning {
			continue
		}
		id := blobstore.ShardID{Segment: seg.Id, Index: ref.Index}
		if id.Validate() != nil {
			continue
		}
		path := filepath.Join(in.c.ShardDir(ref.Node), "shards", seg.Id[:2], id.String())
		if err := damageFile(path, f.Kind, r); err != nil {
			continue
		}
		in.touched[seg.Id] = true
		in.mu.Lock()
		in.damaged = append(in.damaged, &damage{Digest: b.Blob.Digest, Segment: seg.Id, Index: ref.Index, Node: ref.Node,
			Kind: f.Kind, At: time.Now(), Path: path})
		in.mu.Unlock()
		ev.Targets = append(ev.Targets, ref.Node)
		details = append(details, fmt.Sprintf("%s on %s (segment %d/%d, k=%d m=%d, of %s)", id, ref.Node,
			slices.Index(layout.Segments, seg)+1, len(layout.Segments), seg.K, seg.M, b.Blob))
	}
	if len(details) == 0 {
		ev.Detail = "no shard to damage yet"
	} else {
		in.h.Note("fault: " + string(f.Kind))
		ev.Detail = strings.Join(details, "; ")
	}
	in.record(ev)
}

// damageFile flips a few bytes in the payload half of a shard file, or
// deletes it.
func damageFile(path string, kind FaultKind, r *rand.Rand) error {
	if kind == FaultDeleteShards {
		return os.Remove(path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if len(b) < 2 {
		return errors.New("empty shard file")
	}
	orig := bytes.Clone(b)
	for i := 0; i < 1+r.IntN(4); i++ {
		off := len(b)/2 + r.IntN(len(b)-len(b)/2)
		b[off] ^= byte(1 + r.IntN(255))
	}
	if bytes.Equal(b, orig) {
		return errors.New("nothing flipped")
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// outstanding checks every damaged shard not yet seen healed and returns
// how many are still damaged: a shard is healed when the layout moved it
// to another node, or its node verifies it again (rebuilt in place).
func (in *injector) outstanding(ctx context.Context) int {
	in.mu.Lock()
	var open []*damage
	for _, d := range in.damaged {
		if d.Healed.IsZero() {
			open = append(open, d)
		}
	}
	in.mu.Unlock()
	n := 0
	for _, d := range open {
		healed, collected := in.healed(ctx, d)
		if healed || collected {
			in.mu.Lock()
			d.Healed, d.Collected = time.Now(), collected
			in.mu.Unlock()
			continue
		}
		n++
	}
	return n
}

// healed reports whether d's shard is whole again, or whether its blob is
// gone (collected).
func (in *injector) healed(ctx context.Context, d *damage) (healed, collected bool) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	layout, err := in.c.Meta().Blob(cctx, d.Digest)
	if errors.Is(err, metastore.ErrBlobUnknown) {
		return false, true
	}
	if err != nil {
		return false, false
	}
	for _, seg := range layout.Segments {
		if seg.Id != d.Segment {
			continue
		}
		for _, ref := range seg.Shards {
			if ref.Index != d.Index {
				continue
			}
			if ref.Node != d.Node {
				return true, false
			}
			ok, _ := in.c.verifyShard(cctx, seg, ref)
			return ok, false
		}
	}
	return false, false
}

// Damage returns the shards damaged so far and whether each was healed.
func (in *injector) Damage(ctx context.Context) []damage {
	in.outstanding(ctx)
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]damage, len(in.damaged))
	for i, d := range in.damaged {
		out[i] = *d
	}
	return out
}

// verifyShard asks the node holding ref to verify it against its checksum
// and compares that with the layout's.
func (c *Cluster) verifyShard(ctx context.Context, seg *pb.Segment, ref *pb.ShardRef) (bool, string) {
	info, err := c.Info(ref.Node)
	if err != nil {
		return false, err.Error()
	}
	conn, err := c.peers.Conn(info.GRPC)
	if err != nil {
		return false, err.Error()
	}
	rs := blobstore.NewRemoteStore(ref.Node, conn)
	si, err := rs.Verify(ctx, blobstore.ShardID{Segment: seg.Id, Index: ref.Index})
	if err != nil {
		return false, err.Error()
	}
	if len(ref.Blake3) == 32 && !bytes.Equal(si.Sum[:], ref.Blake3) {
		return false, "checksum differs from the layout's"
	}
	return true, ""
}

// statShard asks the node holding ref for the shard's size and recorded
// checksum (without reading the payload) and compares with the layout's.
func (c *Cluster) statShard(ctx context.Context, seg *pb.Segment, ref *pb.ShardRef) (bool, string) {
	info, err := c.Info(ref.Node)
	if err != nil {
		return false, err.Error()
	}
	conn, err := c.peers.Conn(info.GRPC)
	if err != nil {
		return false, err.Error()
	}
	rs := blobstore.NewRemoteStore(ref.Node, conn)
	si, err := rs.Stat(ctx, blobstore.ShardID{Segment: seg.Id, Index: ref.Index})
	if err != nil {
		return false, err.Error()
	}
	if len(ref.Blake3) == 32 && !bytes.Equal(si.Sum[:], ref.Blake3) {
		return false, "checksum differs from the layout's"
	}
	if seg.ShardSize > 0 && uint64(si.Size) != seg.ShardSize {
		return false, fmt.Sprintf("size %d, layout says %d", si.Size, seg.ShardSize)
	}
	return true, ""
}

// scrubNudge restarts (SIGTERM, start, wait until it serves), one at a
// time, every storage node that holds a corrupted shard not repaired yet:
// a scrubber passes over its disk when its node starts. Deleted shards are
// left alone: no scrubber can find a file that is not there. It returns the
// nodes restarted.
func (in *injector) scrubNudge(ctx context.Context) []string {
	in.outstanding(ctx)
	nodes := map[string]bool{}
	in.mu.Lock()
	for _, d := range in.damaged {
		if d.Healed.IsZero() && d.Kind == FaultCorrupt {
			nodes[d.Node] = true
		}
	}
	in.mu.Unlock()
	var out []string
	for _, id := range in.c.IDs(RoleStorage) {
		if !nodes[id] || ctx.Err() != nil {
			continue
		}
		if _, err := in.c.Terminate(id, 20*time.Second); err != nil {
			in.fail("scrub restart of %s: %v", id, err)
			continue
		}
		if err := in.c.Restart(id); err != nil {
			in.fail("scrub restart of %s: %v", id, err)
			continue
		}
		_ = in.waitUp(ctx, []string{id})
		in.logf("chaos: restarted %s so that its scrubber passes over the corrupted shards", id)
		out = append(out, id)
	}
	return out
}
