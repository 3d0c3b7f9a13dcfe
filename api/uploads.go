package api

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"

	"github.com/strata-registry/strata/api/oci"
	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/chaos/failpoint"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Upload sessions live in the metastore, so every request of an upload may
// go to a different frontend: each request streams its body into the blob
// pipeline, then commits the new offset, the SHA-256 state and the segments
// it wrote through Raft. A request whose commit is refused (another request
// moved the session first) leaves its segments unreferenced.
//
// Sessions are deferred: POST records nothing and returns an id that carries
// the time it was issued (deferredID); the session's first write records it
// (UpdateUpload with open, or a CommitBlob marked deferred when one PUT is
// the whole upload, the common POST + PUT push). The state machine records
// the end of every session (committed, cancelled, expired), so an id that
// has ended is unknown from then on, and one that was never written is an
// empty session until --upload-idle after it was issued. A push then costs
// one Raft command per request that carries bytes, not one more for POST.

func uploadLocation(name, id string) string { return "/v2/" + name + "/blobs/uploads/" + id }
func blobLocation(name string, d digest.Digest) string {
	return "/v2/" + name + "/blobs/" + d.String()
}

// uploadRange is the value of the Range header for an upload holding n bytes:
// the inclusive range received so far ("0-0" when nothing has been).
func uploadRange(n uint64) string {
	if n == 0 {
		return "0-0"
	}
	return "0-" + strconv.FormatUint(n-1, 10)
}

func setUploadHeaders(w http.ResponseWriter, name, id string, offset uint64) {
	h := w.Header()
	h.Set("Location", uploadLocation(name, id))
	h.Set("Range", uploadRange(offset))
	h.Set("Docker-Upload-UUID", id)
	h.Set("Content-Length", "0")
}

// startUpload serves POST /v2/<name>/blobs/uploads/: a cross-repository
// mount, a single-request push (?digest=), or a new upload session.
func (s *Server) startUpload(w http.ResponseWriter, r *http.Request, name string) error {
	ctx := r.Context()
	q := r.URL.Query()
	if m := q.Get("mount"); m != "" {
		dgst, err := oci.ParseDigest(m)
		if err != nil {
			return err
		}
		ok, err := s.mountFrom(ctx, name, q.Get("from"), dgst.String())
		if err != nil {
			return err
		}
		if ok {
			w.Header().Set("Location", blobLocation(name, dgst))
			w.Header().Set("Docker-Content-Digest", dgst.String())
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusCreated)
			return nil
		}
		// Not mountable: fall through to a new session, as the spec says.
	}
	if d := q.Get("digest"); d != "" {
		dgst, err := oci.ParseDigest(d)
		if err != nil {
			return err
		}
		return s.pushWhole(w, r, name, dgst)
	}
	id := newDeferredID(time.Now())
	setUploadHeaders(w, name, id, 0)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// newDeferredID is the id of a deferred session issued at t: 16 hex digits
// of t in Unix nanoseconds, "-", and a random UUID.
func newDeferredID(t time.Time) string {
	return fmt.Sprintf("%016x-%s", t.UnixNano(), uuid.NewString())
}

// deferredIssued returns when a deferred session id was issued; false for
// an id of another form.
func deferredIssued(id string) (time.Time, bool) {
	hexTime, rest, ok := strings.Cut(id, "-")
	if !ok || len(hexTime) != 16 {
		return time.Time{}, false
	}
	if _, err := uuid.Parse(rest); err != nil {
		return time.Time{}, false
	}
	ns, err := strconv.ParseUint(hexTime, 16, 63)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, int64(ns)), true
}

// pushWhole stores a blob sent in one request with no session.
func (s *Server) pushWhole(w http.ResponseWriter, r *http.Request, name string, dgst digest.Digest) error {
	h, err := newHash(dgst.Algorithm())
	if err != nil {
		return err
	}
	sealer, wk, err := s.newBlobKey(r.Context(), name)
	if err != nil {
		return err
	}
	store, err := s.writeStore(r.Context(), name)
	if err != nil {
		return err
	}
	segs, n, err := store.WriteWith(r.Context(), r.Body, h, blobstore.WriteOptions{Sealer: sealer, Size: r.ContentLength})
	if err != nil {
		return err
	}
	if err := checkDigest(dgst, h); err != nil {
		s.discard(segs, err)
		return err
	}
	if failpoint.Enabled {
		if err := failpoint.Eval(failpoint.UploadBeforeCommit); err != nil {
			return err
		}
	}
	err = s.propose(r.Context(), &pb.Command{Op: &pb.Command_CommitBlob{CommitBlob: &pb.CommitBlob{
		Repo: name, Segments: segs, Digest: dgst.String(), Size: uint64(n), Key: wk,
	}}})
	if err != nil {
		s.discard(segs, err)
		return err
	}
	return blobCreated(w, name, dgst)
}

