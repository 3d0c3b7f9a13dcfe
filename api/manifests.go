package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/strata-registry/strata/api/oci"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// putManifest validates a manifest and proposes it, with its tags, as one
// command: the state machine checks that everything it references is there,
// so a push and a garbage collection can never race.
func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, name, ref string) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, oci.MaxManifestSize+1))
	if err != nil {
		return fmt.Errorf("%w: reading body: %v", oci.ErrManifestInvalid, err)
	}
	if len(body) > oci.MaxManifestSize {
		return fmt.Errorf("%w: over %d bytes", oci.ErrManifestTooLarge, oci.MaxManifestSize)
	}
	m, err := oci.ParseManifest(r.Header.Get("Content-Type"), body)
	if err != nil {
		return err
	}
	var dgst digest.Digest
	var tags []string
	if oci.IsDigest(ref) {
		if dgst, err = oci.ParseDigest(ref); err != nil {
			return err
		}
		h, err := newHash(dgst.Algorithm())
		if err != nil {
			return err
		}
		h.Write(body)
		if err := checkDigest(dgst, h); err != nil {
			return err
		}
	} else {
		if err := oci.ValidateTag(ref); err != nil {
			return err
		}
		dgst = digest.FromBytes(body)
		tags = append(tags, ref)
	}
	extra := r.URL.Query()["tag"]
	for _, t := range extra {
		if err := oci.ValidateTag(t); err != nil {
			return err
		}
		tags = append(tags, t)
	}
	var annotations []byte
	if len(m.Annotations) > 0 {
		if annotations, err = json.Marshal(m.Annotations); err != nil {
			return err
		}
	}
	// The config must be there; layers may be absent (a sparse manifest)
	// unless the server is strict, but never ones the repository deleted.
	required, optional := m.Blobs, []string(nil)
	if !s.cfg.StrictManifests && len(m.Blobs) > 1 {
		required, optional = m.Blobs[:1], m.Blobs[1:]
	}
	put := &pb.PutManifest{
		Repo: name, Digest: dgst.String(), MediaType: m.MediaType, Body: body, Tags: tags,
		Blobs: required, OptionalBlobs: optional, OptionalManifests: m.Manifests, Subject: m.Subject,
		ArtifactType: m.ArtifactType, AnnotationsJson: annotations,
	}
	if err := s.sealManifest(r.Context(), put); err != nil {
		return err
	}
	if err := s.propose(r.Context(), &pb.Command{Op: &pb.Command_PutManifest{PutManifest: put}}); err != nil {
		return err
	}
	h := w.Header()
	h.Set("Location", "/v2/"+name+"/manifests/"+dgst.String())
	h.Set("Docker-Content-Digest", dgst.String())
	if m.Subject != "" {
		h.Set("OCI-Subject", m.Subject)
	}
	for _, t := range extra {
		h.Add("OCI-Tag", t)
	}
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// resolve turns a manifest reference (tag or digest) into a digest.
func (s *Server) resolve(r *http.Request, name, ref string) (string, error) {
	if oci.IsDigest(ref) {
		d, err := oci.ParseDigest(ref)
		return d.String(), err
	}
	if err := oci.ValidateTag(ref); err != nil {
		// No manifest can have such a tag: unknown, as the spec's
		// conformance suite expects, rather than a syntax error.
		return "", fmt.Errorf("%w: %v", metastore.ErrManifestUnknown, err)
	}
	t, err := s.meta.Tag(r.Context(), name, ref)
	if err != nil {
		return "", err
	}
	return t.Digest, nil
}

func (s *Server) getManifest(w http.ResponseWriter, r *http.Request, name, ref string) error {
	var rec *pb.ManifestRecord
	var err error
	if oci.IsDigest(ref) {
		var dgst string
		if dgst, err = s.resolve(r, name, ref); err == nil {
			rec, err = s.meta.Manifest(r.Context(), name, dgst)
		}
	} else if err = oci.ValidateTag(ref); err != nil {
		// No manifest can have such a tag: unknown, as the spec's
		// conformance suite expects, rather than a syntax error.
		err = fmt.Errorf("%w: %v", metastore.ErrManifestUnknown, err)
	} else {
		rec, err = s.meta.ManifestByTag(r.Context(), name, ref) // one read, not two
	}
	if err != nil {
		return err
	}
	var body []byte
	if r.Method != http.MethodHead {
		if body, err = s.manifestBody(r.Context(), rec); err != nil {
			return err
		}
	}
	h := w.Header()
	h.Set("Content-Type", rec.MediaType)
	h.Set("Docker-Content-Digest", rec.Digest)
	h.Set("ETag", `"`+rec.Digest+`"`)
	h.Set("Content-Length", strconv.FormatUint(manifestSize(rec), 10))
	if rec.Subject != "" {
		h.Set("OCI-Subject", rec.Subject)
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
		s.pulls.record(name, rec.Digest)
	}
	return nil
}

// deleteManifest deletes a manifest by digest (with every tag pointing at
// it) or just a tag.
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, name, ref string) error {
	var cmd *pb.Command
	if oci.IsDigest(ref) {
		d, err := oci.ParseDigest(ref)
		if err != nil {
			return err
		}
		cmd = &pb.Command{Op: &pb.Command_DeleteManifest{DeleteManifest: &pb.DeleteManifest{Repo: name, Digest: d.String()}}}
	} else {
		if err := oci.ValidateTag(ref); err != nil {
			return err
		}
		cmd = &pb.Command{Op: &pb.Command_DeleteTag{DeleteTag: &pb.DeleteTag{Repo: name, Tag: ref}}}
	}
	if err := s.propose(r.Context(), cmd); err != nil {
		return err
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}
