package cluster_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/cluster/clustertest"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// repairEnv is a metadata cluster, storage nodes on real disks behind real
// gRPC, a frontend (a node without the meta role: its proposals are
// forwarded) writing and reading blobs through a StorageView, the leader's
// repairer, and a Service with a short dead-after fed by heartbeats of the
// running storage nodes.
type repairEnv struct {
	shared     bool // segments may hold two shards on one node (repaired while nodes were short)
	t          *testing.T
	ctx        context.Context
	c          *clustertest.Cluster
	leader     *clustertest.Node
	st         *clustertest.Storage
	front      *cluster.Meta
	frontPeers *cluster.Peers
	view       *cluster.StorageView
	blobs      *blobstore.Store
	reporter   *cluster.ShardReporter
	rep        *cluster.Repairer
	client     cpb.ClusterClient
	k, m       int

	mu    sync.Mutex
	data  map[string][]byte // digest -> content
	order []string

	repCancel context.CancelFunc
	repDone   chan struct{}
}

func (e *repairEnv) startRepairer() {
	ctx, cancel := context.WithCancel(e.ctx)
	e.repCancel, e.repDone = cancel, make(chan struct{})
	go func() {
		defer close(e.repDone)
		e.rep.Run(ctx)
	}()
}

// stopRepairer stops the repairer and waits until its pass has ended.
func (e *repairEnv) stopRepairer() {
	if e.repCancel != nil {
		e.repCancel()
		<-e.repDone
		e.repCancel = nil
	}
}

const (
	repairSegSize = 256 << 10
	deadAfter     = 2 * time.Second
)

func newRepairEnv(t *testing.T, storageNodes, k, m int) *repairEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &repairEnv{t: t, ctx: ctx, k: k, m: m, data: map[string][]byte{}}
	e.c = clustertest.Start(t, 1, clustertest.Options{})
	e.leader = e.c.Leader()
	e.st = clustertest.StartStorage(t, e.c, storageNodes)

	peers := cluster.NewPeers([]string{e.leader.GRPCAddr}, nil)
	t.Cleanup(func() { peers.Close() })
	var err error
	e.frontPeers = peers
	if e.front, err = cluster.NewMeta(cluster.MetaConfig{Peers: peers}); err != nil {
		t.Fatal(err)
	}
	e.reporter = cluster.NewShardReporter(e.front, cluster.ReporterConfig{Rate: 1000})
	go e.reporter.Run(ctx)
	view := cluster.NewStorageView(e.front, peers, "", nil, nil)
	e.view = view
	cfg := blobstore.Config{K: k, M: m, SegmentSize: repairSegSize, OnShardError: e.reporter.OnShardError}
	if e.blobs, err = view.NewStore(cfg); err != nil {
		t.Fatal(err)
	}
	go view.Run(ctx, cfg, func(*blobstore.Store) {})

	if e.rep, err = cluster.NewRepairer(e.leader.Meta, cluster.RepairConfig{Peers: e.st.Peers, Interval: 50 * time.Millisecond,
		DeleteGrace: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	e.leader.Service.SetRepairer(e.rep)
	e.startRepairer()
	t.Cleanup(e.stopRepairer)

	// Dead-node detection with a short dead-after.
	svc, err := cluster.NewService(e.leader.Meta, deadAfter, nil)
	if err != nil {
		t.Fatal(err)
	}
	go svc.RunLeaderDuties(ctx)
	go func() {
		tick := time.NewTicker(deadAfter / 10)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for _, nd := range e.st.List() {
				if nd.Up() {
					req := &cpb.HeartbeatRequest{Id: nd.ID}
					svc.Heartbeat(ctx, req)              //nolint:errcheck // the next beat retries
					e.leader.Service.Heartbeat(ctx, req) //nolint:errcheck
				}
			}
		}
	}()

	cc, err := grpc.NewClient(e.leader.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	e.client = cpb.NewClusterClient(cc)
	return e
}

// restart starts stopped storage nodes again and waits until the frontend
// and the repairer reach them.
func (e *repairEnv) restart(nodes ...*clustertest.StorageNode) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	for _, nd := range nodes {
		e.st.Restart(nd)
		if err := clustertest.AwaitReachable(ctx, nd, e.frontPeers, e.st.Peers); err != nil {
			e.t.Fatal(err)
		}
	}
}

