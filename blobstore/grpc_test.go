package blobstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/blake3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/blobstore/shardpb"
	"github.com/strata-registry/strata/blobstore/shardtest"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

// shardNode is a ShardStore served by a real gRPC server on a loopback port,
// and the RemoteStore that reaches it.
type shardNode struct {
	srv    *grpc.Server
	addr   string
	cc     *grpc.ClientConn
	remote *blobstore.RemoteStore
}

func serveShards(tb testing.TB, store blobstore.ShardStore) *shardNode {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := grpc.NewServer()
	blobstore.RegisterShardServer(srv, store)
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	tb.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	return &shardNode{srv: srv, addr: lis.Addr().String(), cc: cc, remote: blobstore.NewRemoteStore(store.NodeID(), cc)}
}

func TestRemoteStoreConformance(t *testing.T) {
	shardtest.Run(t, func(t *testing.T) blobstore.ShardStore { return serveShards(t, openLocal(t)).remote })
}

func TestRemoteFaultyConformance(t *testing.T) {
	shardtest.Run(t, func(t *testing.T) blobstore.ShardStore {
		return serveShards(t, blobstore.NewFaulty(openLocal(t))).remote
	})
}

func TestRemoteNotFound(t *testing.T) {
	n := serveShards(t, openLocal(t))
	id := blobstore.ShardID{Segment: "nothere", Index: 1}
	_, err := n.remote.Get(bg, id)
	if !errors.Is(err, blobstore.ErrShardNotFound) || status.Code(err) != codes.NotFound {
		t.Fatalf("Get of a missing shard = %v (code %v), want ErrShardNotFound, NotFound", err, status.Code(err))
	}
	if _, err := n.remote.Stat(bg, id); !errors.Is(err, blobstore.ErrShardNotFound) {
		t.Fatalf("Stat of a missing shard = %v", err)
	}
	if _, err := n.remote.Verify(bg, id); !errors.Is(err, blobstore.ErrShardNotFound) {
		t.Fatalf("Verify of a missing shard = %v", err)
	}
	if errors.Is(err, blobstore.ErrShardCorrupt) || errors.Is(err, blobstore.ErrNodeUnavailable) {
		t.Fatalf("%v matches other sentinels too", err)
	}
}

func TestRemoteCorruptOnDisk(t *testing.T) {
	local := openLocal(t)
	n := serveShards(t, local)
	id := blobstore.ShardID{Segment: "c0ffee", Index: 3}
	data := randomData(3, 3<<20+5)
	if err := n.remote.Put(bg, id, data, blake3.Sum256(data)); err != nil {
		t.Fatal(err)
	}
	if info, err := n.remote.Verify(bg, id); err != nil || info.Size != int64(len(data)) || info.Sum != blake3.Sum256(data) {
		t.Fatalf("Verify of a healthy shard = %+v, %v", info, err)
	}

	flipByte(t, local.ShardPath(id), 64+2<<20)
	// Get does not hash the payload (the reader checks it end to end against
	// the layout): the damaged bytes arrive as they are, and do not match.
	got, err := n.remote.Get(bg, id)
	if err != nil || len(got) != len(data) || blake3.Sum256(got) == blake3.Sum256(data) {
		t.Fatalf("Get of a shard flipped on disk = %d bytes, %v; want the damaged payload", len(got), err)
	}
	info, err := n.remote.Verify(bg, id)
	if !errors.Is(err, blobstore.ErrShardCorrupt) || info.ID != id || info.Size != int64(len(data)) {
		t.Fatalf("Verify of a shard flipped on disk = %+v, %v; want ErrShardCorrupt and what is known", info, err)
	}
	// The header is intact: Stat does not read the payload.
	if _, err := n.remote.Stat(bg, id); err != nil {
		t.Fatalf("Stat of a shard with a damaged payload: %v", err)
	}
	flipByte(t, local.ShardPath(id), 30) // inside the header's checksum field
	if _, err := n.remote.Stat(bg, id); !errors.Is(err, blobstore.ErrShardCorrupt) {
		t.Fatalf("Stat of a shard with a damaged header = %v, want ErrShardCorrupt", err)
	}
	infos, err := n.remote.List(bg, "", 0)
	if err != nil || len(infos) != 1 || infos[0].ID != id || infos[0].Sum != [32]byte{} {
		t.Fatalf("List with a damaged header = %+v, %v; want the shard with a zero sum", infos, err)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x20
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func TestRemoteNodeUnavailable(t *testing.T) {
	local := openLocal(t)
	n := serveShards(t, local)
	id := blobstore.ShardID{Segment: "up", Index: 0}
	if err := n.remote.Put(bg, id, []byte("x"), sum("x")); err != nil {
		t.Fatal(err)
	}
	n.srv.Stop()
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()
	start := time.Now()
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, blobstore.ErrNodeUnavailable) {
			t.Errorf("%s on a stopped server = %v, want ErrNodeUnavailable", what, err)
		}
	}
	_, err := n.remote.Get(ctx, id)
	check("Get", err)
	check("Put", n.remote.Put(ctx, id, []byte("y"), sum("y")))
	check("Delete", n.remote.Delete(ctx, id))
	_, err = n.remote.List(ctx, "", 0)
	check("List", err)
	_, err = n.remote.Usage(ctx)
	check("Usage", err)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("calls to a stopped server took %v: they should fail fast", d)
	}

	// A node whose store is closed is unavailable too.
	local2 := openLocal(t)
	n2 := serveShards(t, local2)
	local2.Close()
	_, err = n2.remote.Usage(bg)
	check("Usage of a closed store", err)

	// So is an address where another node answers.
	other := blobstore.NewRemoteStore("node-z", serveShards(t, openLocal(t)).cc)
	_, err = other.Usage(bg)
	check("Usage of the wrong node", err)
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("wrong node: code %v, want FailedPrecondition", status.Code(err))
	}
}

