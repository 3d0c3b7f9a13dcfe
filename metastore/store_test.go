package metastore

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// harness applies commands with increasing log indexes, as Raft would.
type harness struct {
	t     *testing.T
	st    *Store
	dir   string
	index uint64
	now   int64
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, st: st, dir: dir, now: 1_700_000_000_000_000_000}
	t.Cleanup(func() { h.st.Close() })
	return h
}

func (h *harness) entry(cmd *pb.Command) Entry {
	h.t.Helper()
	h.index++
	h.now += 1e9
	cmd.TimeUnixNano = h.now
	b, err := proto.Marshal(cmd)
	if err != nil {
		h.t.Fatal(err)
	}
	return Entry{Index: h.index, Data: b}
}

func (h *harness) apply(cmd *pb.Command) error {
	h.t.Helper()
	return h.st.Apply(h.entry(cmd))
}

func (h *harness) must(cmd *pb.Command) {
	h.t.Helper()
	if err := h.apply(cmd); err != nil {
		h.t.Fatalf("apply %v: %v", cmd.Op, err)
	}
}

// refuse applies cmd, expects it to be refused with want, and checks the
// state did not change (apart from the applied index).
func (h *harness) refuse(cmd *pb.Command, want error) {
	h.t.Helper()
	before := h.state()
	err := h.apply(cmd)
	if !errors.Is(err, want) {
		h.t.Fatalf("apply %v: got %v, want %v", cmd.Op, err, want)
	}
	if after := h.state(); !bytes.Equal(before, after) {
		h.t.Fatalf("refused command %v changed the state", cmd.Op)
	}
}

func (h *harness) dump() []byte {
	h.t.Helper()
	sn := h.st.Snapshot()
	defer sn.Release()
	var buf bytes.Buffer
	if _, err := sn.WriteTo(&buf); err != nil {
		h.t.Fatal(err)
	}
	return buf.Bytes()
}