// push writes blobs of the given sizes and commits them through the
// frontend.
func (e *repairEnv) push(seed uint64, sizes ...int) {
	e.t.Helper()
	for i, size := range sizes {
		data := make([]byte, size)
		r := rand.New(rand.NewPCG(seed, uint64(i)))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		h := sha256.New()
		segs, n, err := e.blobs.Write(e.ctx, bytes.NewReader(data), h)
		if err != nil || n != int64(size) {
			e.t.Fatalf("write %d bytes: %d, %v", size, n, err)
		}
		dgst := "sha256:" + hex.EncodeToString(h.Sum(nil))
		err = e.front.Propose(e.ctx, &pb.Command{Op: &pb.Command_CommitBlob{CommitBlob: &pb.CommitBlob{
			Repo: "repair/test", Digest: dgst, Size: uint64(size), Segments: segs}}})
		if err != nil {
			e.t.Fatalf("commit %s: %v", dgst, err)
		}
		e.mu.Lock()
		e.data[dgst] = data
		e.order = append(e.order, dgst)
		e.mu.Unlock()
	}
}

// readAll reads every blob back through the frontend and compares digests,
// once the frontend's view of the storage nodes (refreshed every second)
// has caught up with the registry.
func (e *repairEnv) readAll(what string) {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, "the frontend's view of the storage nodes", func() string {
		recs, err := e.leader.Store.Nodes()
		if err != nil {
			return err.Error()
		}
		known := map[string]bool{}
		for _, nd := range e.view.Nodes() {
			known[nd.Info.ID] = true
		}
		for _, rec := range recs {
			if slices.Contains(rec.Roles, cluster.RoleStorage) && (rec.State == metastore.NodeAlive || rec.State == metastore.NodeDraining) && !known[rec.Id] {
				return rec.Id + " unknown to the frontend"
			}
		}
		return ""
	})
	for _, dgst := range e.order {
		l, err := e.front.Blob(e.ctx, dgst)
		if err != nil {
			e.t.Fatalf("%s: layout of %s: %v", what, dgst, err)
		}
		h := sha256.New()
		if err := e.blobs.ReadRange(e.ctx, h, l.Segments, 0, int64(l.Size)); err != nil {
			e.t.Fatalf("%s: read %s: %v", what, dgst, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dgst {
			e.t.Fatalf("%s: blob %s read back as %s", what, dgst, got)
		}
	}
}

// segments returns every segment of every blob, from the leader's state.
func (e *repairEnv) segments() []*pb.Segment {
	e.t.Helper()
	var out []*pb.Segment
	for _, dgst := range e.order {
		l, err := e.leader.Store.Blob(dgst)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, l.Segments...)
	}
	return out
}

func (e *repairEnv) state(id string) string {
	rec, err := e.leader.Store.Node(id)
	if err != nil {
		return "unknown"
	}
	return rec.State
}

// redundancy reports the first segment that is not at full redundancy on
// alive (or draining) nodes, with every shard present on its node's disk;
// "" when all are. A shard found absent is looked up again in the layout,
// so that a move recorded meanwhile is not mistaken for a loss.
// movedMeanwhile reports whether the segment's current layout has the
// shard on another node than ref says.
func (e *repairEnv) movedMeanwhile(segment string, ref *pb.ShardRef) bool {
	_, now, err := e.leader.Store.Segment(segment)
	if err != nil {
		return false
	}
	i := slices.IndexFunc(now.Shards, func(r *pb.ShardRef) bool { return r.Index == ref.Index })
	return i >= 0 && now.Shards[i].Node != ref.Node
}

