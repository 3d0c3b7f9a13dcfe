package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/chaos"
	"github.com/strata-registry/strata/chaos/failpoint"
	"github.com/strata-registry/strata/metastore"
)

// FailpointsEnv turns on the slower failpoint tests in a test binary built
// without the failpoints tag (with the tag they always run).
const FailpointsEnv = "STRATA_CHAOS_FAILPOINTS"

// slowFailpointTests skips t unless the failpoint tests that take a minute
// or more were asked for: go test -tags failpoints ./chaos/ (make
// test-failpoints), or STRATA_CHAOS_FAILPOINTS=1.
func slowFailpointTests(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short")
	}
	if !failpoint.Enabled && os.Getenv(FailpointsEnv) != "1" {
		t.Skipf("a slower failpoint test: go test -tags failpoints ./chaos/ or %s=1", FailpointsEnv)
	}
}

// arm is the environment that arms one failpoint at start-up.
func arm(name, spec string) string { return failpoint.EnvSpecs + "=" + name + "=" + spec }

// shardSegments lists the shard files under a LocalStore directory, by
// segment id.
func shardSegments(t *testing.T, dir string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(filepath.Join(dir, "shards"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if id, err := blobstore.ParseShardID(d.Name()); err == nil {
			out[id.Segment] = append(out[id.Segment], path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newSince(now, before map[string][]string) []string {
	var out []string
	for seg := range now {
		if _, ok := before[seg]; !ok {
			out = append(out, seg)
		}
	}
	return out
}

func logContains(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), want) {
		t.Fatalf("%s does not say %q", path, want)
	}
}

// TestFailpointCrashBetweenShardsAndCommit crashes `strata serve --dev` at
// the failpoints between the shards of an upload being durable and its Raft
// commit: upload-before-commit (single POST ?digest=) and
// upload-before-update (a PATCH of a session). Each time the client gets no
// answer, the process exits there, and its shards are on disk with nothing
// recording them. After the restart the blob is not served (404), the
// session did not move, and the client's retry succeeds; at the end the
// metastore (opened offline) references none of the orphaned segments.
// The storage sweep deletes such shards once they are older than its safety
// age (gc/, at least 10 minutes); here they must at least never be served.
func TestFailpointCrashBetweenShardsAndCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the server with -tags failpoints")
	}
	bin := chaos.FailpointBinary(t)
	data := chaos.KeepOnFailureDir(t, "data")
	shardDir := filepath.Join(data, "shards", "0")
	srv := chaos.StartProcess(t, chaos.ProcessConfig{DataDir: data, Binary: bin,
		Env: []string{arm(failpoint.UploadBeforeCommit, "1*exit")}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := chaos.NewClient(srv.URL())
	seed := chaos.Seed(t)

	// 1. A single-request push dies between its shards and CommitBlob.
	b := chaos.GeneratedBlob(seed, 3<<20+12345)
	before := shardSegments(t, shardDir)
	if err := c.PushWhole(ctx, "fp/commit", b); err == nil {
		t.Fatal("the push was acknowledged although the server was to exit before committing it")
	}
	if code := srv.WaitExit(30 * time.Second); code != failpoint.ExitCode {
		t.Fatalf("server exit code %d, want %d (the failpoint's)", code, failpoint.ExitCode)
	}
	logContains(t, srv.LogPath(), "failpoint "+failpoint.UploadBeforeCommit+": exit")
	orphans := newSince(shardSegments(t, shardDir), before)
	if len(orphans) == 0 {
		t.Fatal("no new shard on disk: the crash did not come after the shards were durable")
	}
	t.Logf("crashed before CommitBlob; %d segments left on disk with nothing recording them", len(orphans))

	srv.SetEnv() // no failpoint from now on
	srv.Restart()
	if err := chaos.CheckBlob(ctx, c, "fp/commit", b, false); err != nil {
		t.Fatalf("the blob of the crashed push: %v", err)
	}
	if err := c.PushWhole(ctx, "fp/commit", b); err != nil {
		t.Fatalf("the client's retry: %v", err)
	}
	if err := chaos.CheckBlob(ctx, c, "fp/commit", b, true); err != nil {
		t.Fatal(err)
	}

	// 2. A PATCH of a session dies between its shards and UpdateUpload.
	srv.Stop()
	srv.SetEnv(arm(failpoint.UploadBeforeUpdate, "1*exit"))
	srv.Restart()
	b2 := chaos.GeneratedBlob(seed+1, 2<<20)
	up, err := c.StartUpload(ctx, "fp/chunked")
	if err != nil {
		t.Fatal(err)
	}
	before = shardSegments(t, shardDir)
	half := b2.Size / 2
	if err := up.Patch(ctx, strings.NewReader(string(b2.SectionOf(0, half))), half); err == nil {
		t.Fatal("the PATCH was acknowledged although the server was to exit before recording it")
	}
	if code := srv.WaitExit(30 * time.Second); code != failpoint.ExitCode {
		t.Fatalf("server exit code %d, want %d", code, failpoint.ExitCode)
	}
	logContains(t, srv.LogPath(), "failpoint "+failpoint.UploadBeforeUpdate+": exit")
	orphans2 := newSince(shardSegments(t, shardDir), before)
	if len(orphans2) == 0 {
		t.Fatal("no new shard on disk after the PATCH")
	}
	orphans = append(orphans, orphans2...)
	srv.SetEnv()
	srv.Restart()
	off, err := up.Status(ctx)
	if err != nil || off != 0 {
		t.Fatalf("the session after the crashed PATCH: offset %d, %v; want 0 (the chunk was never recorded)", off, err)
	}
	if err := up.Patch(ctx, strings.NewReader(string(b2.SectionOf(0, half))), half); err != nil {
		t.Fatalf("the client's retry of the PATCH: %v", err)
	}
	rest := b2.Size - half
	if err := up.Finish(ctx, b2, strings.NewReader(string(b2.SectionOf(half, rest))), rest); err != nil {
		t.Fatal(err)
	}
	if err := chaos.CheckBlob(ctx, c, "fp/chunked", b2, true); err != nil {
		t.Fatal(err)
	}

	// 3. Nothing records the orphaned segments; both blobs are whole.
	srv.Stop()
	st, err := metastore.Open(filepath.Join(data, "meta", "pebble"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, seg := range orphans {
		if ref, err := st.SegmentReferenced(seg); err != nil || ref {
			t.Errorf("orphaned segment %s: referenced %v (%v)", seg, ref, err)
		}
	}
	for _, blob := range []chaos.Blob{b, b2} {
		l, err := st.Blob(blob.Digest)
		if err != nil {
			t.Fatalf("layout of %s: %v", blob, err)
		}
		for _, s := range l.Segments {
			for _, o := range orphans {
				if s.Id == o {
					t.Errorf("%s uses orphaned segment %s", blob, o)
				}
			}
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// storageStatus runs `strata storage status --json` against addr.
func storageStatus(ctx context.Context, bin, addr string) (*chaos.StorageStatus, error) {
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, bin, "storage", "status", "--json", "--server", addr).Output()
	if err != nil {
		return nil, err
	}
	var st chaos.StorageStatus
	return &st, json.Unmarshal(out, &st)
}

// TestFailpointCrashDuringRepair: `strata serve --dev` over three shard
// directories (2+1). A data shard of an acknowledged blob is deleted, a
// read finds it missing and queues the segment, and the repairer rebuilds
// the shard and writes it back, then dies at repair-before-replace, before
// recording it. After the restart the repair must finish (the queue
// empties), every shard of the segment must verify against the layout, and
// the blob must read back whole.
func TestFailpointCrashDuringRepair(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the server with -tags failpoints")
	}
	bin := chaos.FailpointBinary(t)
	data := chaos.KeepOnFailureDir(t, "data")
	var dirs []string
	args := []string{"--k", "2", "--m", "1"}
	for i := range 3 {
		d := filepath.Join(data, fmt.Sprintf("disk%d", i))
		dirs = append(dirs, d)
		args = append(args, "--shard-dir", d)
	}
	grpcAddr := freeAddr(t)
	args = append(args, "--grpc-addr", grpcAddr)
	srv := chaos.StartProcess(t, chaos.ProcessConfig{DataDir: data, Binary: bin, Args: args,
		Env: []string{arm(failpoint.RepairBeforeReplace, "1*exit")}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := chaos.NewClient(srv.URL())
	b := chaos.GeneratedBlob(chaos.Seed(t), 1<<20) // one segment, 2+1
	if err := c.PushWhole(ctx, "fp/repair", b); err != nil {
		t.Fatal(err)
	}
	// Delete shard 0 (a data shard: the next read needs it).
	var victim string
	for _, d := range dirs {
		for _, files := range shardSegments(t, d) {
			for _, f := range files {
				if strings.HasSuffix(f, ".0") {
					victim = f
				}
			}
		}
	}
	if victim == "" {
		t.Fatal("no shard 0 on any disk")
	}
	if err := os.Remove(victim); err != nil {
		t.Fatal(err)
	}
	if err := chaos.CheckBlob(ctx, c, "fp/repair", b, true); err != nil {
		t.Fatalf("degraded read: %v", err)
	}
	if code := srv.WaitExit(2 * time.Minute); code != failpoint.ExitCode {
		t.Fatalf("server exit code %d, want %d (the repairer's failpoint)", code, failpoint.ExitCode)
	}
	logContains(t, srv.LogPath(), "failpoint "+failpoint.RepairBeforeReplace+": exit")
	if _, err := os.Stat(victim); err != nil {
		t.Fatalf("the repairer crashed before recording the rebuilt shard, which must be on disk by then: %v", err)
	}

	srv.SetEnv()
	srv.Restart()
	var last string
	for deadline := time.Now().Add(2 * time.Minute); ; {
		st, err := storageStatus(ctx, bin, grpcAddr)
		switch {
		case err != nil:
			last = err.Error()
		case !st.Repair.Running:
			last = "no repairer running"
		case st.Repair.QueueLength > 0 || st.Repair.InProgress > 0:
			last = fmt.Sprintf("queue %d, in progress %d", st.Repair.QueueLength, st.Repair.InProgress)
		default:
			last = ""
		}
		if last == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("repair not done 2 minutes after the restart: %s", last)
		}
		time.Sleep(time.Second)
	}
	if err := chaos.CheckBlob(ctx, c, "fp/repair", b, true); err != nil {
		t.Fatal(err)
	}
	srv.Stop()

	// The ground truth, offline: three shards, each verifying against the
	// checksum its layout records.
	st, err := metastore.Open(filepath.Join(data, "meta", "pebble"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	layout, err := st.Blob(b.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := st.CountRepairQueue(); n != 0 {
		t.Errorf("%d segments still queued for repair", n)
	}
	nodeID, err := os.ReadFile(filepath.Join(data, "node-id"))
	if err != nil {
		t.Fatal(err)
	}
	stores := map[string]*blobstore.LocalStore{}
	for i, d := range dirs {
		id := fmt.Sprintf("%s-disk%d", strings.TrimSpace(string(nodeID)), i)
		ls, err := blobstore.OpenLocal(id, d)
		if err != nil {
			t.Fatal(err)
		}
		defer ls.Close()
		stores[id] = ls
	}
	for _, seg := range layout.Segments {
		if len(seg.Shards) != int(seg.K+seg.M) {
			t.Errorf("segment %s: %d shards, want %d", seg.Id, len(seg.Shards), seg.K+seg.M)
		}
		for _, ref := range seg.Shards {
			ls := stores[ref.Node]
			if ls == nil {
				t.Errorf("shard %d of %s on unknown node %s", ref.Index, seg.Id, ref.Node)
				continue
			}
			info, err := blobstore.VerifyShard(ctx, ls, blobstore.ShardID{Segment: seg.Id, Index: ref.Index})
			if err != nil {
				t.Errorf("shard %d of %s on %s: %v", ref.Index, seg.Id, ref.Node, err)
			} else if string(info.Sum[:]) != string(ref.Blake3) {
				t.Errorf("shard %d of %s on %s: checksum differs from the layout's", ref.Index, seg.Id, ref.Node)
			}
		}
	}
}
