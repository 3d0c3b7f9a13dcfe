package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore"
)

// testRegistry is the real single-node stack: Pebble under a Raft voter over
// TCP, local shard directories, and the HTTP API, served by httptest.
type testRegistry struct {
	t   testing.TB
	st  *metastore.Store
	srv *Server
	url string
	dir string
}

func newTestRegistry(t *testing.T, k, m int) *testRegistry {
	t.Helper()
	return newTestRegistryWith(t, k, m, Config{})
}

// newTestRegistryWith is newTestRegistry with the HTTP layer's configuration,
// and tweaks to the blob store's.
func newTestRegistryWith(t testing.TB, k, m int, cfg Config, blobCfg ...func(*blobstore.Config)) *testRegistry {
	t.Helper()
	dir := t.TempDir()
	st, err := metastore.Open(filepath.Join(dir, "pebble"))
	if err != nil {
		t.Fatal(err)
	}
	node, err := cluster.Open(cluster.Config{NodeID: "n1", Dir: filepath.Join(dir, "raft"),
		RaftAddr: "127.0.0.1:0", Bootstrap: true}, st)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := node.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	var nodes []blobstore.Node
	for i := 0; i < k+m; i++ {
		ls, err := blobstore.OpenLocal(fmt.Sprintf("d%d", i), filepath.Join(dir, fmt.Sprintf("shards%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ls.Close() })
		nodes = append(nodes, blobstore.Node{Info: blobstore.NodeInfo{ID: ls.NodeID(), Zone: ls.NodeID(), Free: 1 << 40}, Shards: ls})
	}
	bcfg := blobstore.Config{K: k, M: m, SegmentSize: 1 << 20}
	for _, f := range blobCfg {
		f(&bcfg)
	}
	blobs, err := blobstore.New(bcfg, func() []blobstore.Node { return nodes })
	if err != nil {
		t.Fatal(err)
	}
	meta, err := cluster.NewMeta(cluster.MetaConfig{Node: node, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	srv := New(cfg, meta, blobs)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		node.Close()
		st.Close()
	})
	return &testRegistry{t: t, st: st, srv: srv, url: hs.URL, dir: dir}
}

func (r *testRegistry) do(method, path string, body []byte, hdr ...string) *http.Response {
	r.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, r.url+path, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	return resp
}

func (r *testRegistry) fingerprint() [32]byte {
	r.t.Helper()
	fp, err := r.st.Fingerprint()
	if err != nil {
		r.t.Fatal(err)
	}
	return fp
}

func readAll(t testing.TB, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func expect(t testing.TB, resp *http.Response, status int) []byte {
	t.Helper()
	b := readAll(t, resp)
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d: %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, b)
	}
	return b
}

// pushBlob uploads b with POST then PUT and returns its digest.
func (r *testRegistry) pushBlob(repo string, b []byte) digest.Digest {
	r.t.Helper()
	d := digest.FromBytes(b)
	resp := r.do("POST", "/v2/"+repo+"/blobs/uploads/", nil)
	expect(r.t, resp, http.StatusAccepted)
	loc := resp.Header.Get("Location")
	expect(r.t, r.do("PUT", loc+"?digest="+d.String(), b), http.StatusCreated)
	return d
}

func (r *testRegistry) pushImage(repo, tag string, layers ...[]byte) (digest.Digest, []byte) {
	r.t.Helper()
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := r.pushBlob(repo, cfg)
	var ls []string
	for _, l := range layers {
		d := r.pushBlob(repo, l)
		ls = append(ls, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}`, d, len(l)))
	}
	m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		cd, len(cfg), strings.Join(ls, ",")))
	expect(r.t, r.do("PUT", "/v2/"+repo+"/manifests/"+tag, m, "Content-Type", "application/vnd.oci.image.manifest.v1+json"), http.StatusCreated)
	return digest.FromBytes(m), m
}

type ociErrors struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// Every kind of bad input gets the spec's status and error code, with a
// message, and changes nothing.
func TestBadInputGetsOCIErrorAndChangesNothing(t *testing.T) {
	r := newTestRegistry(t, 1, 0)
	layer := bytes.Repeat([]byte("L"), 3000)
	md, _ := r.pushImage("app", "v1", layer)
	ld := digest.FromBytes(layer)
	resp := r.do("POST", "/v2/app/blobs/uploads/", nil)
	expect(t, resp, http.StatusAccepted)
	up := resp.Header.Get("Location")
	expect(t, r.do("PATCH", up, []byte("0123456789"), "Content-Range", "0-9"), http.StatusAccepted)
	unknown := digest.FromString("nothing here")
	big := append([]byte(`{"schemaVersion":2,"pad":"`), bytes.Repeat([]byte("x"), 4<<20)...)
	big = append(big, `"}`...)
	badData := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":3,"data":"AAAA"},"layers":[]}`, ld))
	missing := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":3},"layers":[]}`, unknown))
	mt := "application/vnd.oci.image.manifest.v1+json"

	cases := []struct {
		name, method, path string
		body               []byte
		hdr                []string
		status             int
		code               string
	}{
		{"bad name", "GET", "/v2/App/tags/list", nil, nil, 400, "NAME_INVALID"},
		{"bad name slashes", "GET", "/v2/a//b/manifests/latest", nil, nil, 400, "NAME_INVALID"},
		{"unknown repo tags", "GET", "/v2/nope/tags/list", nil, nil, 404, "NAME_UNKNOWN"},
		{"unknown repo tags, empty page", "GET", "/v2/nope/tags/list?n=0", nil, nil, 404, "NAME_UNKNOWN"},
		{"bad n", "GET", "/v2/app/tags/list?n=-1", nil, nil, 400, "UNSUPPORTED"},
		{"bad digest", "GET", "/v2/app/blobs/sha256:zzz", nil, nil, 400, "DIGEST_INVALID"},
		{"unsupported digest", "GET", "/v2/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", nil, nil, 400, "DIGEST_INVALID"},
		{"unknown blob", "GET", "/v2/app/blobs/" + unknown.String(), nil, nil, 404, "BLOB_UNKNOWN"},
		{"blob of other repo", "GET", "/v2/other/blobs/" + ld.String(), nil, nil, 404, "BLOB_UNKNOWN"},
		{"unsatisfiable range", "GET", "/v2/app/blobs/" + ld.String(), nil, []string{"Range", "bytes=5000-"}, 416, "SIZE_INVALID"},
		{"unknown manifest", "GET", "/v2/app/manifests/nope", nil, nil, 404, "MANIFEST_UNKNOWN"},
		{"unknown manifest digest", "HEAD", "/v2/app/manifests/" + unknown.String(), nil, nil, 404, ""},
		{"delete unknown blob", "DELETE", "/v2/app/blobs/" + unknown.String(), nil, nil, 404, "BLOB_UNKNOWN"},
		{"delete unknown manifest", "DELETE", "/v2/app/manifests/" + unknown.String(), nil, nil, 404, "MANIFEST_UNKNOWN"},
		{"delete unknown tag", "DELETE", "/v2/app/manifests/nope", nil, nil, 404, "MANIFEST_UNKNOWN"},
		{"manifest not json", "PUT", "/v2/app/manifests/v2", []byte("{nope"), []string{"Content-Type", mt}, 400, "MANIFEST_INVALID"},
		{"manifest schema1", "PUT", "/v2/app/manifests/v2", []byte(`{"schemaVersion":1}`), []string{"Content-Type", "application/vnd.docker.distribution.manifest.v1+json"}, 400, "MANIFEST_INVALID"},
		{"manifest too large", "PUT", "/v2/app/manifests/v2", big, []string{"Content-Type", mt}, 413, "MANIFEST_INVALID"},
		{"manifest bad data field", "PUT", "/v2/app/manifests/v2", badData, []string{"Content-Type", mt}, 400, "MANIFEST_INVALID"},
		{"manifest missing config", "PUT", "/v2/app/manifests/v2", missing, []string{"Content-Type", mt}, 400, "MANIFEST_BLOB_UNKNOWN"},
		{"manifest digest mismatch", "PUT", "/v2/app/manifests/" + unknown.String(), missing, []string{"Content-Type", mt}, 400, "DIGEST_INVALID"},
		{"manifest bad tag", "PUT", "/v2/app/manifests/-bad", missing, []string{"Content-Type", mt}, 400, "TAG_INVALID"},
		{"manifest bad tag param", "PUT", "/v2/app/manifests/" + digest.FromBytes(missing).String() + "?tag=.x", missing, []string{"Content-Type", mt}, 400, "TAG_INVALID"},
		{"upload unknown", "PATCH", "/v2/app/blobs/uploads/does-not-exist", []byte("x"), nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"upload other repo", "PATCH", strings.Replace(up, "/app/", "/other/", 1), []byte("x"), nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"chunk gap", "PATCH", up, []byte("abc"), []string{"Content-Range", "20-22"}, 416, "BLOB_UPLOAD_INVALID"},
		{"chunk overlap", "PATCH", up, []byte("abc"), []string{"Content-Range", "5-7"}, 416, "BLOB_UPLOAD_INVALID"},
		{"chunk garbage range", "PATCH", up, []byte("abc"), []string{"Content-Range", "bytes=x-y"}, 416, "BLOB_UPLOAD_INVALID"},
		{"chunk length mismatch", "PATCH", up, []byte("abc"), []string{"Content-Range", "10-19"}, 400, "SIZE_INVALID"},
		{"finish without digest", "PUT", up, nil, nil, 400, "DIGEST_INVALID"},
		{"finish wrong digest", "PUT", up + "?digest=" + unknown.String(), []byte("more"), nil, 400, "DIGEST_INVALID"},
		{"monolithic wrong digest", "POST", "/v2/app/blobs/uploads/?digest=" + unknown.String(), []byte("data"), nil, 400, "DIGEST_INVALID"},
		{"mount bad digest", "POST", "/v2/app/blobs/uploads/?mount=sha256:12&from=x", nil, nil, 400, "DIGEST_INVALID"},
		{"method not allowed", "PUT", "/v2/app/tags/list", nil, nil, 405, "UNSUPPORTED"},
		{"unknown endpoint", "GET", "/v2/app/whatever/x", nil, nil, 404, "NOT_FOUND"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := r.fingerprint()
			resp := r.do(c.method, c.path, c.body, c.hdr...)
			b := readAll(t, resp)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, b)
			}
			if c.method != "HEAD" {
				var e ociErrors
				if err := json.Unmarshal(b, &e); err != nil || len(e.Errors) != 1 {
					t.Fatalf("error body %q: %v", b, err)
				}
				if e.Errors[0].Code != c.code || e.Errors[0].Message == "" {
					t.Fatalf("error %+v, want code %s with a message", e.Errors[0], c.code)
				}
			}
			if r.fingerprint() != before {
				t.Fatal("bad input changed the registry's state")
			}
		})
	}
	// The session survived every refused request at its old offset and
	// still completes correctly.
	resp = r.do("GET", up, nil)
	expect(t, resp, http.StatusNoContent)
	if got := resp.Header.Get("Range"); got != "0-9" {
		t.Fatalf("upload range after refusals %q", got)
	}
	rest := []byte("abcdef")
	full := append([]byte("0123456789"), rest...)
	expect(t, r.do("PUT", up+"?digest="+digest.FromBytes(full).String(), rest, "Content-Range", "10-15"), http.StatusCreated)
	if got := expect(t, r.do("GET", "/v2/app/blobs/"+digest.FromBytes(full).String(), nil), 200); !bytes.Equal(got, full) {
		t.Fatalf("blob %q", got)
	}
	if got := expect(t, r.do("GET", "/v2/app/manifests/"+md.String(), nil), 200); digest.FromBytes(got) != md {
		t.Fatal("manifest changed")
	}
}

// Blob reads with ranges over multi-segment, erasure-coded blobs.
func TestBlobRangesAcrossSegments(t *testing.T) {
	r := newTestRegistry(t, 2, 1)
	blob := make([]byte, 3<<20+12345) // four 1 MiB segments, the last short
	for i := range blob {
		blob[i] = byte(i * 7 / 5)
	}
	d := r.pushBlob("big", blob)
	got := expect(t, r.do("GET", "/v2/big/blobs/"+d.String(), nil), 200)
	if sha256.Sum256(got) != sha256.Sum256(blob) {
		t.Fatal("whole blob differs")
	}
	for _, rg := range [][2]int{{0, 0}, {0, 1<<20 - 1}, {1<<20 - 1, 1 << 20}, {1<<20 - 5, 2<<20 + 5}, {len(blob) - 1, len(blob) - 1}, {100, len(blob) - 1}} {
		resp := r.do("GET", "/v2/big/blobs/"+d.String(), nil, "Range", fmt.Sprintf("bytes=%d-%d", rg[0], rg[1]))
		got := expect(t, resp, http.StatusPartialContent)
		if !bytes.Equal(got, blob[rg[0]:rg[1]+1]) {
			t.Fatalf("range %v: wrong bytes", rg)
		}
		if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes %d-%d/%d", rg[0], rg[1], len(blob)) {
			t.Fatalf("Content-Range %q", cr)
		}
	}
	got = expect(t, r.do("GET", "/v2/big/blobs/"+d.String(), nil, "Range", "bytes=-10"), http.StatusPartialContent)
	if !bytes.Equal(got, blob[len(blob)-10:]) {
		t.Fatal("suffix range")
	}
	resp := r.do("HEAD", "/v2/big/blobs/"+d.String(), nil)
	expect(t, resp, 200)
	if resp.Header.Get("Content-Length") != fmt.Sprint(len(blob)) || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("HEAD headers %v", resp.Header)
	}
}