func (e *repairEnv) redundancy(allowDraining bool) string {
	for _, dgst := range e.order {
		l, err := e.leader.Store.Blob(dgst)
		if err != nil {
			return err.Error()
		}
		for _, seg := range l.Segments {
			if len(seg.Shards) != int(seg.K+seg.M) {
				return fmt.Sprintf("segment %s has %d of %d shards", seg.Id, len(seg.Shards), seg.K+seg.M)
			}
			// Shards sit on distinct nodes while there are enough healthy
			// ones; with fewer, they double up as evenly as they can.
			healthy := 0
			for _, nd := range e.st.List() {
				if st := e.state(nd.ID); st == metastore.NodeAlive || (allowDraining && st == metastore.NodeDraining) {
					healthy++
				}
			}
			perNode := 1
			if n := int(seg.K + seg.M); healthy > 0 && healthy < n {
				perNode = (n + healthy - 1) / healthy
			}
			if e.shared {
				// Once repaired onto too few nodes, a segment keeps its
				// doubled-up shards when nodes join (no rebalancing yet).
				perNode = max(perNode, 2)
			}
			nodes := map[string]int{}
			for _, ref := range seg.Shards {
				st := e.state(ref.Node)
				if nodes[ref.Node]++; nodes[ref.Node] > perNode {
					return fmt.Sprintf("segment %s has %d shards on %s (%d healthy nodes)", seg.Id, nodes[ref.Node], ref.Node, healthy)
				}
				// The layout was read before the node's state and its disk:
				// a shard the drain moved in between is not a loss.
				if st != metastore.NodeAlive && !(allowDraining && st == metastore.NodeDraining) {
					if e.movedMeanwhile(seg.Id, ref) {
						continue
					}
					return fmt.Sprintf("segment %s keeps shard %d on %s node %s", seg.Id, ref.Index, st, ref.Node)
				}
				local := e.st.Node(ref.Node).Local()
				if local == nil {
					return fmt.Sprintf("segment %s keeps shard %d on stopped node %s", seg.Id, ref.Index, ref.Node)
				}
				if _, err := local.Stat(e.ctx, blobstore.ShardID{Segment: seg.Id, Index: ref.Index}); err != nil {
					if e.movedMeanwhile(seg.Id, ref) {
						continue
					}
					return fmt.Sprintf("shard %d of %s on %s: %v", ref.Index, seg.Id, ref.Node, err)
				}
			}
		}
	}
	return ""
}

// verifyAll checks every shard file of every segment against its ref.
func (e *repairEnv) verifyAll() {
	e.t.Helper()
	for _, seg := range e.segments() {
		for _, ref := range seg.Shards {
			info, err := e.st.Node(ref.Node).Local().Verify(e.ctx, blobstore.ShardID{Segment: seg.Id, Index: ref.Index})
			if err != nil || !bytes.Equal(info.Sum[:], ref.Blake3) {
				e.t.Fatalf("shard %d of %s on %s: %v", ref.Index, seg.Id, ref.Node, err)
			}
		}
	}
}

func (e *repairEnv) queueLen() int {
	n, err := e.leader.Store.CountRepairQueue()
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		if last = cond(); last == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %s", what, timeout, last)
}

// flip damages one payload byte of a shard file.
func flip(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-7] ^= 0x41
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRepair4Plus2(t *testing.T) { testRepair(t, 6, 4, 2) }

func TestRepair2Plus1(t *testing.T) { testRepair(t, 3, 2, 1) }