// state is every key and value but the applied index.
func (h *harness) state() []byte {
	h.t.Helper()
	var buf bytes.Buffer
	err := h.st.scan([]byte{}, nil, func(k, v []byte) bool {
		if string(k) != keyApplied {
			fmt.Fprintf(&buf, "%q=%q\n", k, v)
		}
		return true
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return buf.Bytes()
}

func seg(id string, n uint64) *pb.Segment {
	return &pb.Segment{Id: id, Length: n, K: 1, ShardSize: n, Format: 1,
		Shards: []*pb.ShardRef{{Index: 0, Node: "n1", Blake3: make([]byte, 32)}}}
}

func dg(i int) string { return fmt.Sprintf("sha256:%064x", i) }

func commitCmd(repo, dgst string, size uint64, segs ...*pb.Segment) *pb.Command {
	return &pb.Command{Op: &pb.Command_CommitBlob{CommitBlob: &pb.CommitBlob{
		Repo: repo, Digest: dgst, Size: size, Segments: segs}}}
}

func manifestCmd(repo, dgst string, tags []string, blobs ...string) *pb.Command {
	return &pb.Command{Op: &pb.Command_PutManifest{PutManifest: &pb.PutManifest{
		Repo: repo, Digest: dgst, MediaType: "application/vnd.oci.image.manifest.v1+json",
		Body: []byte(`{"schemaVersion":2}`), Tags: tags, Blobs: blobs}}}
}

func TestUploadSessionLifecycle(t *testing.T) {
	h := newHarness(t)
	h.must(&pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: "u1", Repo: "a/b"}}})
	h.refuse(&pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: "u1", Repo: "a/b"}}}, ErrCommandInvalid)
	h.must(&pb.Command{Op: &pb.Command_UpdateUpload{UpdateUpload: &pb.UpdateUpload{
		Id: "u1", ExpectOffset: 0, NewOffset: 10, Sha256State: []byte("s1"), Segments: []*pb.Segment{seg("s1", 10)}}}})
	// A second request that started from the old offset lost the race.
	h.refuse(&pb.Command{Op: &pb.Command_UpdateUpload{UpdateUpload: &pb.UpdateUpload{
		Id: "u1", ExpectOffset: 0, NewOffset: 5, Segments: []*pb.Segment{seg("s2", 5)}}}}, ErrUploadOffset)
	// Segments must add up to the new offset.
	h.refuse(&pb.Command{Op: &pb.Command_UpdateUpload{UpdateUpload: &pb.UpdateUpload{
		Id: "u1", ExpectOffset: 10, NewOffset: 99, Segments: []*pb.Segment{seg("s2", 5)}}}}, ErrCommandInvalid)
	u, err := h.st.Upload("u1")
	if err != nil || u.Offset != 10 || string(u.Sha256State) != "s1" || len(u.Segments) != 1 {
		t.Fatalf("upload after update: %v %v", u, err)
	}
	// Commit from the wrong repository or a stale offset is refused.
	bad := commitCmd("other", dg(1), 15, seg("s3", 5))
	bad.GetCommitBlob().UploadId = "u1"
	bad.GetCommitBlob().ExpectOffset = 10
	h.refuse(bad, ErrUploadUnknown)
	stale := commitCmd("a/b", dg(1), 15, seg("s3", 5))
	stale.GetCommitBlob().UploadId = "u1"
	h.refuse(stale, ErrUploadOffset)
	wrongSize := commitCmd("a/b", dg(1), 16, seg("s3", 5))
	wrongSize.GetCommitBlob().UploadId, wrongSize.GetCommitBlob().ExpectOffset = "u1", 10
	h.refuse(wrongSize, ErrSizeInvalid)

	ok := commitCmd("a/b", dg(1), 15, seg("s3", 5))
	ok.GetCommitBlob().UploadId, ok.GetCommitBlob().ExpectOffset = "u1", 10
	h.must(ok)
	if _, err := h.st.Upload("u1"); !errors.Is(err, ErrUploadUnknown) {
		t.Fatalf("upload survives its commit: %v", err)
	}
	l, err := h.st.RepoBlob("a/b", dg(1))
	if err != nil || l.Size != 15 || len(l.Segments) != 2 || l.Segments[0].Id != "s1" || l.Segments[1].Id != "s3" {
		t.Fatalf("layout %v %v", l, err)
	}
	if _, err := h.st.RepoBlob("a", dg(1)); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("blob visible in a repository that does not link it: %v", err)
	}
	rc, _ := h.st.RefCount(dg(1))
	if rc.Links != 1 || rc.ManifestRefs != 0 {
		t.Fatalf("refcount %v", rc)
	}
}

func TestCancelUploadOrphansSegments(t *testing.T) {
	h := newHarness(t)
	h.must(&pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: "u", Repo: "r"}}})
	h.must(&pb.Command{Op: &pb.Command_UpdateUpload{UpdateUpload: &pb.UpdateUpload{
		Id: "u", NewOffset: 3, Segments: []*pb.Segment{seg("sx", 3)}}}})
	h.must(&pb.Command{Op: &pb.Command_CancelUpload{CancelUpload: &pb.CancelUpload{Id: "u"}}})
	h.refuse(&pb.Command{Op: &pb.Command_CancelUpload{CancelUpload: &pb.CancelUpload{Id: "u"}}}, ErrUploadUnknown)
	orphans, err := h.st.Orphans("", 10)
	if err != nil || len(orphans) != 1 || orphans[0].Id != "sx" {
		t.Fatalf("orphans %v %v", orphans, err)
	}
}