// A chunked upload whose chunks are not segment-aligned, then a streamed
// one with no Content-Range, both read back exactly.
func TestChunkedAndStreamedUploads(t *testing.T) {
	r := newTestRegistry(t, 1, 0)
	blob := bytes.Repeat([]byte("0123456789abcdef"), 200000) // 3.2 MB
	resp := r.do("POST", "/v2/c/blobs/uploads/", nil)
	expect(t, resp, http.StatusAccepted)
	loc := resp.Header.Get("Location")
	for off := 0; off < len(blob); {
		n := min(700001, len(blob)-off)
		resp = r.do("PATCH", loc, blob[off:off+n], "Content-Range", fmt.Sprintf("%d-%d", off, off+n-1))
		expect(t, resp, http.StatusAccepted)
		off += n
		if resp.Header.Get("Range") != fmt.Sprintf("0-%d", off-1) {
			t.Fatalf("Range %q at %d", resp.Header.Get("Range"), off)
		}
		loc = resp.Header.Get("Location")
	}
	d := digest.FromBytes(blob)
	expect(t, r.do("PUT", loc+"?digest="+d.String(), nil), http.StatusCreated)
	if got := expect(t, r.do("GET", "/v2/c/blobs/"+d.String(), nil), 200); !bytes.Equal(got, blob) {
		t.Fatal("chunked blob differs")
	}
	// Streamed, and finished with a sha512 digest.
	other := append([]byte("streamed:"), blob[:100000]...)
	resp = r.do("POST", "/v2/c/blobs/uploads/", nil)
	loc = resp.Header.Get("Location")
	expect(t, resp, http.StatusAccepted)
	resp = r.do("PATCH", loc, other)
	expect(t, resp, http.StatusAccepted)
	d512 := digest.SHA512.FromBytes(other)
	expect(t, r.do("PUT", resp.Header.Get("Location")+"?digest="+d512.String(), nil), http.StatusCreated)
	if got := expect(t, r.do("GET", "/v2/c/blobs/"+d512.String(), nil), 200); !bytes.Equal(got, other) {
		t.Fatal("sha512 blob differs")
	}
}