// testRepair runs the failure scenarios over exactly k+m storage nodes,
// adding nodes where full redundancy needs more.
func testRepair(t *testing.T, nodes, k, m int) {
	if testing.Short() {
		t.Skip("multi-node repair scenarios")
	}
	start := time.Now()
	e := newRepairEnv(t, nodes, k, m)
	e.push(1, 1, 100<<10, 300<<10, 700<<10, 1<<20+7, 2<<20)
	e.readAll("all nodes up")
	if msg := e.redundancy(false); msg != "" {
		t.Fatal(msg)
	}

	// Any m storage nodes may stop: every blob still reads back, and an
	// unreachable node is not reported for repair.
	for i := 0; i < nodes; i += m {
		var down []*clustertest.StorageNode
		for j := range m {
			down = append(down, e.st.List()[(i+j)%nodes])
		}
		for _, nd := range down {
			e.st.Stop(nd)
		}
		e.readAll(fmt.Sprintf("%d nodes stopped", m))
		e.restart(down...)
	}
	time.Sleep(100 * time.Millisecond) // let reports of the reads land, if any were made
	if n := e.queueLen(); n != 0 {
		t.Fatalf("%d segments queued for repair after nodes were merely unreachable", n)
	}
	t.Logf("stop any %d: ok (%v)", m, time.Since(start).Round(time.Millisecond))

	// Bit rot: flip a shard in some segments (two shards in one), on disk.
	// Reads stay correct; the scrubbers find every damaged shard and the
	// repairer rewrites each in place. (The repairer waits meanwhile, so
	// that it cannot mend a shard before the scrubbers look at it.)
	e.stopRepairer()
	type damaged struct {
		node string
		id   blobstore.ShardID
	}
	var bad []damaged
	for i, seg := range e.segments() {
		if i%2 == 1 {
			continue
		}
		idx := []int{i % len(seg.Shards)}
		if i == 0 && seg.M >= 2 {
			idx = append(idx, len(seg.Shards)-1)
		}
		for _, j := range idx {
			ref := seg.Shards[j]
			id := blobstore.ShardID{Segment: seg.Id, Index: ref.Index}
			flip(t, e.st.Node(ref.Node).Local().ShardPath(id))
			bad = append(bad, damaged{ref.Node, id})
		}
	}
	e.readAll("with corrupt shards")
	var found atomic.Int32
	for _, nd := range e.st.List() {
		onCorrupt := e.reporter.OnCorrupt(nd.ID)
		sc := blobstore.NewScrubber(nd.Local(), blobstore.ScrubConfig{BytesPerSecond: -1, OnCorrupt: func(id blobstore.ShardID, err error) {
			if !errors.Is(err, blobstore.ErrShardCorrupt) {
				t.Errorf("scrub of %s on %s: %v", id, nd.ID, err)
			}
			found.Add(1)
			onCorrupt(id, err)
		}})
		if err := sc.Pass(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if int(found.Load()) != len(bad) {
		t.Fatalf("scrubbers found %d corrupt shards, %d were damaged", found.Load(), len(bad))
	}
	e.startRepairer()
	waitFor(t, 20*time.Second, "corrupt shards rewritten", func() string {
		for _, b := range bad {
			if _, err := e.st.Node(b.node).Local().Verify(e.ctx, b.id); err != nil {
				return err.Error()
			}
		}
		if n := e.queueLen(); n != 0 {
			return fmt.Sprintf("%d segments queued", n)
		}
		return ""
	})
	e.verifyAll()
	if msg := e.redundancy(false); msg != "" {
		t.Fatal(msg)
	}
	e.readAll("after rewriting corrupt shards")
	t.Logf("bit rot: %d shards found by scrubbing and rewritten in place (%v)", len(bad), time.Since(start).Round(time.Millisecond))

	// A node dies (stops, and dead-after expires). With exactly k+m storage
	// nodes, the survivors are one short of distinct placement: repair puts
	// a second shard on the nodes holding the fewest, and every segment is
	// back to k+m shards on the survivors.
	dead := e.st.List()[0]
	e.st.Stop(dead)
	waitFor(t, 10*time.Second, "declared dead", func() string {
		if s := e.state(dead.ID); s != metastore.NodeDead {
			return s
		}
		return ""
	})
	waitFor(t, 30*time.Second, "repair of the dead node's shards on the survivors", func() string {
		if n, _ := e.leader.Store.CountShardsOnNode(dead.ID); n != 0 {
			return fmt.Sprintf("%d shards left on %s", n, dead.ID)
		}
		return e.redundancy(false)
	})
	e.verifyAll()
	e.readAll("after repair of a dead node")
	t.Logf("dead node: every segment back to %d shards on the %d survivors (%v)", k+m, nodes-1, time.Since(start).Round(time.Millisecond))
	e.shared = true
	e.st.Add()

	// Drain: refused while the others cannot hold every segment.
	drain := e.st.List()[1]
	_, err := e.client.Drain(e.ctx, &cpb.DrainRequest{Id: drain.ID})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("drain of one of exactly k+m alive nodes = %v, want FailedPrecondition", err)
	}
	e.st.Add()
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		samples atomic.Int64
		worst   atomic.Pointer[string]
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if msg := e.redundancy(true); msg != "" {
				worst.CompareAndSwap(nil, &msg)
			}
			samples.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	resp, err := e.client.Drain(e.ctx, &cpb.DrainRequest{Id: drain.ID})
	if err != nil || resp.State != metastore.NodeDraining || resp.ShardCount == 0 {
		t.Fatalf("drain = %v, %v", resp, err)
	}
	waitFor(t, 30*time.Second, "drained", func() string {
		if s := e.state(drain.ID); s != metastore.NodeDrained {
			n, _ := e.leader.Store.CountShardsOnNode(drain.ID)
			return fmt.Sprintf("%s with %d shards", s, n)
		}
		return ""
	})
	stop.Store(true)
	wg.Wait()
	if p := worst.Load(); p != nil {
		t.Fatalf("below full redundancy during the drain: %s", *p)
	}
	if n, _ := e.leader.Store.CountShardsOnNode(drain.ID); n != 0 {
		t.Fatalf("drained node still holds %d shards", n)
	}
	// The moved shards' old copies are deleted. (A copy can outlive its
	// move only if the node was once declared dead meanwhile, which a slow
	// run with this short dead-after may do: the shard was then rebuilt
	// elsewhere and the copy is an orphan for the storage sweep.)
	var infos []blobstore.ShardInfo
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) { // past the grace
		if infos, err = drain.Local().List(e.ctx, "", 0); err != nil {
			t.Fatal(err)
		}
		if len(infos) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, info := range infos {
		if ref, err := e.leader.Store.ShardReferenced(drain.ID, info.ID.Segment, info.ID.Index); err != nil || ref {
			t.Fatalf("drained node still holds %s, which the metadata places there (%v)", info.ID, err)
		}
		t.Logf("orphan left on %s: %s", drain.ID, info.ID)
	}
	e.st.Stop(drain)
	e.readAll("after the drain, drained node stopped")
	if msg := e.redundancy(false); msg != "" {
		t.Fatal(msg)
	}

	st, err := e.client.Status(e.ctx, &cpb.StatusRequest{ShardCounts: true})
	if err != nil {
		t.Fatal(err)
	}
	total := uint64(0)
	for _, mb := range st.Members {
		if n, _ := e.leader.Store.CountShardsOnNode(mb.Node.Id); uint64(n) != mb.ShardCount {
			t.Fatalf("status says %s holds %d shards, the index %d", mb.Node.Id, mb.ShardCount, n)
		}
		total += mb.ShardCount
	}
	want := uint64(0)
	for _, seg := range e.segments() {
		want += uint64(seg.K + seg.M)
	}
	if total != want || st.RepairQueueLength != 0 || st.Repair == nil || st.Repair.ShardsMoved == 0 || st.Repair.ShardsRebuilt == 0 {
		t.Fatalf("status: %d shards (want %d), queue %d, repair %v", total, want, st.RepairQueueLength, st.Repair)
	}
	t.Logf("drain: %d redundancy samples, all full; repair status %v (%v)", samples.Load(), st.Repair, time.Since(start).Round(time.Millisecond))
}

// A drain can be cancelled, and a drained node taken back.
func TestDrainCancel(t *testing.T) {
	e := newRepairEnv(t, 4, 2, 1)
	e.push(3, 600<<10)
	if _, err := e.client.Drain(e.ctx, &cpb.DrainRequest{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("drain of an unknown node = %v", err)
	}
	if _, err := e.client.Drain(e.ctx, &cpb.DrainRequest{Id: e.leader.ID}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("drain of a meta node = %v", err)
	}
	id := e.st.List()[0].ID
	if _, err := e.client.Drain(e.ctx, &cpb.DrainRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "drained", func() string {
		if s := e.state(id); s != metastore.NodeDrained {
			return s
		}
		return ""
	})
	resp, err := e.client.Drain(e.ctx, &cpb.DrainRequest{Id: id, Cancel: true})
	if err != nil || resp.State != metastore.NodeAlive || e.state(id) != metastore.NodeAlive {
		t.Fatalf("cancel = %v, %v; state %s", resp, err, e.state(id))
	}
	e.readAll("after drain and cancel")
}

// BenchmarkRepairDeadNode measures end-to-end repair: 4+2 on 7 storage
// nodes over gRPC, 8 MiB segments, a 96 MiB blob; a node is declared dead
// and the repairer (4 segments at a time, no rate limit) rebuilds its shards
// and records them through Raft. The rate is of blob bytes brought back to
// full redundancy (each segment the node held lost one shard).
func BenchmarkRepairDeadNode(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := benchEnv(b)
		victim := e.st.List()[0]
		n, _ := e.leader.Store.CountShardsOnNode(victim.ID)
		if n == 0 {
			b.Fatal("the victim holds nothing")
		}
		e.st.Stop(victim)
		b.StartTimer()
		if err := e.leader.Meta.Propose(e.ctx, &pb.Command{Op: &pb.Command_SetNodeState{SetNodeState: &pb.SetNodeState{Id: victim.ID, State: metastore.NodeDead}}}); err != nil {
			b.Fatal(err)
		}
		e.rep.Kick()
		for {
			if c, _ := e.leader.Store.CountShardsOnNode(victim.ID); c == 0 {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		b.StopTimer()
		b.SetBytes(int64(n) * 8 << 20)
		b.ReportMetric(float64(n), "segments/op")
		e.stop()
	}
}

type benchRepairEnv struct {
	ctx    context.Context
	leader *clustertest.Node
	st     *clustertest.Storage
	rep    *cluster.Repairer
	stop   func()
}

func benchEnv(b *testing.B) *benchRepairEnv {
	ctx, cancel := context.WithCancel(context.Background())
	c := clustertest.Start(b, 1, clustertest.Options{})
	e := &benchRepairEnv{ctx: ctx, leader: c.Leader()}
	e.st = clustertest.StartStorage(b, c, 7)
	nodes := e.st.BlobNodes()
	blobs, err := blobstore.New(blobstore.Config{K: 4, M: 2}, func() []blobstore.Node { return nodes })
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 96<<20)
	r := rand.New(rand.NewPCG(9, 9))
	for i := 0; i+8 <= len(data); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	segs, _, err := blobs.Write(ctx, bytes.NewReader(data), nil)
	if err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if err := e.leader.Meta.Propose(ctx, &pb.Command{Op: &pb.Command_CommitBlob{CommitBlob: &pb.CommitBlob{
		Repo: "bench", Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: uint64(len(data)), Segments: segs}}}); err != nil {
		b.Fatal(err)
	}
	if e.rep, err = cluster.NewRepairer(e.leader.Meta, cluster.RepairConfig{Peers: e.st.Peers, Interval: time.Hour}); err != nil {
		b.Fatal(err)
	}
	go e.rep.Run(ctx)
	e.stop = func() {
		cancel()
		for _, nd := range e.st.List() {
			e.st.Stop(nd)
		}
		c.Stop()
	}
	return e
}

// A parity shard deleted from a live node's disk is never needed by a read
// and never seen by a scrubber (which walks the files present); the audit
// finds it and repair puts it back.
func TestAuditFindsMissingShards(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node repair scenario")
	}
	e := newRepairEnv(t, 6, 4, 2)
	e.push(1, 1, 2<<20)
	e.stopRepairer()
	var gone []string
	for _, seg := range e.segments() {
		ref := seg.Shards[len(seg.Shards)-1] // a parity shard
		id := blobstore.ShardID{Segment: seg.Id, Index: ref.Index}
		if err := os.Remove(e.st.Node(ref.Node).Local().ShardPath(id)); err != nil {
			t.Fatal(err)
		}
		gone = append(gone, id.String())
	}
	e.readAll("with parity shards gone")
	if n := e.queueLen(); n != 0 {
		t.Fatalf("%d segments queued before the audit: reads were not expected to notice", n)
	}
	n, err := e.rep.Audit(e.ctx, 100000)
	if err != nil || n != len(gone) {
		t.Fatalf("audit found %d missing shards (%v), %d were deleted", n, err, len(gone))
	}
	e.startRepairer()
	waitFor(t, 20*time.Second, "missing shards repaired", func() string {
		if q := e.queueLen(); q != 0 {
			return fmt.Sprintf("%d queued", q)
		}
		return e.redundancy(false)
	})
	e.verifyAll()
}
