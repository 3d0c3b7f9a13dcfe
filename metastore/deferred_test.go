package metastore

import (
	"errors"
	"testing"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Deferred upload sessions: nothing is recorded until the first write, which
// opens the session (UpdateUpload with open) or is all of it (CommitBlob
// deferred). Every session's end is recorded, so an ended id is refused
// (UPLOAD_UNKNOWN) where an id never written is UPLOAD_NOT_STARTED, until
// DropUploadEnds forgets ends older than its cutoff.
func TestDeferredUploadSessions(t *testing.T) {
	h := newHarness(t)
	if _, err := h.st.Upload("d1"); !errors.Is(err, ErrUploadNotStarted) {
		t.Fatalf("never written: %v", err)
	}

	// PATCH: the first write opens the session; later writes need the offset.
	open := func(id string, expect, newOffset uint64, segID string) *pb.Command {
		return &pb.Command{Op: &pb.Command_UpdateUpload{UpdateUpload: &pb.UpdateUpload{
			Id: id, ExpectOffset: expect, NewOffset: newOffset, Segments: []*pb.Segment{seg(segID, newOffset-expect)},
			Open: &pb.OpenUpload{Id: id, Repo: "r"}}}}
	}
	h.refuse(&pb.Command{Op: &pb.Command_UpdateUpload{UpdateUpload: &pb.UpdateUpload{
		Id: "d1", NewOffset: 4, Segments: []*pb.Segment{seg("x", 4)}, Open: &pb.OpenUpload{Id: "other", Repo: "r"}}}}, ErrCommandInvalid)
	h.must(open("d1", 0, 4, "s1"))
	h.refuse(open("d1", 0, 4, "s2"), ErrUploadOffset) // a racing first write lost
	h.must(open("d1", 4, 6, "s3"))
	if u, err := h.st.Upload("d1"); err != nil || u.Repo != "r" || u.Offset != 6 || len(u.Segments) != 2 {
		t.Fatalf("opened by its first write: %v %v", u, err)
	}
	fin := commitCmd("r", dg(1), 6)
	fin.GetCommitBlob().UploadId, fin.GetCommitBlob().ExpectOffset, fin.GetCommitBlob().Deferred = "d1", 6, true
	h.must(fin)
	if _, err := h.st.Upload("d1"); !errors.Is(err, ErrUploadUnknown) {
		t.Fatalf("committed: %v", err)
	}
	h.refuse(open("d1", 0, 4, "s4"), ErrUploadUnknown) // an ended id does not open again

	// POST + PUT: the commit is the whole session.
	put := commitCmd("r", dg(2), 5, seg("s5", 5))
	put.GetCommitBlob().UploadId, put.GetCommitBlob().Deferred = "d2", true
	stale := commitCmd("r", dg(2), 5, seg("s5", 5))
	stale.GetCommitBlob().UploadId, stale.GetCommitBlob().Deferred, stale.GetCommitBlob().ExpectOffset = "d2", true, 3
	h.refuse(stale, ErrUploadOffset)
	notDeferred := commitCmd("r", dg(2), 5, seg("s5", 5))
	notDeferred.GetCommitBlob().UploadId = "d2"
	h.refuse(notDeferred, ErrUploadUnknown)
	h.must(put)
	if l, err := h.st.RepoBlob("r", dg(2)); err != nil || l.Size != 5 {
		t.Fatalf("deferred commit: %v %v", l, err)
	}
	if _, err := h.st.Upload("d2"); !errors.Is(err, ErrUploadUnknown) {
		t.Fatalf("committed without a record: %v", err)
	}
	again := commitCmd("r", dg(3), 5, seg("s6", 5))
	again.GetCommitBlob().UploadId, again.GetCommitBlob().Deferred = "d2", true
	h.refuse(again, ErrUploadUnknown)

	// DELETE before any write.
	cancel := &pb.Command{Op: &pb.Command_CancelUpload{CancelUpload: &pb.CancelUpload{Id: "d3", Deferred: true}}}
	h.refuse(&pb.Command{Op: &pb.Command_CancelUpload{CancelUpload: &pb.CancelUpload{Id: "d3"}}}, ErrUploadUnknown)
	h.must(cancel)
	h.refuse(cancel, ErrUploadUnknown)
	if _, err := h.st.Upload("d3"); !errors.Is(err, ErrUploadUnknown) {
		t.Fatalf("cancelled: %v", err)
	}

	// A recorded session's end is recorded too.
	h.must(&pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: "u4", Repo: "r"}}})
	h.must(&pb.Command{Op: &pb.Command_CancelUpload{CancelUpload: &pb.CancelUpload{Id: "u4"}}})
	if _, err := h.st.Upload("u4"); !errors.Is(err, ErrUploadUnknown) {
		t.Fatalf("cancelled recorded session: %v", err)
	}
	h.refuse(&pb.Command{Op: &pb.Command_OpenUpload{OpenUpload: &pb.OpenUpload{Id: "u4", Repo: "r"}}}, ErrUploadUnknown)

	// Ends are forgotten by age, a bounded number at a time.
	if n, err := h.st.UploadEndsBefore(h.now+1, 100); err != nil || n != 4 {
		t.Fatalf("ends recorded: %d %v", n, err)
	}
	h.must(&pb.Command{Op: &pb.Command_DropUploadEnds{DropUploadEnds: &pb.DropUploadEnds{BeforeUnixNano: h.now + 1, Limit: 3}}})
	if n, _ := h.st.UploadEndsBefore(h.now, 100); n != 1 {
		t.Fatalf("after dropping 3 of 4: %d left", n)
	}
	h.must(&pb.Command{Op: &pb.Command_DropUploadEnds{DropUploadEnds: &pb.DropUploadEnds{BeforeUnixNano: h.now, Limit: 3}}})
	for _, id := range []string{"d1", "d2", "d3", "u4"} {
		if _, err := h.st.Upload(id); !errors.Is(err, ErrUploadNotStarted) {
			t.Fatalf("%s after its end was dropped: %v", id, err)
		}
	}
}