func TestBlobStoredOnceAndMounted(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("a", dg(7), 4, seg("first", 4)))
	h.must(commitCmd("b", dg(7), 4, seg("second", 4)))
	l, _ := h.st.Blob(dg(7))
	if len(l.Segments) != 1 || l.Segments[0].Id != "first" {
		t.Fatalf("second copy replaced the first: %v", l)
	}
	if o, _ := h.st.Orphans("", 10); len(o) != 1 || o[0].Id != "second" {
		t.Fatalf("duplicate copy not orphaned: %v", o)
	}
	h.refuse(&pb.Command{Op: &pb.Command_MountBlob{MountBlob: &pb.MountBlob{Repo: "c", Digest: dg(7), From: "nowhere"}}}, ErrBlobUnknown)
	h.refuse(&pb.Command{Op: &pb.Command_MountBlob{MountBlob: &pb.MountBlob{Repo: "c", Digest: dg(8), From: "a"}}}, ErrBlobUnknown)
	h.must(&pb.Command{Op: &pb.Command_MountBlob{MountBlob: &pb.MountBlob{Repo: "c", Digest: dg(7), From: "a"}}})
	repos, _ := h.st.BlobRepositories(dg(7), 10)
	if fmt.Sprint(repos) != "[a b c]" {
		t.Fatalf("blob repositories %v", repos)
	}
	if rc, _ := h.st.RefCount(dg(7)); rc.Links != 3 {
		t.Fatalf("links %v", rc)
	}
}

func TestManifestsTagsAndRefcounts(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("r", dg(1), 1, seg("c", 1)))
	h.must(commitCmd("r", dg(2), 1, seg("l", 1)))
	// A manifest whose blobs are missing changes nothing.
	h.refuse(manifestCmd("r", dg(100), []string{"v1"}, dg(1), dg(3)), ErrManifestBlobUnknown)
	h.refuse(manifestCmd("other", dg(100), []string{"v1"}, dg(1)), ErrManifestBlobUnknown)

	h.must(manifestCmd("r", dg(100), []string{"v1", "latest"}, dg(1), dg(2)))
	h.must(manifestCmd("r", dg(100), []string{"v1"}, dg(1), dg(2))) // same again: no double count
	if rc, _ := h.st.RefCount(dg(2)); rc.ManifestRefs != 1 || rc.Links != 1 {
		t.Fatalf("refcount after re-put %v", rc)
	}
	tags, more, _ := h.st.Tags("r", "", 0)
	if fmt.Sprint(tags) != "[latest v1]" || more {
		t.Fatalf("tags %v %v", tags, more)
	}
	if tags, _, err := h.st.Tags("absent", "", 0); !errors.Is(err, ErrRepoUnknown) {
		t.Fatalf("tags of a repository that does not exist: %v %v, want ErrRepoUnknown", tags, err)
	}
	// Move latest to another manifest; history records both moves.
	h.must(manifestCmd("r", dg(101), []string{"latest"}, dg(1)))
	tr, _ := h.st.Tag("r", "latest")
	if tr.Digest != dg(101) || tr.Seq != 2 {
		t.Fatalf("latest %v", tr)
	}
	// Deleting a manifest takes its tags and references with it.
	h.must(&pb.Command{Op: &pb.Command_DeleteManifest{DeleteManifest: &pb.DeleteManifest{Repo: "r", Digest: dg(100)}}})
	if _, err := h.st.Tag("r", "v1"); !errors.Is(err, ErrTagUnknown) {
		t.Fatalf("tag of deleted manifest: %v", err)
	}
	if _, err := h.st.Tag("r", "latest"); err != nil {
		t.Fatalf("unrelated tag went too: %v", err)
	}
	if rc, _ := h.st.RefCount(dg(2)); rc.ManifestRefs != 0 {
		t.Fatalf("refcount after delete %v", rc)
	}
	if rc, _ := h.st.RefCount(dg(1)); rc.ManifestRefs != 1 {
		t.Fatalf("config refcount %v", rc)
	}
	h.refuse(&pb.Command{Op: &pb.Command_DeleteManifest{DeleteManifest: &pb.DeleteManifest{Repo: "r", Digest: dg(100)}}}, ErrManifestUnknown)
	h.refuse(&pb.Command{Op: &pb.Command_DeleteTag{DeleteTag: &pb.DeleteTag{Repo: "r", Tag: "v1"}}}, ErrTagUnknown)
	h.must(&pb.Command{Op: &pb.Command_DeleteTag{DeleteTag: &pb.DeleteTag{Repo: "r", Tag: "latest"}}})
	if _, err := h.st.Manifest("r", dg(101)); err != nil {
		t.Fatalf("deleting a tag deleted its manifest: %v", err)
	}
	evs, _ := h.st.Events(0, 100)
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Type)
	}
	want := "[blob.push blob.push manifest.push tag.push tag.push manifest.push tag.push tag.delete manifest.delete tag.delete]"
	if fmt.Sprint(kinds) != want {
		t.Fatalf("events\n got %v\nwant %s", kinds, want)
	}
}

