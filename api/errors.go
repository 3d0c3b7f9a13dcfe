package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/strata-registry/strata/api/oci"
	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore"
)

// Errors raised by the HTTP layer itself.
var (
	errUploadInvalid    = errors.New("blob upload invalid")
	errUploadOutOfOrder = errors.New("blob upload range out of order")
	errDigestMismatch   = errors.New("digest did not match content")
	errSizeMismatch     = errors.New("size did not match content length")
	errUnsupported      = errors.New("operation unsupported")
	errNameUnknown      = errors.New("repository name not known to registry")
	errBadParameter     = errors.New("invalid query parameter")
	errNotFound         = errors.New("no such endpoint")
	errTooManyRequests  = errors.New("too many requests moving blob data at once; retry shortly")
)

// ociCode is an error code of the distribution spec with its HTTP status.
type ociCode struct {
	code   string
	status int
}

// errorTable maps domain errors to OCI error codes, first match wins. This is
// the one place where errors become codes.
var errorTable = []struct {
	err error
	ociCode
}{
	// Client input.
	{oci.ErrNameInvalid, ociCode{"NAME_INVALID", http.StatusBadRequest}},
	{oci.ErrTagInvalid, ociCode{"TAG_INVALID", http.StatusBadRequest}},
	{oci.ErrDigestInvalid, ociCode{"DIGEST_INVALID", http.StatusBadRequest}},
	{oci.ErrDigestUnsupported, ociCode{"DIGEST_INVALID", http.StatusBadRequest}},
	{errDigestMismatch, ociCode{"DIGEST_INVALID", http.StatusBadRequest}},
	{oci.ErrRangeNotSatisfiable, ociCode{"SIZE_INVALID", http.StatusRequestedRangeNotSatisfiable}},
	{oci.ErrContentRangeInvalid, ociCode{"BLOB_UPLOAD_INVALID", http.StatusRequestedRangeNotSatisfiable}},
	{errUploadOutOfOrder, ociCode{"BLOB_UPLOAD_INVALID", http.StatusRequestedRangeNotSatisfiable}},
	{metastore.ErrUploadOffset, ociCode{"BLOB_UPLOAD_INVALID", http.StatusRequestedRangeNotSatisfiable}},
	{errUploadInvalid, ociCode{"BLOB_UPLOAD_INVALID", http.StatusBadRequest}},
	{errSizeMismatch, ociCode{"SIZE_INVALID", http.StatusBadRequest}},
	{metastore.ErrSizeInvalid, ociCode{"SIZE_INVALID", http.StatusBadRequest}},
	{oci.ErrManifestTooLarge, ociCode{"MANIFEST_INVALID", http.StatusRequestEntityTooLarge}},
	{oci.ErrManifestInvalid, ociCode{"MANIFEST_INVALID", http.StatusBadRequest}},
	{oci.ErrManifestUnsupported, ociCode{"MANIFEST_INVALID", http.StatusBadRequest}},
	{errBadParameter, ociCode{"UNSUPPORTED", http.StatusBadRequest}},
	{errUnsupported, ociCode{"UNSUPPORTED", http.StatusMethodNotAllowed}},
	{errNotFound, ociCode{"NOT_FOUND", http.StatusNotFound}},
	{errTooManyRequests, ociCode{"TOOMANYREQUESTS", http.StatusTooManyRequests}},

	// State.
	{metastore.ErrUploadUnknown, ociCode{"BLOB_UPLOAD_UNKNOWN", http.StatusNotFound}},
	{metastore.ErrUploadNotStarted, ociCode{"BLOB_UPLOAD_UNKNOWN", http.StatusNotFound}},
	{metastore.ErrBlobUnknown, ociCode{"BLOB_UNKNOWN", http.StatusNotFound}},
	{metastore.ErrManifestBlobUnknown, ociCode{"MANIFEST_BLOB_UNKNOWN", http.StatusBadRequest}},
	{metastore.ErrManifestUnknown, ociCode{"MANIFEST_UNKNOWN", http.StatusNotFound}},
	{metastore.ErrTagUnknown, ociCode{"MANIFEST_UNKNOWN", http.StatusNotFound}},
	{metastore.ErrRepoUnknown, ociCode{"NAME_UNKNOWN", http.StatusNotFound}},
	{errNameUnknown, ociCode{"NAME_UNKNOWN", http.StatusNotFound}},
	{metastore.ErrTagImmutable, ociCode{"DENIED", http.StatusForbidden}},

	// Availability: the client may retry.
	{cluster.ErrNotLeader, ociCode{"UNAVAILABLE", http.StatusServiceUnavailable}},
	{cluster.ErrNoLeader, ociCode{"UNAVAILABLE", http.StatusServiceUnavailable}},
	{cluster.ErrShutdown, ociCode{"UNAVAILABLE", http.StatusServiceUnavailable}},
	{cluster.ErrUnreachable, ociCode{"UNAVAILABLE", http.StatusServiceUnavailable}},
	{context.DeadlineExceeded, ociCode{"UNAVAILABLE", http.StatusServiceUnavailable}},
	{blobstore.ErrWriteQuorum, ociCode{"UNAVAILABLE", http.StatusServiceUnavailable}},
	{blobstore.ErrNotEnoughNodes, ociCode{"UNAVAILABLE", http.StatusServiceUnavailable}},
	{blobstore.ErrSegmentUnreadable, ociCode{"UNAVAILABLE", http.StatusServiceUnavailable}},
	{keys.ErrUnavailable, ociCode{"UNAVAILABLE", http.StatusServiceUnavailable}},
}

// codeOf returns the OCI code for err; unknown errors are internal errors.
func codeOf(err error) (ociCode, bool) {
	for _, e := range errorTable {
		if errors.Is(err, e.err) {
			return e.ociCode, true
		}
	}
	return ociCode{"UNKNOWN", http.StatusInternalServerError}, false
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// writeError answers with the OCI error body for err. Internal errors are
// logged and their text is not shown to the client.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	c, known := codeOf(err)
	msg := err.Error()
	if !known {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		msg = "internal error"
	} else if c.status >= 500 {
		s.log.Warn("request unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if c.status == http.StatusServiceUnavailable || c.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(c.status)
	if r.Method == http.MethodHead {
		return
	}
	_ = json.NewEncoder(w).Encode(errorBody{Errors: []errorEntry{{Code: c.code, Message: msg}}})
}