// Tag listing and catalog pagination with Link headers; metrics and health.
func TestListingsAndOperationalEndpoints(t *testing.T) {
	r := newTestRegistry(t, 1, 0)
	for i := 0; i < 7; i++ {
		r.pushImage("list/me", fmt.Sprintf("t%d", i))
	}
	r.pushImage("list/other", "x")
	var tags []string
	next := "/v2/list/me/tags/list?n=3"
	for next != "" {
		resp := r.do("GET", next, nil)
		var page struct{ Tags []string }
		if err := json.Unmarshal(expect(t, resp, 200), &page); err != nil {
			t.Fatal(err)
		}
		tags = append(tags, page.Tags...)
		next = ""
		if l := resp.Header.Get("Link"); l != "" {
			next = strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
		}
	}
	if fmt.Sprint(tags) != "[t0 t1 t2 t3 t4 t5 t6]" {
		t.Fatalf("paged tags %v", tags)
	}
	var cat struct{ Repositories []string }
	if err := json.Unmarshal(expect(t, r.do("GET", "/v2/_catalog?n=1&last=list/me", nil), 200), &cat); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(cat.Repositories) != "[list/other]" {
		t.Fatalf("catalog %v", cat.Repositories)
	}
	expect(t, r.do("GET", "/healthz", nil), 200)
	expect(t, r.do("GET", "/readyz", nil), 200)
	m := string(expect(t, r.do("GET", "/metrics", nil), 200))
	for _, want := range []string{`strata_http_requests_total{code="201",method="PUT",route="manifest"}`, "strata_http_request_duration_seconds_bucket", "strata_http_request_bytes_total"} {
		if !strings.Contains(m, want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
}

// Past MaxDataRequests, requests that move blob bytes get 429
// TOOMANYREQUESTS with Retry-After; metadata requests still pass.
func TestDataRequestLimit(t *testing.T) {
	r := newTestRegistry(t, 1, 0)
	d := r.pushBlob("lim", []byte("some bytes"))
	// Take every slot, as long transfers would.
	srv := r.srv
	for i := 0; i < cap(srv.dataSlots); i++ {
		srv.dataSlots <- struct{}{}
	}
	resp := r.do("GET", "/v2/lim/blobs/"+d.String(), nil)
	b := readAll(t, resp)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(b), "TOOMANYREQUESTS") || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("saturated: %d %s", resp.StatusCode, b)
	}
	expect(t, r.do("HEAD", "/v2/lim/blobs/"+d.String(), nil), http.StatusOK)
	expect(t, r.do("GET", "/v2/lim/tags/list", nil), http.StatusOK)
	<-srv.dataSlots
	if got := expect(t, r.do("GET", "/v2/lim/blobs/"+d.String(), nil), http.StatusOK); string(got) != "some bytes" {
		t.Fatalf("after a slot freed: %q", got)
	}
}