func TestSparseManifestAndTombstones(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("r", dg(1), 1, seg("c", 1)))
	h.must(commitCmd("r", dg(2), 1, seg("l", 1)))
	// A layer never pushed may be absent.
	sparse := manifestCmd("r", dg(100), []string{"s"}, dg(1))
	sparse.GetPutManifest().OptionalBlobs = []string{dg(9)}
	h.must(sparse)
	if rc, _ := h.st.RefCount(dg(9)); rc.ManifestRefs != 1 {
		t.Fatalf("absent layer not counted: %v", rc)
	}
	// A layer the repository deleted is refused: the push lost a race
	// with the deletion and must upload again.
	h.must(&pb.Command{Op: &pb.Command_UnlinkBlob{UnlinkBlob: &pb.UnlinkBlob{Repo: "r", Digest: dg(2)}}})
	raced := manifestCmd("r", dg(101), nil, dg(1))
	raced.GetPutManifest().OptionalBlobs = []string{dg(2)}
	h.refuse(raced, ErrManifestBlobUnknown)
	// Uploading it again clears the tombstone.
	h.must(commitCmd("r", dg(2), 1, seg("l2", 1)))
	h.must(raced)
}

func TestReferrers(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("r", dg(1), 1, seg("c", 1)))
	for i, at := range []string{"application/x.sig", "application/x.sbom"} {
		c := manifestCmd("r", dg(200+i), nil, dg(1))
		c.GetPutManifest().Subject = dg(100)
		c.GetPutManifest().ArtifactType = at
		h.must(c)
	}
	refs, err := h.st.Referrers("r", dg(100))
	if err != nil || len(refs) != 2 || refs[0].ArtifactType != "application/x.sig" {
		t.Fatalf("referrers %v %v", refs, err)
	}
	if refs, _ := h.st.Referrers("other", dg(100)); len(refs) != 0 {
		t.Fatalf("referrers leak across repositories: %v", refs)
	}
	h.must(&pb.Command{Op: &pb.Command_DeleteManifest{DeleteManifest: &pb.DeleteManifest{Repo: "r", Digest: dg(200)}}})
	if refs, _ := h.st.Referrers("r", dg(100)); len(refs) != 1 || refs[0].Digest != dg(201) {
		t.Fatalf("referrers after delete %v", refs)
	}
}

func TestPagination(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("r", dg(1), 1, seg("c", 1)))
	for i := 0; i < 25; i++ {
		h.must(manifestCmd("r", dg(100+i), []string{fmt.Sprintf("t%02d", i)}, dg(1)))
	}
	h.must(commitCmd("r/sub", dg(1), 1, seg("d", 1)))
	h.must(manifestCmd("r/sub", dg(100), []string{"zzz"}, dg(1)))
	var all []string
	last := ""
	for {
		page, more, err := h.st.Tags("r", last, 10)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if !more {
			break
		}
		last = page[len(page)-1]
	}
	if len(all) != 25 || all[0] != "t00" || all[24] != "t24" {
		t.Fatalf("paged tags %v", all)
	}
	repos, more, _ := h.st.Repositories("", 1)
	if fmt.Sprint(repos) != "[r]" || !more {
		t.Fatalf("repos page 1 %v %v", repos, more)
	}
	repos, more, _ = h.st.Repositories("r", 1)
	if fmt.Sprint(repos) != "[r/sub]" || more {
		t.Fatalf("repos page 2 %v %v", repos, more)
	}
}