func blobCreated(w http.ResponseWriter, name string, dgst digest.Digest) error {
	w.Header().Set("Location", blobLocation(name, dgst))
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// session loads an upload and checks it belongs to name. A deferred
// session that has had no write yet is an empty upload of name, not
// recorded (deferred): it exists until --upload-idle after it was issued.
func (s *Server) session(ctx context.Context, name, id string) (u *pb.Upload, deferred bool, err error) {
	u, err = s.meta.Upload(ctx, id)
	if errors.Is(err, metastore.ErrUploadNotStarted) {
		issued, ok := deferredIssued(id)
		if age := time.Since(issued); !ok || age > s.cfg.UploadIdle || age < -time.Hour {
			return nil, false, fmt.Errorf("%w: %s", metastore.ErrUploadUnknown, id)
		}
		return &pb.Upload{Id: id, Repo: name}, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	if u.Repo != name {
		return nil, false, fmt.Errorf("%w: %s in %s", metastore.ErrUploadUnknown, id, name)
	}
	return u, false, nil
}

func (s *Server) uploadStatus(w http.ResponseWriter, r *http.Request, name, id string) error {
	u, _, err := s.session(r.Context(), name, id)
	if err != nil {
		return err
	}
	setUploadHeaders(w, name, id, u.Offset)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// checkChunkStart validates a Content-Range against the session's offset and
// returns the chunk length it declares (-1 when there is no header).
func checkChunkStart(r *http.Request, offset uint64) (int64, error) {
	cr := r.Header.Get("Content-Range")
	if cr == "" {
		return -1, nil
	}
	start, end, err := oci.ParseContentRange(cr)
	if err != nil {
		return 0, err
	}
	if uint64(start) != offset {
		return 0, fmt.Errorf("%w: chunk starts at %d, upload is at %d", errUploadOutOfOrder, start, offset)
	}
	return end - start + 1, nil
}

// chunk is what one request of an upload session wrote.
type chunk struct {
	segs []*pb.Segment
	n    int64
	h    hash.Hash // the session's SHA-256 after this request
	// sealer is the session's segment sealer (nil: in the clear); state
	// its SHA-256 state as it is to be recorded (sealed under the session's
	// data key when it has one).
	sealer blobstore.Sealer
	state  []byte
	// key is the data key drawn for a deferred session's first write,
	// wrapped, to be recorded with it (nil: the session's own, or none).
	key *pb.WrappedKey
}

// writeChunk streams the request body into the pipeline after the session's
// bytes, continuing its SHA-256, sealed with the session's data key (for a
// deferred session's first write, a new one).
func (s *Server) writeChunk(r *http.Request, u *pb.Upload, deferred bool) (*chunk, error) {
	want, err := checkChunkStart(r, u.Offset)
	if err != nil {
		return nil, err
	}
	var dk []byte
	var newKey *pb.WrappedKey
	if deferred {
		dk, newKey, err = s.newDataKey(r.Context(), u.Repo)
	} else {
		dk, err = s.dataKey(r.Context(), u.Key)
	}
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	sealer, err := sealerOf(dk)
	if err != nil {
		return nil, err
	}
	state, err := openHashState(dk, u)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	if len(state) > 0 {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
			return nil, fmt.Errorf("%w: upload hash state: %v", metastore.ErrCorrupt, err)
		}
	}
	store, err := s.writeStore(r.Context(), u.Repo)
	if err != nil {
		return nil, err
	}
	segs, n, err := store.WriteWith(r.Context(), r.Body, h, blobstore.WriteOptions{Sealer: sealer, Offset: int64(u.Offset), Size: r.ContentLength})
	if err != nil {
		return nil, err
	}
	if want >= 0 && n != want {
		err := fmt.Errorf("%w: Content-Range declares %d bytes, body had %d", errSizeMismatch, want, n)
		s.discard(segs, err)
		return nil, err
	}
	c := &chunk{segs: segs, n: n, h: h, sealer: sealer, key: newKey}
	if state, err = h.(encoding.BinaryMarshaler).MarshalBinary(); err == nil {
		c.state, err = sealHashState(dk, u.Id, state)
	}
	if err != nil {
		s.discard(segs, err)
		return nil, err
	}
	return c, nil
}

func (s *Server) patchUpload(w http.ResponseWriter, r *http.Request, name, id string) error {
	u, deferred, err := s.session(r.Context(), name, id)
	if err != nil {
		return err
	}
	c, err := s.writeChunk(r, u, deferred)
	if err != nil {
		return err
	}
	var open *pb.OpenUpload
	if deferred {
		open = &pb.OpenUpload{Id: id, Repo: name, Key: c.key}
	}
	newOffset := u.Offset + uint64(c.n)
	if failpoint.Enabled {
		if err := failpoint.Eval(failpoint.UploadBeforeUpdate); err != nil {
			return err
		}
	}
	err = s.propose(r.Context(), &pb.Command{Op: &pb.Command_UpdateUpload{UpdateUpload: &pb.UpdateUpload{
		Id: id, ExpectOffset: u.Offset, NewOffset: newOffset, Sha256State: c.state, Segments: c.segs, Open: open,
	}}})
	if err != nil {
		s.discard(c.segs, err)
		return err
	}
	setUploadHeaders(w, name, id, newOffset)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func (s *Server) finishUpload(w http.ResponseWriter, r *http.Request, name, id string) error {
	dgst, err := oci.ParseDigest(r.URL.Query().Get("digest"))
	if err != nil {
		return err
	}
	u, deferred, err := s.session(r.Context(), name, id)
	if err != nil {
		return err
	}
	c, err := s.writeChunk(r, u, deferred)
	if err != nil {
		return err
	}
	segs, n, h := c.segs, c.n, c.h
	if dgst.Algorithm() != digest.SHA256 {
		// Only SHA-256 is kept running across requests; any other
		// algorithm is computed over the stored bytes now.
		if h, err = newHash(dgst.Algorithm()); err != nil {
			s.discard(segs, err)
			return err
		}
		all := append(append([]*pb.Segment(nil), u.Segments...), segs...)
		if err := s.blobstore().ReadRangeWith(r.Context(), h, all, 0, int64(u.Offset)+n, blobstore.ReadOptions{Sealer: c.sealer}); err != nil {
			return err
		}
	}
	if err := checkDigest(dgst, h); err != nil {
		s.discard(segs, err)
		return err
	}
	if failpoint.Enabled {
		if err := failpoint.Eval(failpoint.UploadBeforeCommit); err != nil {
			return err
		}
	}
	err = s.propose(r.Context(), &pb.Command{Op: &pb.Command_CommitBlob{CommitBlob: &pb.CommitBlob{
		Repo: name, UploadId: id, ExpectOffset: u.Offset, Segments: segs,
		Digest: dgst.String(), Size: u.Offset + uint64(n), Deferred: deferred, Key: c.key,
	}}})
	if err != nil {
		s.discard(segs, err)
		return err
	}
	return blobCreated(w, name, dgst)
}

func (s *Server) cancelUpload(w http.ResponseWriter, r *http.Request, name, id string) error {
	_, deferred, err := s.session(r.Context(), name, id)
	if err != nil {
		return err
	}
	if err := s.propose(r.Context(), &pb.Command{Op: &pb.Command_CancelUpload{
		CancelUpload: &pb.CancelUpload{Id: id, Deferred: deferred},
	}}); err != nil {
		return err
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// discard deletes segments that no metadata will reference, but only when
// cause proves that: the state machine refused the command or it was never
// proposed. After an ambiguous failure (a timeout, a lost leader) the
// command may still have committed, so the segments are left for the orphan
// sweeper rather than risk deleting acknowledged data.
func (s *Server) discard(segs []*pb.Segment, cause error) {
	if len(segs) == 0 || !definitelyNotCommitted(cause) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		defer cancel()
		if err := s.blobstore().Delete(ctx, segs); err != nil {
			s.log.Warn("discarding unreferenced segments", "err", err)
		}
	}()
}

func definitelyNotCommitted(err error) bool {
	if metastore.ErrorCode(err) != "" {
		return true
	}
	c, known := codeOf(err)
	return known && c.status < 500
}

func newHash(alg digest.Algorithm) (hash.Hash, error) {
	switch alg {
	case digest.SHA256:
		return sha256.New(), nil
	case digest.SHA512:
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("%w: %s", oci.ErrDigestUnsupported, alg)
}

func checkDigest(want digest.Digest, h hash.Hash) error {
	got := digest.NewDigestFromBytes(want.Algorithm(), h.Sum(nil))
	if got != want {
		return fmt.Errorf("%w: computed %s, client said %s", errDigestMismatch, got, want)
	}
	return nil
}