func TestRemoteDeadline(t *testing.T) {
	f := blobstore.NewFaulty(openLocal(t))
	n := serveShards(t, f)
	f.Inject(blobstore.Fault{Op: blobstore.OpGet, Stall: true})
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	_, err := n.remote.Get(ctx, blobstore.ShardID{Segment: "slow", Index: 0})
	if !errors.Is(err, context.DeadlineExceeded) || status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Get past its deadline = %v, want DeadlineExceeded", err)
	}
	// An error of the store the server does not know is INTERNAL, with its text.
	f.Clear()
	f.Inject(blobstore.Fault{Op: blobstore.OpStat})
	_, err = n.remote.Stat(bg, blobstore.ShardID{Segment: "broken", Index: 0})
	if status.Code(err) != codes.Internal || !bytes.Contains([]byte(err.Error()), []byte(blobstore.ErrInjected.Error())) {
		t.Fatalf("Stat with an injected fault = %v (code %v), want Internal with the fault's text", err, status.Code(err))
	}
}

// A store that is no ShardVerifier (here a Faulty) is verified with Stat
// and Get, and the payload hashed again: bit rot the store fails to notice
// is still found.
func TestRemoteVerifyGenericStore(t *testing.T) {
	f := blobstore.NewFaulty(openLocal(t))
	n := serveShards(t, f)
	id := blobstore.ShardID{Segment: "generic", Index: 0}
	data := randomData(5, 100000)
	if err := n.remote.Put(bg, id, data, blake3.Sum256(data)); err != nil {
		t.Fatal(err)
	}
	if info, err := n.remote.Verify(bg, id); err != nil || info.Sum != blake3.Sum256(data) {
		t.Fatalf("Verify = %+v, %v", info, err)
	}
	f.Inject(blobstore.Fault{Op: blobstore.OpGet, Corrupt: true})
	if _, err := n.remote.Verify(bg, id); !errors.Is(err, blobstore.ErrShardCorrupt) {
		t.Fatalf("Verify with undetected bit rot = %v, want ErrShardCorrupt", err)
	}
}