// Replaying entries a restarted node already applied must not apply them
// twice (hashicorp/raft replays from the last snapshot).
func TestReplayIsIdempotent(t *testing.T) {
	h := newHarness(t)
	e1 := h.entry(commitCmd("r", dg(1), 1, seg("c", 1)))
	e2 := h.entry(manifestCmd("r", dg(100), []string{"v"}, dg(1)))
	for _, err := range h.st.ApplyBatch([]Entry{e1, e2}) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := h.st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := Open(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	h.st = st // closed by the harness
	if st.AppliedIndex() != 2 {
		t.Fatalf("applied index after reopen %d", st.AppliedIndex())
	}
	for _, err := range st.ApplyBatch([]Entry{e1, e2}) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if rc, _ := st.RefCount(dg(1)); rc.Links != 1 || rc.ManifestRefs != 1 {
		t.Fatalf("replay double-counted: %v", rc)
	}
}

// Two replicas fed the same log end in byte-identical state, and a snapshot
// restored elsewhere reproduces it.
func TestDeterminismAndSnapshotRestore(t *testing.T) {
	a, b := newHarness(t), newHarness(t)
	var entries []Entry
	for i := 0; i < 20; i++ {
		entries = append(entries, a.entry(commitCmd(fmt.Sprintf("r%d", i%3), dg(i%5), 1, seg(fmt.Sprintf("s%d", i), 1))))
		entries = append(entries, a.entry(manifestCmd(fmt.Sprintf("r%d", i%3), dg(100+i), []string{"t", fmt.Sprint(i)}, dg(i%5))))
	}
	entries = append(entries, a.entry(&pb.Command{})) // refused everywhere alike
	entries = append(entries, Entry{Index: uint64(len(entries) + 1), Data: []byte{0xff, 0x01}})
	ra, rb := a.st.ApplyBatch(entries), b.st.ApplyBatch(entries[:10])
	rb = append(rb, b.st.ApplyBatch(entries[10:])...)
	for i := range ra {
		if (ra[i] == nil) != (rb[i] == nil) {
			t.Fatalf("entry %d: %v vs %v", i, ra[i], rb[i])
		}
	}
	da, db := a.dump(), b.dump()
	if !bytes.Equal(da, db) {
		t.Fatal("replicas diverged")
	}
	c := newHarness(t)
	c.must(commitCmd("junk", dg(99), 1, seg("junk", 1)))
	if err := c.st.Restore(bytes.NewReader(da)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.dump(), da) {
		t.Fatal("restored state differs from the snapshot")
	}
	if c.st.AppliedIndex() != a.st.AppliedIndex() {
		t.Fatalf("applied index %d after restore, want %d", c.st.AppliedIndex(), a.st.AppliedIndex())
	}
	if _, err := c.st.Blob(dg(99)); !errors.Is(err, ErrBlobUnknown) {
		t.Fatal("restore kept state that was not in the snapshot")
	}
	// A corrupt snapshot is refused and leaves the state alone.
	for _, bad := range [][]byte{nil, []byte("nope"), da[:len(da)/2]} {
		if err := c.st.Restore(bytes.NewReader(bad)); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("corrupt snapshot: %v", err)
		}
	}
	if !bytes.Equal(c.dump(), da) {
		t.Fatal("a refused restore changed the state")
	}
}

func TestErrorCodesRoundTrip(t *testing.T) {
	for code, s := range errorCodes {
		err := fmt.Errorf("%w: detail", s)
		if got := ErrorCode(err); got != code {
			t.Fatalf("ErrorCode(%v) = %q, want %q", err, got, code)
		}
		back := ErrorFromCode(code, err.Error())
		if !errors.Is(back, s) || back.Error() != err.Error() {
			t.Fatalf("round trip of %s: %v", code, back)
		}
	}
	if ErrorFromCode("", "x") != nil {
		t.Fatal("empty code must be no error")
	}
}

// FuzzApply: decoding and applying never panics on bytes the node did not
// write, and an undecodable entry changes nothing.
func FuzzApply(f *testing.F) {
	good, _ := proto.Marshal(manifestCmd("r", dg(1), []string{"t"}, dg(2)))
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		h := newHarness(t)
		_ = h.st.Apply(Entry{Index: 1, Data: data})
		if h.st.AppliedIndex() != 1 {
			t.Fatal("applied index did not advance")
		}
	})
}

