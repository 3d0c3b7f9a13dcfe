package metastore

import (
	"errors"
	"testing"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

func collect(dgst string, cutoff int64) *pb.Command {
	return &pb.Command{Op: &pb.Command_CollectBlob{CollectBlob: &pb.CollectBlob{Digest: dgst, CutoffUnixNano: cutoff}}}
}

// The collector's command re-checks references atomically: a blob a
// manifest references, or one unreferenced only since after the cutoff, is
// refused; a collected blob leaves tombstones, so a racing manifest push
// fails, and its segments become orphans.
func TestCollectBlob(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("a", dg(1), 1, seg("cfg", 1)))
	h.must(commitCmd("a", dg(2), 10, ecSeg("lay", "x1", "x2", "x3")))
	h.must(&pb.Command{Op: &pb.Command_MountBlob{MountBlob: &pb.MountBlob{Repo: "b", Digest: dg(2), From: "a"}}})
	cands, _ := h.st.GCCandidates(h.now, 10)
	if len(cands) != 2 {
		t.Fatalf("fresh blobs are GC candidates once unreferenced: %v", cands)
	}
	h.must(manifestCmd("a", dg(100), []string{"v1"}, dg(1), dg(2)))
	if cands, _ := h.st.GCCandidates(h.now, 10); len(cands) != 0 {
		t.Fatalf("referenced blobs stay candidates: %v", cands)
	}
	h.refuse(collect(dg(2), h.now), ErrBlobInUse)
	h.must(&pb.Command{Op: &pb.Command_DeleteManifest{DeleteManifest: &pb.DeleteManifest{Repo: "a", Digest: dg(100)}}})
	since := h.now
	h.refuse(collect(dg(2), since-1), ErrBlobInUse) // unreferenced only since after the cutoff
	h.must(collect(dg(2), since))
	for _, repo := range []string{"a", "b"} {
		if _, err := h.st.RepoBlob(repo, dg(2)); !errors.Is(err, ErrBlobUnknown) {
			t.Fatalf("collected blob still in %s: %v", repo, err)
		}
	}
	if n, _ := h.st.CountShardsOnNode("x1"); n != 0 {
		t.Fatalf("shard index kept %d entries of a collected blob", n)
	}
	if ok, _ := h.st.SegmentReferenced("lay"); !ok {
		t.Fatal("a collected blob's segment must stay referenced as an orphan until its shards are gone")
	}
	o, _ := h.st.Orphans("", 10)
	if len(o) != 1 || o[0].Id != "lay" {
		t.Fatalf("orphans %v", o)
	}
	// A push that raced the collection fails and the client uploads again.
	racer := manifestCmd("b", dg(101), nil, dg(2))
	h.refuse(racer, ErrManifestBlobUnknown)
	sparse := manifestCmd("b", dg(101), nil)
	sparse.GetPutManifest().OptionalBlobs = []string{dg(2)}
	h.refuse(sparse, ErrManifestBlobUnknown)
	h.must(commitCmd("b", dg(2), 10, ecSeg("lay2", "n1", "n2", "n3")))
	h.must(racer)
	h.must(&pb.Command{Op: &pb.Command_DropOrphans{DropOrphans: &pb.DropOrphans{SegmentIds: []string{"lay"}}}})
	if ok, _ := h.st.SegmentReferenced("lay"); ok {
		t.Fatal("dropped orphan still referenced")
	}
}