// With a key provider, blob bytes are sealed before erasure coding: no shard
// file holds a plaintext marker, every upload style reads back exactly, and
// the layout carries only a wrapped key.
func TestBlobsEncryptedAtRest(t *testing.T) {
	ring, err := keys.OpenKeyring(filepath.Join(t.TempDir(), "keyring"), true)
	if err != nil {
		t.Fatal(err)
	}
	r := newTestRegistryWith(t, 2, 1, Config{Keys: ring})
	marker := []byte("STRATA-PLAINTEXT-MARKER-7f3a")
	blob := bytes.Repeat(append(append([]byte{}, marker...), make([]byte, 997)...), 3000) // ~3 MB, several 1 MiB segments
	d := r.pushBlob("enc", blob)
	// Chunked too, with chunks that do not align with segments.
	resp := r.do("POST", "/v2/enc/blobs/uploads/", nil)
	expect(t, resp, http.StatusAccepted)
	loc := resp.Header.Get("Location")
	other := append([]byte("chunked:"), blob[:1500000]...)
	for off := 0; off < len(other); {
		n := min(600001, len(other)-off)
		resp = r.do("PATCH", loc, other[off:off+n], "Content-Range", fmt.Sprintf("%d-%d", off, off+n-1))
		expect(t, resp, http.StatusAccepted)
		loc = resp.Header.Get("Location")
		off += n
	}
	d2 := digest.FromBytes(other)
	expect(t, r.do("PUT", loc+"?digest="+d2.String(), nil), http.StatusCreated)
	d512 := digest.SHA512.FromBytes(other[:300000])
	expect(t, r.do("POST", "/v2/enc/blobs/uploads/?digest="+d512.String(), other[:300000]), http.StatusCreated)

	for dg, want := range map[digest.Digest][]byte{d: blob, d2: other, d512: other[:300000]} {
		if got := expect(t, r.do("GET", "/v2/enc/blobs/"+dg.String(), nil), 200); !bytes.Equal(got, want) {
			t.Fatalf("%s reads back wrong", dg)
		}
		l, err := r.st.Blob(dg.String())
		if err != nil || len(l.Keys) != 1 || len(l.Keys[0].Ciphertext) == 0 {
			t.Fatalf("layout of %s carries no wrapped key: %v %v", dg, l, err)
		}
		for _, seg := range l.Segments {
			if seg.Format != blobstore.FormatAESGCM {
				t.Fatalf("segment %s stored in format %d", seg.Id, seg.Format)
			}
		}
	}
	got := expect(t, r.do("GET", "/v2/enc/blobs/"+d.String(), nil, "Range", "bytes=1048570-1048600"), http.StatusPartialContent)
	if !bytes.Equal(got, blob[1048570:1048601]) {
		t.Fatal("range across a sealed segment boundary")
	}
	files := 0
	filepath.WalkDir(r.dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || !strings.Contains(p, "shards") {
			return nil
		}
		files++
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, marker) {
			t.Errorf("shard file %s holds plaintext", p)
		}
		return nil
	})
	if files == 0 {
		t.Fatal("no shard files found")
	}
}