// A proposal retried after a lost reply is applied once and answers as the
// first time did, refusals included.
func TestRequestIDsDeduplicate(t *testing.T) {
	h := newHarness(t)
	c := commitCmd("r", dg(1), 1, seg("s", 1))
	c.RequestId = "req-1"
	h.must(c)
	h.must(c) // the retry succeeds like the first one
	if o, _ := h.st.Orphans("", 10); len(o) != 0 {
		t.Fatalf("a retried commit orphaned the blob's own segments: %v", o)
	}
	if rc, _ := h.st.RefCount(dg(1)); rc.Links != 1 {
		t.Fatalf("retry applied twice: %v", rc)
	}
	m := manifestCmd("r", dg(100), []string{"v"}, dg(404))
	m.RequestId = "req-2"
	if err := h.apply(m); !errors.Is(err, ErrManifestBlobUnknown) {
		t.Fatal(err)
	}
	h.must(commitCmd("r", dg(404), 1, seg("late", 1)))
	if err := h.apply(m); !errors.Is(err, ErrManifestBlobUnknown) {
		t.Fatalf("retry of a refused request must be refused the same way, got %v", err)
	}
	// Without a request id the same command is a new request.
	m.RequestId = ""
	h.must(m)
	// Request ids expire by proposer time.
	h.now += requestTTL + 1e9
	h.must(commitCmd("r", dg(2), 1, seg("s2", 1)))
	x := commitCmd("r", dg(3), 1, seg("s3", 1))
	x.RequestId = "req-3"
	h.must(x)
	if ok, _ := h.st.has(reqKey("req-1")); ok {
		t.Fatal("expired request id kept")
	}
	if ok, _ := h.st.has(reqKey("req-3")); !ok {
		t.Fatal("fresh request id not kept")
	}
}

// A second commit of stored content orphans only the new copy's segments.
func TestDuplicateCommitOrphansOnlyNewSegments(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("r", dg(1), 2, seg("a", 1), seg("b", 1)))
	h.must(commitCmd("r", dg(1), 2, seg("a", 1), seg("c", 1)))
	o, _ := h.st.Orphans("", 10)
	if len(o) != 1 || o[0].Id != "c" {
		t.Fatalf("orphans %v", o)
	}
}

func TestNodeRegistry(t *testing.T) {
	h := newHarness(t)
	reg := func(id, addr string) *pb.Command {
		return &pb.Command{Op: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNode{Node: &pb.NodeRecord{
			Id: id, GrpcAddr: addr, Roles: []string{"storage"}, Zone: "z1"}}}}
	}
	h.must(reg("s1", "a:1"))
	h.must(reg("s2", "a:2"))
	h.refuse(&pb.Command{Op: &pb.Command_SetNodeState{SetNodeState: &pb.SetNodeState{Id: "s9", State: NodeDead}}}, ErrNodeUnknown)
	h.refuse(&pb.Command{Op: &pb.Command_SetNodeState{SetNodeState: &pb.SetNodeState{Id: "s1", State: "sleepy"}}}, ErrCommandInvalid)
	h.must(&pb.Command{Op: &pb.Command_SetNodeState{SetNodeState: &pb.SetNodeState{Id: "s1", State: NodeDraining}}})
	h.must(reg("s1", "a:11")) // a restart re-registers but does not end the drain
	n, err := h.st.Node("s1")
	if err != nil || n.GrpcAddr != "a:11" || n.State != NodeDraining {
		t.Fatalf("node %v %v", n, err)
	}
	h.must(&pb.Command{Op: &pb.Command_SetNodeState{SetNodeState: &pb.SetNodeState{Id: "s2", State: NodeDead}}})
	h.must(reg("s2", "a:2"))
	if n, _ := h.st.Node("s2"); n.State != NodeAlive {
		t.Fatalf("a dead node that registers again is alive: %v", n)
	}
	h.must(&pb.Command{Op: &pb.Command_RemoveNode{RemoveNode: &pb.RemoveNode{Id: "s2"}}})
	h.refuse(&pb.Command{Op: &pb.Command_RemoveNode{RemoveNode: &pb.RemoveNode{Id: "s2"}}}, ErrNodeUnknown)
	// A node the layouts still place shards on cannot be removed.
	h.must(commitCmd("r", dg(5), 10, ecSeg("held", "s1", "x", "y")))
	h.refuse(&pb.Command{Op: &pb.Command_RemoveNode{RemoveNode: &pb.RemoveNode{Id: "s1"}}}, ErrNodeNotEmpty)
	nodes, _ := h.st.Nodes()
	if len(nodes) != 1 || nodes[0].Id != "s1" {
		t.Fatalf("nodes %v", nodes)
	}
}