func TestRemoteGetRange(t *testing.T) {
	n := serveShards(t, openLocal(t))
	id := blobstore.ShardID{Segment: "range", Index: 2}
	data := randomData(4, 2<<20+100)
	if err := n.remote.Put(bg, id, data, blake3.Sum256(data)); err != nil {
		t.Fatal(err)
	}
	size := int64(len(data))
	for _, tc := range []struct{ off, n, wantFrom, wantTo int64 }{
		{0, 0, 0, size},
		{10, 100, 10, 110},
		{1<<20 - 3, 1<<20 + 7, 1<<20 - 3, 2<<20 + 4},
		{size - 5, 100, size - 5, size},
		{size - 5, 0, size - 5, size},
		{size, 0, size, size},
	} {
		got, err := n.remote.GetRange(bg, id, tc.off, tc.n)
		if err != nil || !bytes.Equal(got, data[tc.wantFrom:tc.wantTo]) {
			t.Errorf("GetRange(%d, %d) = %d bytes, %v; want [%d, %d)", tc.off, tc.n, len(got), err, tc.wantFrom, tc.wantTo)
		}
	}
	if _, err := n.remote.GetRange(bg, id, size+1, 0); !errors.Is(err, blobstore.ErrInvalidRange) || status.Code(err) != codes.OutOfRange {
		t.Errorf("GetRange past the end = %v, want ErrInvalidRange", err)
	}
	if _, err := n.remote.GetRange(bg, id, -1, 0); !errors.Is(err, blobstore.ErrInvalidRange) {
		t.Errorf("GetRange(-1) = %v, want ErrInvalidRange", err)
	}
}

// TestShardServerProtocol speaks to the server with the raw generated
// client, as a client that skips RemoteStore's own checks would.
func TestShardServerProtocol(t *testing.T) {
	local := openLocal(t)
	n := serveShards(t, local)
	c := shardpb.NewShardsClient(n.cc)
	pbID := &shardpb.ShardId{Segment: "proto", Index: 1}
	data := []byte("some shard bytes")
	s := blake3.Sum256(data)

	put := func(msgs ...*shardpb.PutRequest) error {
		stream, err := c.Put(bg)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if err := stream.Send(m); err != nil {
				break // the status comes with CloseAndRecv
			}
		}
		_, err = stream.CloseAndRecv()
		return err
	}
	for _, tc := range []struct {
		name string
		msgs []*shardpb.PutRequest
		want codes.Code
	}{
		{"empty stream", nil, codes.InvalidArgument},
		{"invalid id", []*shardpb.PutRequest{{Id: &shardpb.ShardId{Segment: "../x"}, Length: uint64(len(data)), Blake3: s[:], Data: data}}, codes.InvalidArgument},
		{"short sum", []*shardpb.PutRequest{{Id: pbID, Length: uint64(len(data)), Blake3: s[:31], Data: data}}, codes.InvalidArgument},
		{"too long", []*shardpb.PutRequest{{Id: pbID, Length: 1 << 40, Blake3: s[:]}}, codes.InvalidArgument},
		{"fewer bytes", []*shardpb.PutRequest{{Id: pbID, Length: uint64(len(data)) + 1, Blake3: s[:], Data: data}}, codes.DataLoss},
		{"more bytes", []*shardpb.PutRequest{{Id: pbID, Length: 4, Blake3: s[:], Data: data[:4]}, {Data: data[4:]}}, codes.DataLoss},
		{"header twice", []*shardpb.PutRequest{{Id: pbID, Length: uint64(len(data)), Blake3: s[:], Data: data[:4]}, {Id: pbID, Data: data[4:]}}, codes.InvalidArgument},
		{"wrong sum", []*shardpb.PutRequest{{Id: pbID, Length: uint64(len(data)), Blake3: make([]byte, 32), Data: data}}, codes.DataLoss},
	} {
		if err := put(tc.msgs...); status.Code(err) != tc.want {
			t.Errorf("Put with %s = %v, want %v", tc.name, err, tc.want)
		}
	}
	if infos, _ := local.List(bg, "", 0); len(infos) != 0 {
		t.Fatalf("refused Puts left shards: %v", infos)
	}
	// In pieces, with the header alone first.
	if err := put(&shardpb.PutRequest{Id: pbID, Length: uint64(len(data)), Blake3: s[:]}, &shardpb.PutRequest{Data: data[:5]}, &shardpb.PutRequest{Data: data[5:]}); err != nil {
		t.Fatalf("Put in pieces: %v", err)
	}
	if got, err := local.Get(bg, blobstore.ShardID{Segment: "proto", Index: 1}); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after a Put in pieces: %q, %v", got, err)
	}

	stream, err := c.Get(bg, &shardpb.GetRequest{Id: &shardpb.ShardId{Segment: "x"}})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("Get of an invalid id = %v, want InvalidArgument", err)
	}
	// The remote client maps it back.
	if _, err := n.remote.Get(bg, blobstore.ShardID{Segment: "x"}); !errors.Is(err, blobstore.ErrInvalidShardID) {
		t.Errorf("RemoteStore.Get of an invalid id = %v", err)
	}
	resp, err := c.List(bg, &shardpb.ListRequest{Limit: 1 << 31})
	if err != nil || len(resp.GetShards()) != 1 {
		t.Errorf("List with a huge limit = %v, %v", resp, err)
	}
}