// A repository's durability class sets the geometry of its new blobs; other
// repositories keep the cluster's.
func TestDurabilityClass(t *testing.T) {
	r := newTestRegistry(t, 2, 1) // 3 shard dirs, cluster geometry 2+1
	expect(t, r.do("POST", "/admin/v1/CreateRepository", []byte(`{"repositoryName":"gold","durabilityClass":{"dataShards":1,"parityShards":2}}`)), 200)
	blob := bytes.Repeat([]byte("D"), 600<<10)
	gold := r.pushBlob("gold", blob)
	plain := r.pushBlob("plain", append(blob, 'x'))
	for d, want := range map[digest.Digest][2]uint32{gold: {1, 2}, plain: {2, 1}} {
		l, err := r.st.Blob(d.String())
		if err != nil {
			t.Fatal(err)
		}
		for _, seg := range l.Segments {
			if seg.K != want[0] || seg.M != want[1] {
				t.Fatalf("%s: segment at %d+%d, want %d+%d", d, seg.K, seg.M, want[0], want[1])
			}
		}
	}
	if got := expect(t, r.do("GET", "/v2/gold/blobs/"+gold.String(), nil), 200); !bytes.Equal(got, blob) {
		t.Fatal("gold blob reads back wrong")
	}
	resp := r.do("POST", "/admin/v1/PutDurabilityClass", []byte(`{"repositoryName":"gold","durabilityClass":{"dataShards":0,"parityShards":5}}`))
	if b := expect(t, resp, 400); !strings.Contains(string(b), "InvalidParameterException") {
		t.Fatalf("bad class: %s", b)
	}
}
