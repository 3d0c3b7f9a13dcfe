package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Media types used by the images the tests build themselves.
const (
	mtOCIManifest = "application/vnd.oci.image.manifest.v1+json"
	mtOCIIndex    = "application/vnd.oci.image.index.v1+json"
	mtOCIConfig   = "application/vnd.oci.image.config.v1+json"
	mtOCILayerGz  = "application/vnd.oci.image.layer.v1.tar+gzip"
	annRefName    = "org.opencontainers.image.ref.name"
)

// ---- client tools ----

// lookTool finds a client tool in <repo>/bin/tools (pinned by `make tools`),
// then on PATH. It returns "" when there is none.
func lookTool(name string) string {
	if root, err := moduleRoot(); err == nil {
		p := filepath.Join(root, "bin", "tools", name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

// requireTools reports whether a missing client tool is a failure rather than
// a reason to skip: in CI, or when STRATA_E2E_REQUIRE_TOOLS=1.
func requireTools() bool {
	if os.Getenv("STRATA_E2E_REQUIRE_TOOLS") == "1" {
		return true
	}
	ci := strings.ToLower(os.Getenv("CI"))
	return ci != "" && ci != "0" && ci != "false"
}

// needTool returns the path of a client tool, or fails or skips the test.
func needTool(t *testing.T, name string) string {
	t.Helper()
	if p := lookTool(name); p != "" {
		return p
	}
	msg := fmt.Sprintf("%s not found in bin/tools or on PATH (run `make tools`)", name)
	if requireTools() {
		t.Fatalf("%s; client tools are required when CI or STRATA_E2E_REQUIRE_TOOLS=1 is set", msg)
	}
	t.Skip(msg)
	return ""
}

// cli runs one client tool with its own home and config directories, under a
// deadline shared by all of a test's commands.
type cli struct {
	id   string // unique to this test run, e.g. 1a2b3c4d-3
	t    *testing.T
	ctx  context.Context
	name string
	bin  string
	home string
	dir  string   // working directory; home by default
	env  []string // KEY=VALUE entries that override the process environment
}

func newCLI(t *testing.T, name string, timeout time.Duration) *cli {
	t.Helper()
	trackInputs()
	return newCLIAt(t, name, needTool(t, name), timeout)
}

func newCLIAt(t *testing.T, name, bin string, timeout time.Duration) *cli {
	t.Helper()
	trackInputs()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	home := t.TempDir()
	env := []string{"HOME=" + home}
	for _, kv := range [][2]string{
		{"XDG_CONFIG_HOME", ".config"}, {"XDG_CACHE_HOME", ".cache"}, {"XDG_DATA_HOME", ".local/share"},
		{"XDG_RUNTIME_DIR", ".run"}, {"DOCKER_CONFIG", ".docker"},
	} {
		d := filepath.Join(home, kv[1])
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		env = append(env, kv[0]+"="+d)
	}
	env = append(env, "REGISTRY_AUTH_FILE="+filepath.Join(home, "auth.json"))
	id := fmt.Sprintf("%s-%d", runID, cliSeq.Add(1))
	return &cli{id: id, t: t, ctx: ctx, name: name, bin: bin, home: home, dir: home, env: env}
}

var cliSeq atomic.Int64

// repo returns a repository name unique to this test run, e.g. e2e/crane-1a2b3c4d-1/src,
// so the tests can run repeatedly (and with -count) against the same registry.
func (c *cli) repo(name string) string {
	return fmt.Sprintf("e2e/%s-%s/%s", c.name, c.id, name)
}

// forTest returns a copy of c that reports to t (a subtest of c's test).
func (c *cli) forTest(t *testing.T) *cli {
	cc := *c
	cc.t = t
	return &cc
}

// exec runs the tool and returns its output; it does not fail the test.
func (c *cli) exec(args ...string) (stdout, stderr []byte, err error) {
	cmd := exec.CommandContext(c.ctx, c.bin, args...)
	cmd.Dir = c.dir
	cmd.Env = mergeEnv(os.Environ(), c.env)
	cmd.WaitDelay = 5 * time.Second
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err = cmd.Run()
	c.t.Logf("$ %s %s  [%v]", c.name, strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	if err != nil && c.ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", err, c.ctx.Err())
	}
	return o.Bytes(), e.Bytes(), err
}

// run runs the tool and fails the test unless it succeeds; it returns stdout.
func (c *cli) run(args ...string) []byte {
	c.t.Helper()
	out, errOut, err := c.exec(args...)
	if err != nil {
		c.t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", c.name, strings.Join(args, " "), err, clip(out), clip(errOut))
	}
	return out
}

// runStr is run with surrounding white space trimmed from stdout.
func (c *cli) runStr(args ...string) string {
	c.t.Helper()
	return strings.TrimSpace(string(c.run(args...)))
}

// runErr runs the tool and fails the test unless it succeeds; it returns stderr.
func (c *cli) runErr(args ...string) (stdout, stderr []byte) {
	c.t.Helper()
	out, errOut, err := c.exec(args...)
	if err != nil {
		c.t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", c.name, strings.Join(args, " "), err, clip(out), clip(errOut))
	}
	return out, errOut
}

// mustFail runs the tool, fails the test if it succeeds, and returns its
// combined output for checking the error.
func (c *cli) mustFail(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.exec(args...)
	if err == nil {
		c.t.Fatalf("%s %s succeeded, want an error\nstdout:\n%s", c.name, strings.Join(args, " "), clip(out))
	}
	return string(out) + string(errOut)
}

func mergeEnv(base, over []string) []string {
	keys := map[string]bool{}
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		keys[k] = true
	}
	var env []string
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if !keys[k] {
			env = append(env, kv)
		}
	}
	return append(env, over...)
}

func clip(b []byte) string {
	const max = 8 << 10
	if len(b) > max {
		return string(b[:max/2]) + "\n...\n" + string(b[len(b)-max/2:])
	}
	return string(b)
}

// lines splits output into its non-empty trimmed lines.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// ---- content ----

func digestOf(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %T: %v\n%s", v, err, clip(b))
	}
}

func marshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes (%s), want %d bytes (%s)", what, len(got), digestOf(got), len(want), digestOf(want))
	}
}

func sameStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	g, w := slices.Clone(got), slices.Clone(want)
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Fatalf("%s: got %q, want %q", what, g, w)
	}
}

func equal[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

// layer is a gzip-compressed tar layer with random content.
type layer struct {
	tgz    []byte            // the blob as pushed
	digest string            // digest of tgz
	diffID string            // digest of the uncompressed tar
	files  map[string][]byte // path in the tar -> content
}

// makeLayer builds a layer holding e2e/random.bin (size random bytes) and a
// small text file.
func makeLayer(t *testing.T, size int) layer {
	t.Helper()
	files := map[string][]byte{
		"e2e/random.bin": randomBytes(t, size),
		"e2e/run.txt":    []byte("strata e2e run " + runID + "\n"),
	}
	mtime := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	if err := tw.WriteHeader(&tar.Header{Name: "e2e/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"e2e/random.bin", "e2e/run.txt"} {
		b := files[name]
		hdr := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b)), ModTime: mtime}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gzBuf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gzBuf, gzip.BestSpeed)
	if _, err := io.Copy(zw, bytes.NewReader(tarBuf.Bytes())); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return layer{tgz: gzBuf.Bytes(), digest: digestOf(gzBuf.Bytes()), diffID: digestOf(tarBuf.Bytes()), files: files}
}

type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType,omitempty"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        descriptor        `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Subject       *descriptor       `json:"subject,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType,omitempty"`
	Manifests     []descriptor `json:"manifests"`
}

type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// image is a single-platform OCI image built in memory.
type image struct {
	layers   []layer
	config   []byte
	manifest []byte
	digest   string // manifest digest
}

func makeImage(t *testing.T, layerSizes ...int) *image {
	t.Helper()
	img := &image{}
	cfg := map[string]any{
		"created":      "2020-01-01T00:00:00Z",
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Labels": map[string]string{"dev.strata.e2e.run": runID}},
	}
	var diffIDs []string
	m := manifest{SchemaVersion: 2, MediaType: mtOCIManifest}
	for _, n := range layerSizes {
		l := makeLayer(t, n)
		img.layers = append(img.layers, l)
		diffIDs = append(diffIDs, l.diffID)
		m.Layers = append(m.Layers, descriptor{MediaType: mtOCILayerGz, Digest: l.digest, Size: int64(len(l.tgz))})
	}
	cfg["rootfs"] = map[string]any{"type": "layers", "diff_ids": diffIDs}
	img.config = marshal(t, cfg)
	m.Config = descriptor{MediaType: mtOCIConfig, Digest: digestOf(img.config), Size: int64(len(img.config))}
	img.manifest = marshal(t, m)
	img.digest = digestOf(img.manifest)
	return img
}

// blobs maps the digest of every blob of the image (config and layers) to its bytes.
func (img *image) blobs() map[string][]byte {
	b := map[string][]byte{digestOf(img.config): img.config}
	for _, l := range img.layers {
		b[l.digest] = l.tgz
	}
	return b
}

// writeLayout writes the image as an OCI image layout directory with one tag.
func (img *image) writeLayout(t *testing.T, dir, tag string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`))
	all := img.blobs()
	all[img.digest] = img.manifest
	for d, b := range all {
		writeFile(t, layoutBlobPath(dir, d), b)
	}
	idx := index{SchemaVersion: 2, MediaType: mtOCIIndex, Manifests: []descriptor{{
		MediaType: mtOCIManifest, Digest: img.digest, Size: int64(len(img.manifest)),
		Annotations: map[string]string{annRefName: tag},
	}}}
	writeFile(t, filepath.Join(dir, "index.json"), marshal(t, idx))
}

func layoutBlobPath(dir, digest string) string {
	alg, hexPart, _ := strings.Cut(digest, ":")
	return filepath.Join(dir, "blobs", alg, hexPart)
}

// readLayoutIndex reads index.json of an OCI image layout directory.
func readLayoutIndex(t *testing.T, dir string) index {
	t.Helper()
	var idx index
	mustJSON(t, readFile(t, filepath.Join(dir, "index.json")), &idx)
	return idx
}

// checkLayoutHasImage checks that an OCI layout holds the image's manifest and
// every blob, byte for byte.
func checkLayoutHasImage(t *testing.T, dir string, img *image) {
	t.Helper()
	sameBytes(t, "manifest in "+dir, readFile(t, layoutBlobPath(dir, img.digest)), img.manifest)
	for d, b := range img.blobs() {
		sameBytes(t, "blob "+d+" in "+dir, readFile(t, layoutBlobPath(dir, d)), b)
	}
}

// ---- direct HTTP checks against the registry ----

// do sends one request to the registry under test and returns the response
// with its body read.
func (r *registry) do(t *testing.T, ctx context.Context, method, path string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, r.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, body
}

// manifestAccept is the Accept header of a client that takes any manifest type.
var manifestAccept = http.Header{"Accept": {
	mtOCIManifest, mtOCIIndex,
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}}
