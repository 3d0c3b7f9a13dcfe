package api

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// POST records nothing: a session is recorded by its first write, and a
// POST + PUT push is one Raft command. The session behaves as the spec says
// throughout: an empty session answers 204 with Range 0-0 until written,
// cancelled or --upload-idle after it was issued; an ended one is 404
// BLOB_UPLOAD_UNKNOWN, as is any id the registry could not have issued.
func TestDeferredUploadSessions(t *testing.T) {
	r := newTestRegistryWith(t, 1, 0, Config{UploadIdle: time.Hour})
	post := func() string {
		resp := r.do("POST", "/v2/d/blobs/uploads/", nil)
		expect(t, resp, http.StatusAccepted)
		return resp.Header.Get("Location")
	}
	status := func(loc string, want int, wantRange string) {
		t.Helper()
		resp := r.do("GET", loc, nil)
		expect(t, resp, want)
		if want == http.StatusNoContent && resp.Header.Get("Range") != wantRange {
			t.Fatalf("GET %s: Range %q, want %q", loc, resp.Header.Get("Range"), wantRange)
		}
	}

	// POST changes no state.
	before := r.fingerprint()
	loc := post()
	if r.fingerprint() != before {
		t.Fatal("POST changed the metadata")
	}
	status(loc, http.StatusNoContent, "0-0")

	// POST + PUT.
	blob := []byte("deferred blob")
	d := digest.FromBytes(blob)
	expect(t, r.do("PUT", loc+"?digest="+d.String(), blob), http.StatusCreated)
	if got := expect(t, r.do("GET", "/v2/d/blobs/"+d.String(), nil), http.StatusOK); !bytes.Equal(got, blob) {
		t.Fatal("blob reads back wrong")
	}
	status(loc, http.StatusNotFound, "")
	expect(t, r.do("PUT", loc+"?digest="+d.String(), blob), http.StatusNotFound)

	// POST, PATCH, PATCH, PUT: the first PATCH records the session.
	loc = post()
	expect(t, r.do("PATCH", loc, []byte("0123"), "Content-Range", "0-3"), http.StatusAccepted)
	status(loc, http.StatusNoContent, "0-3")
	expect(t, r.do("PATCH", loc, []byte("0123"), "Content-Range", "0-3"), http.StatusRequestedRangeNotSatisfiable)
	expect(t, r.do("PATCH", loc, []byte("4567"), "Content-Range", "4-7"), http.StatusAccepted)
	d = digest.FromString("01234567")
	expect(t, r.do("PUT", loc+"?digest="+d.String(), nil), http.StatusCreated)
	status(loc, http.StatusNotFound, "")

	// A bad digest on the only PUT changes nothing; the session goes on.
	loc = post()
	before = r.fingerprint()
	expect(t, r.do("PUT", loc+"?digest="+digest.FromString("other").String(), blob), http.StatusBadRequest)
	if r.fingerprint() != before {
		t.Fatal("a refused PUT changed the metadata")
	}
	status(loc, http.StatusNoContent, "0-0")

	// DELETE before any write.
	expect(t, r.do("DELETE", loc, nil), http.StatusNoContent)
	status(loc, http.StatusNotFound, "")
	expect(t, r.do("DELETE", loc, nil), http.StatusNotFound)
	expect(t, r.do("PATCH", loc, []byte("x")), http.StatusNotFound)

	// Ids the registry did not issue, or issued too long ago.
	for _, id := range []string{"nope", "0000000000000000-nope", newDeferredID(time.Now().Add(-2 * time.Hour)), newDeferredID(time.Now().Add(3 * time.Hour))} {
		status("/v2/d/blobs/uploads/"+id, http.StatusNotFound, "")
		expect(t, r.do("PUT", "/v2/d/blobs/uploads/"+id+"?digest="+digest.FromBytes(blob).String(), blob), http.StatusNotFound)
	}
}
