package chaos

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// The checkers are only worth something if they can fail: these tests run
// them against a fake registry that breaks one promise at a time.

// fakeRegistry serves one blob and one manifest, with faults.
type fakeRegistry struct {
	blob     Blob
	man      ManifestOp
	blobBody func() []byte // what GET of the blob answers
	blobLen  int64         // Content-Length it announces
	blobDgst string        // Docker-Content-Digest it announces
	blobGone bool          // 404 for the blob
	goneCode string        // the code of that 404
	manBody  []byte
	tagGone  bool
}

func newFake() *fakeRegistry {
	b := GeneratedBlob(7, 300<<10)
	body := []byte(`{"schemaVersion":2}`)
	return &fakeRegistry{
		blob: b, blobBody: b.Bytes, blobLen: b.Size, blobDgst: b.Digest, goneCode: "BLOB_UNKNOWN",
		man:     ManifestOp{Repo: "r", Tag: "t1", Digest: LiteralBlob(body).Digest, MediaType: MediaTypeManifest, Body: body},
		manBody: body,
	}
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/blobs/"+f.blob.Digest):
		if f.blobGone {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[{"code":"` + f.goneCode + `"}]}`))
			return
		}
		body := f.blobBody()
		if rg := r.Header.Get("Range"); rg != "" {
			var a, b int64
			spec := strings.TrimPrefix(rg, "bytes=")
			as, bs, _ := strings.Cut(spec, "-")
			a, _ = strconv.ParseInt(as, 10, 64)
			b, _ = strconv.ParseInt(bs, 10, 64)
			b = min(b, f.blob.Size-1)
			w.Header().Set("Content-Range", "bytes "+as+"-"+strconv.FormatInt(b, 10)+"/"+strconv.FormatInt(f.blob.Size, 10))
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(body[a : b+1])
			return
		}
		w.Header().Set("Docker-Content-Digest", f.blobDgst)
		w.Header().Set("Content-Length", strconv.FormatInt(f.blobLen, 10))
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(body)
	case strings.HasSuffix(r.URL.Path, "/manifests/"+f.man.Digest), strings.HasSuffix(r.URL.Path, "/manifests/"+f.man.Tag):
		if f.tagGone && strings.HasSuffix(r.URL.Path, f.man.Tag) {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`))
			return
		}
		w.Header().Set("Docker-Content-Digest", f.man.Digest)
		w.Header().Set("Content-Type", f.man.MediaType)
		w.Header().Set("Content-Length", strconv.Itoa(len(f.manBody)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(f.manBody)
		}
	case strings.HasSuffix(r.URL.Path, "/tags/list"):
		_, _ = w.Write([]byte(`{"name":"r","tags":["t0"]}`))
	default:
		http.NotFound(w, r)
	}
}