func ecSeg(id string, nodes ...string) *pb.Segment {
	s := &pb.Segment{Id: id, Length: 10, K: 2, M: 1, ShardSize: 5, Format: 1}
	for i, n := range nodes {
		if n != "" {
			s.Shards = append(s.Shards, &pb.ShardRef{Index: uint32(i), Node: n, Blake3: make([]byte, 32)})
		}
	}
	return s
}

// Shard locations are indexed by node; repair and drain move them with
// compare-and-set commands, and the repair queue follows redundancy.
func TestShardLocationsAndRepairQueue(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("r", dg(1), 20, ecSeg("full", "a", "b", "c"), ecSeg("short", "a", "", "c")))
	locs, err := h.st.ShardsOnNode("a", ShardLoc{}, 10)
	if err != nil || fmt.Sprint(locs) != "[{full 0} {short 0}]" {
		t.Fatalf("shards on a: %v %v", locs, err)
	}
	if n, _ := h.st.CountShardsOnNode("b"); n != 1 {
		t.Fatalf("shards on b: %d", n)
	}
	q, _ := h.st.RepairQueue("", 10)
	if len(q) != 1 || q[0].SegmentId != "short" || q[0].Digest != dg(1) {
		t.Fatalf("a segment written below redundancy is not queued: %v", q)
	}
	sum := make([]byte, 32)
	replace := func(seg string, idx uint32, old, nw string) *pb.Command {
		return &pb.Command{Op: &pb.Command_ReplaceShard{ReplaceShard: &pb.ReplaceShard{
			SegmentId: seg, Index: idx, OldNode: old, NewNode: nw, Blake3: sum}}}
	}
	h.refuse(replace("short", 1, "x", "d"), ErrShardMoved) // it has no location, not x
	h.refuse(replace("short", 7, "", "d"), ErrCommandInvalid)
	h.refuse(replace("nope", 1, "", "d"), ErrBlobUnknown)
	h.must(replace("short", 1, "", "d"))
	if q, _ := h.st.RepairQueue("", 10); len(q) != 0 {
		t.Fatalf("a repaired segment stays queued: %v", q)
	}
	_, seg, err := h.st.Segment("short")
	if err != nil || len(seg.Shards) != 3 || seg.Shards[1].Node != "d" {
		t.Fatalf("segment after repair: %v %v", seg, err)
	}
	// A drain moves a shard away from its node.
	h.refuse(replace("full", 0, "b", "e"), ErrShardMoved)
	h.must(replace("full", 0, "a", "e"))
	if n, _ := h.st.CountShardsOnNode("a"); n != 1 {
		t.Fatalf("a still holds %d shards after moving one away", n)
	}
	l, _ := h.st.Blob(dg(1))
	if l.Segments[0].Shards[0].Node != "e" {
		t.Fatalf("layout not updated: %v", l.Segments[0])
	}
	h.must(&pb.Command{Op: &pb.Command_ReportShard{ReportShard: &pb.ReportShard{SegmentId: "full", Index: 2, Node: "c", Reason: "checksum mismatch"}}})
	q, _ = h.st.RepairQueue("", 10)
	if len(q) != 1 || q[0].SegmentId != "full" || !strings.Contains(q[0].Reasons[0], "checksum") {
		t.Fatalf("reported shard not queued: %v", q)
	}
}