// Segments of open uploads are referenced until the upload commits or is
// cancelled; idle uploads are listed for the collector.
func TestUploadSegmentsAreReferenced(t *testing.T) {
	h := newHarness(t)
	h.must(&pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: "u", Repo: "r"}}})
	h.must(&pb.Command{Op: &pb.Command_UpdateUpload{UpdateUpload: &pb.UpdateUpload{Id: "u", NewOffset: 1, Segments: []*pb.Segment{seg("p1", 1)}}}})
	if ok, _ := h.st.SegmentReferenced("p1"); !ok {
		t.Fatal("segment of an open upload is not referenced")
	}
	idle, _ := h.st.IdleUploads(h.now+1, 10)
	if len(idle) != 1 {
		t.Fatalf("idle uploads %v", idle)
	}
	if idle, _ := h.st.IdleUploads(h.now-1, 10); len(idle) != 0 {
		t.Fatalf("a fresh upload is idle: %v", idle)
	}
	c := commitCmd("r", dg(1), 1)
	c.GetCommitBlob().UploadId = "u"
	c.GetCommitBlob().ExpectOffset = 1
	h.must(c)
	if ok, _ := h.st.SegmentReferenced("p1"); !ok {
		t.Fatal("segment of a committed blob is not referenced")
	}
	if ok, _ := h.st.has(upSegKey("p1")); ok {
		t.Fatal("upload segment index kept after commit")
	}
}

func TestTagImmutability(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("r", dg(1), 1, seg("c", 1)))
	h.must(manifestCmd("r", dg(100), []string{"v1", "latest", "dev-1"}, dg(1)))
	set := func(mode string, excl ...string) *pb.Command {
		return &pb.Command{Op: &pb.Command_SetRepositoryPolicy{SetRepositoryPolicy: &pb.SetRepositoryPolicy{
			Repo: "r", Set: []string{"tag_mutability"}, TagMutability: mode, MutabilityExclusions: excl}}}
	}
	h.refuse(set("SOMETIMES"), ErrCommandInvalid)
	h.refuse(&pb.Command{Op: &pb.Command_SetRepositoryPolicy{SetRepositoryPolicy: &pb.SetRepositoryPolicy{Repo: "nope", Set: []string{"tag_mutability"}, TagMutability: Immutable}}}, ErrRepoUnknown)
	h.must(set(ImmutableWithExclusion, "latest", "dev-*"))
	h.refuse(manifestCmd("r", dg(101), []string{"v1"}, dg(1)), ErrTagImmutable)
	h.must(manifestCmd("r", dg(101), []string{"latest", "dev-1", "v2"}, dg(1)))
	h.must(manifestCmd("r", dg(101), []string{"v2"}, dg(1))) // same digest: not a move
	h.must(set(MutableWithExclusion, "release-*"))
	h.must(manifestCmd("r", dg(102), []string{"release-1"}, dg(1)))
	h.refuse(manifestCmd("r", dg(101), []string{"release-1"}, dg(1)), ErrTagImmutable)
	h.must(manifestCmd("r", dg(101), []string{"v1"}, dg(1)))
	h.must(set(Immutable))
	h.refuse(manifestCmd("r", dg(102), []string{"latest"}, dg(1)), ErrTagImmutable)
	h.must(manifestCmd("r", dg(102), []string{"brand-new"}, dg(1))) // a new tag may be created
}

func TestMatchWildcard(t *testing.T) {
	for _, c := range []struct {
		p, s string
		want bool
	}{
		{"latest", "latest", true}, {"latest", "latest2", false}, {"*", "", true}, {"dev-*", "dev-", true},
		{"dev-*", "dev-12", true}, {"dev-*", "prod-1", false}, {"*-rc*", "v1-rc2", true}, {"a*b*c", "abc", true},
		{"a*b*c", "acb", false}, {"*prod", "preprod", true}, {"a**b", "ab", true}, {"x*x", "x", false},
	} {
		if got := MatchWildcard(c.p, c.s); got != c.want {
			t.Errorf("MatchWildcard(%q, %q) = %v", c.p, c.s, got)
		}
	}
}