// remoteCluster is n LocalStores, each served by its own gRPC server and
// reached through a RemoteStore.
type remoteCluster struct {
	local []*blobstore.LocalStore
	nodes []*shardNode
}

func newRemoteCluster(tb testing.TB, n int) *remoteCluster {
	tb.Helper()
	c := &remoteCluster{}
	for i := range n {
		s, err := blobstore.OpenLocal(fmt.Sprintf("node-%d", i), tb.TempDir())
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { s.Close() })
		c.local = append(c.local, s)
		c.nodes = append(c.nodes, serveShards(tb, s))
	}
	return c
}

// list returns every node, stopped or not, as the pipelines' node source:
// the stores of stopped nodes fail with ErrNodeUnavailable.
func (c *remoteCluster) list() []blobstore.Node {
	var out []blobstore.Node
	for _, n := range c.nodes {
		id := n.remote.NodeID()
		out = append(out, blobstore.Node{Info: blobstore.NodeInfo{ID: id, Zone: "zone-" + id, Free: 1 << 40}, Shards: n.remote})
	}
	return out
}

func (c *remoteCluster) stop(nodeID string) {
	for _, n := range c.nodes {
		if n.remote.NodeID() == nodeID {
			n.srv.Stop()
			return
		}
	}
	panic("no node " + nodeID)
}

func TestStoreOverGRPC(t *testing.T) {
	c := newRemoteCluster(t, 6)
	var mu sync.Mutex
	var shardErrs []error
	s, err := blobstore.New(blobstore.Config{K: 4, M: 2, OnShardError: func(_ string, _ *metastorepb.ShardRef, err error) {
		mu.Lock()
		shardErrs = append(shardErrs, err)
		mu.Unlock()
	}}, c.list)
	if err != nil {
		t.Fatal(err)
	}
	// Three segments of the default 8 MiB (2 MiB shards: two messages each).
	data := randomData(10, 2*blobstore.DefaultSegmentSize+3<<20+17)
	segs := write(t, s, data)
	if len(segs) != 3 {
		t.Fatalf("%d segments, want 3", len(segs))
	}
	var total int64
	for _, l := range c.local {
		u, err := l.Usage(bg)
		if err != nil {
			t.Fatal(err)
		}
		total += u.Shards
	}
	if total != 3*6 {
		t.Fatalf("%d shards on the nodes' disks, want 18", total)
	}
	if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read differs from written")
	}

	// Stop the servers holding data shards 0 and 1 of the first segment, so
	// that its read needs parity.
	for _, ref := range segs[0].Shards[:2] {
		c.stop(ref.Node)
	}
	if got := readAll(t, s, segs, len(data)); !bytes.Equal(got, data) {
		t.Fatal("read with 2 servers stopped differs from written")
	}
	mu.Lock()
	if len(shardErrs) == 0 {
		t.Error("no shard errors reported with 2 servers stopped")
	}
	for _, err := range shardErrs {
		if !errors.Is(err, blobstore.ErrNodeUnavailable) {
			t.Errorf("shard error %v, want ErrNodeUnavailable", err)
		}
	}
	mu.Unlock()

	// Writes still reach their quorum of 4 on the 4 nodes left.
	more := randomData(11, 9<<20)
	segs2 := write(t, s, more)
	for _, seg := range segs2 {
		if len(seg.Shards) != 4 {
			t.Fatalf("segment written with 2 nodes down has %d shards, want 4", len(seg.Shards))
		}
	}
	if got := readAll(t, s, segs2, len(more)); !bytes.Equal(got, more) {
		t.Fatal("read of a blob written with 2 servers stopped differs")
	}
}

