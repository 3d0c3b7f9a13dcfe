package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/strata-registry/strata/api/oci"
)

// pageParams reads n and last. n absent means the server's page size; n=0 is
// an empty page.
func (s *Server) pageParams(r *http.Request) (n int, last string, err error) {
	q := r.URL.Query()
	last = q.Get("last")
	n = s.cfg.MaxListPage
	if v := q.Get("n"); v != "" {
		n, err = strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, "", fmt.Errorf("%w: n=%q must be a non-negative integer", errBadParameter, v)
		}
		if n > s.cfg.MaxListPage {
			n = s.cfg.MaxListPage
		}
	}
	return n, last, nil
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
	return nil
}

func setNextLink(w http.ResponseWriter, path string, n int, last string) {
	q := url.Values{"n": {strconv.Itoa(n)}, "last": {last}}
	w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, path, q.Encode()))
}

func (s *Server) tagsList(w http.ResponseWriter, r *http.Request, name string) error {
	n, last, err := s.pageParams(r)
	if err != nil {
		return err
	}
	tags := []string{}
	more := false
	if n > 0 {
		// One read: the listing answers NAME_UNKNOWN itself.
		if tags, more, err = s.meta.Tags(r.Context(), name, last, n); err != nil {
			return err
		}
	} else if _, err := s.meta.Repository(r.Context(), name); err != nil {
		return err
	}
	if more {
		setNextLink(w, "/v2/"+name+"/tags/list", n, tags[len(tags)-1])
	}
	return writeJSON(w, r, "application/json", map[string]any{"name": name, "tags": tags})
}

func (s *Server) catalog(w http.ResponseWriter, r *http.Request) error {
	n, last, err := s.pageParams(r)
	if err != nil {
		return err
	}
	repos := []string{}
	more := false
	if n > 0 {
		if repos, more, err = s.meta.Repositories(r.Context(), last, n); err != nil {
			return err
		}
	}
	if more {
		setNextLink(w, "/v2/_catalog", n, repos[len(repos)-1])
	}
	return writeJSON(w, r, "application/json", map[string]any{"repositories": repos})
}

type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         uint64            `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// referrers serves the referrers API: an image index of the manifests whose
// subject is the digest, optionally filtered by artifactType.
func (s *Server) referrers(w http.ResponseWriter, r *http.Request, name, ref string) error {
	dgst, err := oci.ParseDigest(ref)
	if err != nil {
		return err
	}
	descs, err := s.meta.Referrers(r.Context(), name, dgst.String())
	if err != nil {
		return err
	}
	filter := r.URL.Query().Get("artifactType")
	out := []descriptor{}
	for _, d := range descs {
		if filter != "" && d.ArtifactType != filter {
			continue
		}
		e := descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, ArtifactType: d.ArtifactType}
		if e.Annotations, err = s.descriptorAnnotations(r.Context(), d); err != nil {
			return err
		}
		out = append(out, e)
	}
	if filter != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	const indexType = "application/vnd.oci.image.index.v1+json"
	return writeJSON(w, r, indexType, map[string]any{
		"schemaVersion": 2, "mediaType": indexType, "manifests": out,
	})
}