func TestDeleteRepositoryAndPulls(t *testing.T) {
	h := newHarness(t)
	h.must(commitCmd("r", dg(1), 1, seg("c", 1)))
	h.must(manifestCmd("r", dg(100), []string{"v1"}, dg(1)))
	h.must(&pb.Command{Op: &pb.Command_RecordPulls{RecordPulls: &pb.RecordPulls{Pulls: []*pb.Pull{
		{Repo: "r", Digest: dg(100), TimeUnixNano: 42}, {Repo: "r", Digest: dg(999), TimeUnixNano: 43}}}}})
	imgs, _ := h.st.Images("r")
	if len(imgs) != 1 || imgs[0].LastPulledNs != 42 || len(imgs[0].Tags) != 1 {
		t.Fatalf("images %+v", imgs)
	}
	h.refuse(&pb.Command{Op: &pb.Command_DeleteRepository{DeleteRepository: &pb.DeleteRepository{Repo: "r"}}}, ErrRepoNotEmpty)
	h.refuse(&pb.Command{Op: &pb.Command_DeleteRepository{DeleteRepository: &pb.DeleteRepository{Repo: "x"}}}, ErrRepoUnknown)
	h.must(&pb.Command{Op: &pb.Command_DeleteRepository{DeleteRepository: &pb.DeleteRepository{Repo: "r", Force: true}}})
	if _, err := h.st.Repository("r"); !errors.Is(err, ErrRepoUnknown) {
		t.Fatal("repository survived deletion")
	}
	if rc, _ := h.st.RefCount(dg(1)); rc.Links != 0 || rc.ManifestRefs != 0 {
		t.Fatalf("refcounts after repository deletion %v", rc)
	}
	if c, _ := h.st.GCCandidates(h.now, 10); len(c) != 1 || c[0].Digest != dg(1) {
		t.Fatalf("blob of a deleted repository is not collectable: %v", c)
	}
}

func TestCreateRepository(t *testing.T) {
	h := newHarness(t)
	create := &pb.Command{Op: &pb.Command_CreateRepository{CreateRepository: &pb.CreateRepository{
		Repo: "team/app", TagMutability: Immutable}}}
	h.must(create)
	h.refuse(create, ErrRepoExists)
	h.refuse(&pb.Command{Op: &pb.Command_CreateRepository{CreateRepository: &pb.CreateRepository{Repo: "x", TagMutability: "NOPE"}}}, ErrCommandInvalid)
	r, err := h.st.Repository("team/app")
	if err != nil || r.TagMutability != Immutable {
		t.Fatalf("%v %v", r, err)
	}
	h.must(commitCmd("team/app", dg(1), 1, seg("c", 1)))
	h.must(manifestCmd("team/app", dg(100), []string{"v1"}, dg(1)))
	h.refuse(manifestCmd("team/app", dg(101), []string{"v1"}, dg(1)), ErrTagImmutable)
}

func TestDurabilityClass(t *testing.T) {
	h := newHarness(t)
	h.refuse(&pb.Command{Op: &pb.Command_CreateRepository{CreateRepository: &pb.CreateRepository{Repo: "d", DurabilityK: 0, DurabilityM: 2}}}, ErrCommandInvalid)
	h.must(&pb.Command{Op: &pb.Command_CreateRepository{CreateRepository: &pb.CreateRepository{Repo: "d", DurabilityK: 1, DurabilityM: 2}}})
	h.refuse(&pb.Command{Op: &pb.Command_SetRepositoryPolicy{SetRepositoryPolicy: &pb.SetRepositoryPolicy{Repo: "d", Set: []string{"durability"}, DurabilityK: 30, DurabilityM: 3}}}, ErrCommandInvalid)
	h.must(&pb.Command{Op: &pb.Command_SetRepositoryPolicy{SetRepositoryPolicy: &pb.SetRepositoryPolicy{Repo: "d", Set: []string{"durability"}, DurabilityK: 4, DurabilityM: 2}}})
	r, _ := h.st.Repository("d")
	if r.DurabilityK != 4 || r.DurabilityM != 2 {
		t.Fatalf("durability %d+%d", r.DurabilityK, r.DurabilityM)
	}
}
