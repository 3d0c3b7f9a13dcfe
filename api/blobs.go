package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/strata-registry/strata/api/oci"
	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// getBlob serves GET and HEAD of /v2/<name>/blobs/<digest>, with Range.
func (s *Server) getBlob(w http.ResponseWriter, r *http.Request, name, ref string) error {
	dgst, err := oci.ParseDigest(ref)
	if err != nil {
		return err
	}
	layout, err := s.meta.RepoBlob(r.Context(), name, dgst.String())
	if err != nil {
		return err
	}
	size := int64(layout.Size)
	h := w.Header()
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("ETag", `"`+dgst.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "max-age=31536000")

	start, end, partial := int64(0), size-1, false
	if rh := r.Header.Get("Range"); rh != "" {
		st, en, ok, err := oci.ParseRange(rh, size)
		switch {
		case errors.Is(err, oci.ErrRangeNotSatisfiable):
			h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			return err
		case err != nil:
			// A malformed or multi-range header is ignored: whole blob.
		case ok:
			start, end, partial = st, en, true
		}
	}
	length := end - start + 1
	var sealer blobstore.Sealer
	if r.Method != http.MethodHead && length > 0 {
		if sealer, err = s.layoutSealer(r.Context(), layout, name); err != nil {
			return err
		}
	}
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	status := http.StatusOK
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
		status = http.StatusPartialContent
	}
	if r.Method == http.MethodHead || length == 0 {
		w.WriteHeader(status)
		return nil
	}
	// The status line goes out with the first byte of the body. Until then
	// the read may still be refused (no read memory for its first segment
	// within dataAdmitWait: 429, as when every data slot is taken) or fail
	// (a first segment that cannot be read), and the client gets an error
	// response instead of a 200 cut short.
	bw := &bodyWriter{w: w, status: status}
	err = s.blobstore().ReadRangeWith(r.Context(), bw, layout.Segments, start, length,
		blobstore.ReadOptions{Sealer: sealer, AdmitWait: dataAdmitWait})
	if err == nil {
		return nil
	}
	if !bw.started && r.Context().Err() == nil {
		for _, k := range []string{"Content-Length", "Content-Range", "Accept-Ranges", "Cache-Control", "ETag", "Docker-Content-Digest"} {
			h.Del(k) // they describe the blob, not the error
		}
		if errors.Is(err, blobstore.ErrReadBudget) {
			s.metrics.throttled.Inc()
			return errTooManyRequests
		}
		return err
	}
	// The status line is gone; all that is left is to cut the body short
	// so the client sees a truncated transfer, never wrong bytes.
	s.log.Error("blob read failed mid-response", "repo", name, "digest", dgst, "err", err)
	panic(http.ErrAbortHandler)
}

// bodyWriter writes a response's status line (with the headers set so far)
// before the first byte of its body.
type bodyWriter struct {
	w       http.ResponseWriter
	status  int
	started bool
}

func (b *bodyWriter) Write(p []byte) (int, error) {
	if !b.started {
		b.started = true
		b.w.WriteHeader(b.status)
	}
	return b.w.Write(p)
}

// deleteBlob unlinks a blob from a repository. Its bytes go when nothing
// references them any more (garbage collection).
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, name, ref string) error {
	dgst, err := oci.ParseDigest(ref)
	if err != nil {
		return err
	}
	if err := s.propose(r.Context(), &pb.Command{Op: &pb.Command_UnlinkBlob{
		UnlinkBlob: &pb.UnlinkBlob{Repo: name, Digest: dgst.String()},
	}}); err != nil {
		return err
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// propose replicates a command, bounded by requestTimeout.
func (s *Server) propose(ctx context.Context, cmd *pb.Command) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	return s.meta.Propose(ctx, cmd)
}

// mountFrom links an existing blob into name. from names the source
// repository; when it does not hold the blob (or is empty) any repository
// that links it will do (automatic mount).
func (s *Server) mountFrom(ctx context.Context, name, from, dgst string) (bool, error) {
	if from != "" {
		if _, err := s.meta.RepoBlob(ctx, from, dgst); err != nil && !errors.Is(err, metastore.ErrBlobUnknown) {
			return false, err
		} else if err != nil {
			from = ""
		}
	}
	if from == "" {
		repos, err := s.meta.BlobRepositories(ctx, dgst, 1)
		if err != nil {
			return false, err
		}
		if len(repos) == 0 {
			return false, nil
		}
		from = repos[0]
	}
	mount := &pb.MountBlob{Repo: name, Digest: dgst, From: from}
	if s.cfg.Keys != nil {
		var err error
		if mount.KeyName, err = s.keyName(ctx, name); err != nil {
			return false, err
		}
	}
	err := s.propose(ctx, &pb.Command{Op: &pb.Command_MountBlob{MountBlob: mount}})
	if err == nil && s.cfg.Keys != nil {
		s.keyJobs.kick() // a copy of the blob's data key under name's key may be needed
	}
	if errors.Is(err, metastore.ErrBlobUnknown) {
		return false, nil
	}
	return err == nil, err
}