func TestCheckersCatchBrokenPromises(t *testing.T) {
	ctx := context.Background()
	flip := func(f *fakeRegistry) {
		f.blobBody = func() []byte {
			b := append([]byte(nil), f.blob.Bytes()...)
			b[len(b)/2] ^= 1
			return b
		}
	}
	cases := []struct {
		name  string
		fault func(*fakeRegistry)
		check func(c *Client, f *fakeRegistry) error
		want  string // in the error; "" for no error
	}{
		{"healthy blob", func(*fakeRegistry) {}, func(c *Client, f *fakeRegistry) error {
			return CheckBlob(ctx, c, "r", f.blob, true)
		}, ""},
		{"one flipped bit", flip, func(c *Client, f *fakeRegistry) error {
			return CheckBlob(ctx, c, "r", f.blob, true)
		}, "WRONG CONTENT"},
		{"flipped bit in an unacknowledged blob", flip, func(c *Client, f *fakeRegistry) error {
			return CheckBlob(ctx, c, "r", f.blob, false)
		}, "WRONG CONTENT"},
		{"short blob", func(f *fakeRegistry) {
			f.blobBody = func() []byte { return f.blob.Bytes()[:f.blob.Size-1] }
			f.blobLen = f.blob.Size - 1
		}, func(c *Client, f *fakeRegistry) error { return CheckBlob(ctx, c, "r", f.blob, true) }, "Content-Length"},
		{"wrong digest header", func(f *fakeRegistry) { f.blobDgst = "sha256:00" }, func(c *Client, f *fakeRegistry) error {
			return CheckBlob(ctx, c, "r", f.blob, true)
		}, "Docker-Content-Digest"},
		{"lost blob", func(f *fakeRegistry) { f.blobGone = true }, func(c *Client, f *fakeRegistry) error {
			return CheckBlob(ctx, c, "r", f.blob, true)
		}, "LOST ACKNOWLEDGED BLOB"},
		{"absent unacknowledged blob", func(f *fakeRegistry) { f.blobGone = true }, func(c *Client, f *fakeRegistry) error {
			return CheckBlob(ctx, c, "r", f.blob, false)
		}, ""},
		{"absent with the wrong code", func(f *fakeRegistry) { f.blobGone, f.goneCode = true, "NAME_UNKNOWN" }, func(c *Client, f *fakeRegistry) error {
			return CheckBlob(ctx, c, "r", f.blob, false)
		}, "want BLOB_UNKNOWN"},
		{"flipped bit in a range", flip, func(c *Client, f *fakeRegistry) error {
			return CheckBlobRange(ctx, c, "r", f.blob, f.blob.Size/2-5, 10)
		}, "WRONG CONTENT"},
		{"range past the end", func(*fakeRegistry) {}, func(c *Client, f *fakeRegistry) error {
			return CheckBlobRange(ctx, c, "r", f.blob, f.blob.Size-5, 10)
		}, ""},
		{"flipped bit at the end of a range past the end", func(f *fakeRegistry) {
			f.blobBody = func() []byte {
				b := append([]byte(nil), f.blob.Bytes()...)
				b[len(b)-1] ^= 1
				return b
			}
		}, func(c *Client, f *fakeRegistry) error {
			return CheckBlobRange(ctx, c, "r", f.blob, f.blob.Size-5, 10)
		}, "WRONG CONTENT"},
		{"healthy manifest", func(*fakeRegistry) {}, func(c *Client, f *fakeRegistry) error {
			return CheckManifest(ctx, c, f.man, true)
		}, ""},
		{"manifest bytes changed", func(f *fakeRegistry) { f.manBody = []byte(`{"schemaVersion":3}`) }, func(c *Client, f *fakeRegistry) error {
			return CheckManifest(ctx, c, f.man, true)
		}, "WRONG CONTENT"},
		{"lost tag", func(f *fakeRegistry) { f.tagGone = true }, func(c *Client, f *fakeRegistry) error {
			return CheckManifest(ctx, c, f.man, true)
		}, "LOST ACKNOWLEDGED MANIFEST"},
		{"tag missing from the listing", func(*fakeRegistry) {}, func(c *Client, f *fakeRegistry) error {
			return CheckTags(ctx, c, "r", []string{"t0", "t1"})
		}, "LOST ACKNOWLEDGED TAGS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			tc.fault(f)
			srv := httptest.NewServer(f)
			defer srv.Close()
			err := tc.check(NewClient(srv.URL), f)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected failure: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("the fault went unnoticed; want an error with %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not mention %q", err, tc.want)
			case tc.want != "" && !errors.As(err, new(*CheckError)):
				t.Fatalf("error %v is not a CheckError", err)
			}
		})
	}
}

func TestGeneratedContentIsStable(t *testing.T) {
	a, b := GeneratedBlob(42, 3<<20+17), GeneratedBlob(42, 3<<20+17)
	if a.Digest != b.Digest {
		t.Fatal("same seed, different digests")
	}
	if c := GeneratedBlob(43, 3<<20+17); c.Digest == a.Digest {
		t.Fatal("different seeds, same digest")
	}
	if err := CompareContent(a, strings.NewReader(string(a.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got := a.SectionOf(1<<20, 10); string(got) != string(a.Bytes()[1<<20:1<<20+10]) {
		t.Fatal("SectionOf differs from Bytes")
	}
	if err := CompareContent(a, strings.NewReader(string(a.Bytes())+"x")); err == nil {
		t.Fatal("a byte too many went unnoticed")
	}
}

func TestParseUploadRange(t *testing.T) {
	for h, want := range map[string]int64{"0-0": 0, "0-9": 10, "0-12582911": 12 << 20} {
		if got, err := parseUploadRange(h); err != nil || got != want {
			t.Errorf("parseUploadRange(%q) = %d, %v; want %d", h, got, err, want)
		}
	}
	for _, h := range []string{"", "1-5", "0-", "0-x", "bytes 0-5/6"} {
		if _, err := parseUploadRange(h); err == nil {
			t.Errorf("parseUploadRange(%q): no error", h)
		}
	}
}