// The benchmarks run the pipelines over 6 gRPC servers on loopback, each
// on a LocalStore in a temporary directory (fsync included), 4+2, default
// 8 MiB segments, 64 MiB blobs:
//
//	go test -run XXX -bench Remote ./blobstore/
func BenchmarkRemoteWrite(b *testing.B) {
	data := randomData(1, benchBlob)
	c := newRemoteCluster(b, 6)
	s, err := blobstore.New(blobstore.Config{K: 4, M: 2}, c.list)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(benchBlob)
	var cpu time.Duration
	for b.Loop() {
		c0 := cpuTime()
		segs, _, err := s.Write(bg, bytes.NewReader(data), nil)
		if err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime() - c0
		b.StopTimer()
		if err := s.Delete(bg, segs); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
}

func BenchmarkRemoteRead(b *testing.B) {
	data := randomData(2, benchBlob)
	for _, down := range []int{0, 2} {
		b.Run(fmt.Sprintf("%d-nodes-down", down), func(b *testing.B) {
			c := newRemoteCluster(b, 6)
			s, err := blobstore.New(blobstore.Config{K: 4, M: 2}, c.list)
			if err != nil {
				b.Fatal(err)
			}
			segs, _, err := s.Write(bg, bytes.NewReader(data), nil)
			if err != nil {
				b.Fatal(err)
			}
			for i := range down {
				c.nodes[i].srv.Stop()
			}
			b.SetBytes(benchBlob)
			c0 := cpuTime()
			for b.Loop() {
				if err := s.ReadRange(bg, io.Discard, segs, 0, benchBlob); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime()-c0).Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// The shard server reads shards into pooled buffers and gives each back
// only when gRPC has written its last chunk: many concurrent Gets (whole
// and ranges) and Puts, which draw on the same pool, all see their own
// bytes. A buffer given back too early would hand a client another shard's
// bytes.
func TestRemoteGetsFromPooledBuffers(t *testing.T) {
	n := serveShards(t, openLocal(t))
	const shards = 8
	datas := make([][]byte, shards)
	for i := range datas {
		datas[i] = randomData(uint64(100+i), (1+i%3)<<20+i*4099)
		id := blobstore.ShardID{Segment: fmt.Sprintf("pool%02d", i), Index: uint32(i)}
		if err := n.remote.Put(bg, id, datas[i], blake3.Sum256(datas[i])); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 3))
			for op := 0; op < 40; op++ {
				i := r.IntN(shards)
				id := blobstore.ShardID{Segment: fmt.Sprintf("pool%02d", i), Index: uint32(i)}
				want := datas[i]
				var got []byte
				var err error
				switch op % 4 {
				case 0:
					extra := randomData(uint64(w*1000+op), 1<<20+op)
					err = n.remote.Put(bg, blobstore.ShardID{Segment: fmt.Sprintf("extra%02d-%02d", w, op), Index: 0}, extra, blake3.Sum256(extra))
					got = want
				case 1:
					off := int64(r.IntN(len(want)))
					ln := int64(r.IntN(len(want) - int(off) + 1))
					got, err = n.remote.GetRange(bg, id, off, ln)
					if ln == 0 {
						ln = int64(len(want)) - off
					}
					want = want[off : off+ln]
				default:
					got, err = n.remote.Get(bg, id)
				}
				if err == nil && !bytes.Equal(got, want) {
					err = fmt.Errorf("shard %d: %d bytes back, not its own", i, len(got))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
