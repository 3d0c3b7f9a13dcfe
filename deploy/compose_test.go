package deploy_test

// TestCompose runs deploy/compose.yaml for real: 3 meta, 6 storage and 2 api
// containers behind strata-lb. It pushes and pulls a multi-layer image
// through the load balancer with plain HTTP requests (every blob and the
// manifest digest-checked), stops the Raft leader and a whole zone of
// storage (two nodes: 4+2 erasure coding tolerates two losses), and pushes
// and pulls again.
//
// It needs Docker with compose (`docker compose` or `docker-compose`).
// STRATA_COMPOSE_TEST=1 requires it (`make compose-test` sets it);
// STRATA_COMPOSE_TEST=0 and -short skip it; unset, it runs when docker and
// compose answer and skips otherwise, so `make test` runs it on a machine
// with Docker (about 1 to 2 minutes, image build included). Runs on one host
// take turns (a lock file in the temp directory), since they share the
// project name. It builds the images with `make image` (into a temporary
// build context) unless STRATA_COMPOSE_NO_BUILD=1. Other settings:
//   STRATA_COMPOSE_PROJECT  compose project name (default strata-test)
//   STRATA_NET              first three octets of the private /24 (default: a free 10.77.x)
//   STRATA_COMPOSE_KEEP=1   leave the cluster running at the end (no `down -v`)

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

type composeEnv struct {
	t       *testing.T
	cmd     []string // "docker", "compose" or "docker-compose"
	project string
	env     []string
	base    string // http://127.0.0.1:port of the lb
	retries int    // requests retried through the whole run
}

// composeCommand finds a working compose: the docker plugin, else docker-compose.
func composeCommand() ([]string, error) {
	for _, c := range [][]string{{"docker", "compose"}, {"docker-compose"}} {
		if _, err := exec.LookPath(c[0]); err != nil {
			continue
		}
		if err := exec.Command(c[0], append(c[1:], "version")...).Run(); err == nil {
			return c, nil
		}
	}
	return nil, errors.New("neither `docker compose` nor `docker-compose` works")
}

func (c *composeEnv) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append(append(slices.Clone(c.cmd[1:]), "-f", "compose.yaml", "-p", c.project), args...)
	cmd := exec.CommandContext(ctx, c.cmd[0], full...)
	cmd.Env = c.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w\n%s", c.cmd[0], strings.Join(full, " "), err, out.String())
	}
	return out.String(), err
}

func (c *composeEnv) must(timeout time.Duration, args ...string) string {
	c.t.Helper()
	out, err := c.run(timeout, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// lockComposeTests makes runs of this test on one host take turns: they
// share the compose project (and `down -v` it first).
func lockComposeTests(t *testing.T) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "strata-compose-test.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Logf("another compose test runs on this host; waiting for it")
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock, after the cleanups registered later
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestCompose(t *testing.T) {
	mode := os.Getenv("STRATA_COMPOSE_TEST")
	if mode == "0" || (mode != "1" && testing.Short()) {
		t.Skip("STRATA_COMPOSE_TEST=0 or -short")
	}
	compose, err := composeCommand()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err = exec.CommandContext(ctx, "docker", "info").Run()
		cancel()
		if err != nil {
			err = fmt.Errorf("docker is not reachable: %w", err)
		}
	}
	if err != nil {
		if mode == "1" {
			t.Fatal(err)
		}
		t.Skipf("%v (STRATA_COMPOSE_TEST=1 makes this a failure)", err)
	}
	lockComposeTests(t)
	start := time.Now()
	phase := start
	step := func(format string, args ...any) {
		now := time.Now()
		t.Logf("[%6.1fs, +%5.1fs] %s", now.Sub(start).Seconds(), now.Sub(phase).Seconds(), fmt.Sprintf(format, args...))
		phase = now
	}

	if os.Getenv("STRATA_COMPOSE_NO_BUILD") != "1" {
		root, _ := filepath.Abs("..")
		out, err := exec.Command("make", "-C", root, "image", "IMAGE_BUILD_DIR="+t.TempDir()).CombinedOutput()
		if err != nil {
			t.Fatalf("make image: %v\n%s", err, out)
		}
		step("images built (make image)")
	}

	c := &composeEnv{t: t, cmd: compose, project: os.Getenv("STRATA_COMPOSE_PROJECT")}
	if c.project == "" {
		c.project = "strata-test"
	}
	port := freePort(t)
	c.base = fmt.Sprintf("http://127.0.0.1:%d", port)

	// A leftover of an earlier run of the same project would hold the subnet.
	c.env = os.Environ()
	_, _ = c.run(2*time.Minute, "down", "-v", "--remove-orphans", "-t", "5")
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.run(time.Minute, "ps", "-a")
			t.Logf("containers:\n%s", out)
			out, _ = c.run(time.Minute, "logs", "--no-color", "--timestamps", "--tail", "300")
			t.Logf("container logs (last 300 lines each):\n%s", out)
		}
		if os.Getenv("STRATA_COMPOSE_KEEP") == "1" {
			t.Logf("STRATA_COMPOSE_KEEP=1: the cluster is left running (project %s, %s)", c.project, c.base)
			return
		}
		if out, err := c.run(3*time.Minute, "down", "-v", "--remove-orphans", "-t", "10"); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
	})

	// Up, on a private /24 that no other network holds.
	nets := []string{os.Getenv("STRATA_NET")}
	if nets[0] == "" {
		nets = nil
		for _, i := range rand.Perm(150)[:5] {
			nets = append(nets, fmt.Sprintf("10.77.%d", 100+i))
		}
	}
	for i, n := range nets {
		c.env = append(os.Environ(), fmt.Sprintf("STRATA_LB_PORT=%d", port), "STRATA_NET="+n)
		out, err := c.run(5*time.Minute, "up", "-d")
		if err == nil {
			break
		}
		if strings.Contains(out, "overlaps") && i < len(nets)-1 {
			t.Logf("subnet %s.0/24 is taken, trying another", n)
			_, _ = c.run(2*time.Minute, "down", "-v", "--remove-orphans", "-t", "5")
			continue
		}
		t.Fatal(err)
	}
	step("compose up -d (project %s, lb on %s)", c.project, c.base)

	c.waitFor(2*time.Minute, "the lb answers GET /v2/ with 200", func() error {
		resp, err := http.Get(c.base + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
	step("lb answers /v2/")

	// Every storage node must be registered before the first push: frontends
	// pick the erasure geometry from the number of storage nodes (4+2 from six).
	c.waitFor(2*time.Minute, "6 storage nodes alive", func() error {
		st, err := c.status("m1")
		if err != nil {
			return err
		}
		if n := st.alive("storage"); n != 6 {
			return fmt.Errorf("%d storage nodes alive", n)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // frontends refresh their storage view every second
	step("6 storage nodes registered")

	c.waitFor(time.Minute, "a first push succeeds", func() error {
		_, err := c.pushBlob("probe/ready", randBytes(1, 1000), 0)
		return err
	})
	step("a first blob push succeeded")

	img1 := newImage(10, []int{100 << 10, 5 << 20, 20 << 20})
	c.pushImage("compose/one", "v1", img1)
	step("pushed compose/one:v1 (%s)", img1.describe())
	c.pullImage("compose/one", "v1", img1)
	step("pulled compose/one:v1, every digest checked")

	// Stop the Raft leader and a whole zone of storage (s1, s2: zone a).
	st, err := c.status("m1")
	if err != nil {
		t.Fatal(err)
	}
	leader := st.Leader
	if leader == "" {
		leader = "m1"
	}
	c.stop(leader, "s1", "s2")
	step("stopped %s (the Raft leader), s1 and s2 (zone a)", leader)

	other := "m1"
	if leader == "m1" {
		other = "m2"
	}
	c.waitFor(time.Minute, "a new leader", func() error {
		st, err := c.status(other)
		if err != nil {
			return err
		}
		if st.Leader == "" || st.Leader == leader {
			return fmt.Errorf("leader %q", st.Leader)
		}
		return nil
	})
	if st, err := c.status(other); err == nil {
		step("new leader: %s", st.Leader)
	}

	c.pullImage("compose/one", "v1", img1)
	step("pulled compose/one:v1 again, with 1 meta and 2 storage nodes down")
	img2 := newImage(20, []int{200 << 10, 3 << 20, 17 << 20})
	c.pushImage("compose/two", "v1", img2)
	step("pushed compose/two:v1 (%s) with 1 meta and 2 storage nodes down", img2.describe())
	c.pullImage("compose/two", "v1", img2)
	step("pulled compose/two:v1")
	t.Logf("requests retried during the run: %d", c.retries)
	t.Logf("total %s (before compose down)", time.Since(start).Round(100*time.Millisecond))
}

// stop stops the containers of services with `docker stop`, by container
// id, so that exactly those stop whatever a compose version does with
// depends_on.
func (c *composeEnv) stop(services ...string) {
	c.t.Helper()
	args := []string{"stop", "-t", "10"}
	for _, svc := range services {
		id := strings.TrimSpace(c.must(time.Minute, "ps", "-q", svc))
		if id == "" {
			c.t.Fatalf("no container for service %s", svc)
		}
		args = append(args, id)
	}
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		c.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (c *composeEnv) waitFor(timeout time.Duration, what string, cond func() error) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("waited %s for %s: %v", timeout, what, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// clusterStatus is the part of `strata cluster status --json` the test reads.
type clusterStatus struct {
	Leader  string `json:"leader"`
	Members []struct {
		Node struct {
			ID    string   `json:"id"`
			Roles []string `json:"roles"`
			State string   `json:"state"`
		} `json:"node"`
	} `json:"members"`
}

func (s *clusterStatus) alive(role string) int {
	n := 0
	for _, m := range s.Members {
		if slices.Contains(m.Node.Roles, role) && m.Node.State == "alive" {
			n++
		}
	}
	return n
}

// status asks a meta node (through the strata binary in its container).
func (c *composeEnv) status(node string) (*clusterStatus, error) {
	out, err := c.run(30*time.Second, "exec", "-T", node, "/strata", "cluster", "status", "--server", node+":7000", "--json")
	if err != nil {
		return nil, err
	}
	var st clusterStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("cluster status: %v: %s", err, out)
	}
	return &st, nil
}

// ---- a minimal OCI client: plain HTTP, every digest checked ----

type blob struct {
	data   []byte
	digest string
}

func newBlob(b []byte) blob {
	s := sha256.Sum256(b)
	return blob{data: b, digest: "sha256:" + hex.EncodeToString(s[:])}
}

type image struct {
	config   blob
	layers   []blob
	manifest blob
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 's', 't', 'r', 'a', 't', 'a'}))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func newImage(seed uint64, sizes []int) *image {
	img := &image{}
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	var layers []desc
	var diffIDs []string
	for i, n := range sizes {
		l := newBlob(randBytes(seed+uint64(i), n))
		img.layers = append(img.layers, l)
		layers = append(layers, desc{"application/vnd.oci.image.layer.v1.tar", l.digest, n})
		diffIDs = append(diffIDs, l.digest)
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	img.config = newBlob(cfg)
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc{"application/vnd.oci.image.config.v1+json", img.config.digest, len(cfg)},
		"layers":        layers,
	})
	img.manifest = newBlob(m)
	return img
}

func (img *image) describe() string {
	total := len(img.config.data)
	for _, l := range img.layers {
		total += len(l.data)
	}
	return fmt.Sprintf("%d layers, %.1f MiB", len(img.layers), float64(total)/(1<<20))
}

var httpClient = &http.Client{Timeout: 2 * time.Minute}

func (c *composeEnv) do(method, u string, body []byte, hdr map[string]string) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// retrying runs op until it succeeds or a minute has passed, as a registry
// client would through a failover. Every retry is logged and counted.
func (c *composeEnv) retrying(what string, op func() error) {
	c.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil {
			return
		}
		var perm permanent
		if errors.As(err, &perm) || time.Now().After(deadline) {
			c.t.Fatalf("%s: %v (attempt %d)", what, err, attempt)
		}
		c.retries++
		c.t.Logf("%s: attempt %d: %v; retrying", what, attempt, err)
		time.Sleep(time.Duration(min(attempt, 5)) * 500 * time.Millisecond)
	}
}

// permanent marks an error that retrying cannot fix (a wrong digest).
type permanent struct{ error }

func (c *composeEnv) resolve(loc string) (string, error) {
	base, _ := url.Parse(c.base + "/")
	u, err := base.Parse(loc)
	if err != nil {
		return "", err
	}
	return u.String(), nil
}

func statusErr(method, u string, resp *http.Response, body []byte) error {
	return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, bytes.TrimSpace(body))
}

// pushBlob uploads b in chunks of chunk bytes (POST, PATCH..., PUT ?digest=),
// or in one POST+PUT when chunk is 0. Any failure restarts the upload.
func (c *composeEnv) pushBlob(repo string, data []byte, chunk int) (string, error) {
	b := newBlob(data)
	post := c.base + "/v2/" + repo + "/blobs/uploads/"
	resp, body, err := c.do("POST", post, nil, nil)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", statusErr("POST", post, resp, body)
	}
	loc, err := c.resolve(resp.Header.Get("Location"))
	if err != nil {
		return "", err
	}
	rest := data
	if chunk > 0 {
		for off := 0; len(rest) > 0; {
			n := min(chunk, len(rest))
			resp, body, err = c.do("PATCH", loc, rest[:n], map[string]string{
				"Content-Type":  "application/octet-stream",
				"Content-Range": fmt.Sprintf("%d-%d", off, off+n-1),
			})
			if err != nil {
				return "", err
			}
			if resp.StatusCode != http.StatusAccepted {
				return "", statusErr("PATCH", loc, resp, body)
			}
			if loc, err = c.resolve(resp.Header.Get("Location")); err != nil {
				return "", err
			}
			off += n
			rest = rest[n:]
		}
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	put := loc + sep + "digest=" + url.QueryEscape(b.digest)
	resp, body, err = c.do("PUT", put, rest, map[string]string{"Content-Type": "application/octet-stream"})
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusCreated {
		return "", statusErr("PUT", put, resp, body)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != b.digest {
		return "", permanent{fmt.Errorf("PUT %s: Docker-Content-Digest %s, want %s", put, got, b.digest)}
	}
	return b.digest, nil
}

func (c *composeEnv) pushImage(repo, tag string, img *image) {
	c.t.Helper()
	for i, l := range append([]blob{img.config}, img.layers...) {
		chunk := 0
		if len(l.data) > 1<<20 {
			chunk = 4 << 20 // several PATCHes, which round robin spreads over both frontends
		}
		c.retrying(fmt.Sprintf("push blob %d of %s (%d bytes)", i, repo, len(l.data)), func() error {
			_, err := c.pushBlob(repo, l.data, chunk)
			return err
		})
	}
	u := c.base + "/v2/" + repo + "/manifests/" + tag
	c.retrying("PUT manifest "+repo+":"+tag, func() error {
		resp, body, err := c.do("PUT", u, img.manifest.data,
			map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusCreated {
			return statusErr("PUT", u, resp, body)
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != img.manifest.digest {
			return permanent{fmt.Errorf("PUT %s: Docker-Content-Digest %q, want %s", u, got, img.manifest.digest)}
		}
		return nil
	})
}

func (c *composeEnv) pullImage(repo, tag string, img *image) {
	c.t.Helper()
	u := c.base + "/v2/" + repo + "/manifests/" + tag
	c.retrying("GET manifest "+repo+":"+tag, func() error {
		resp, body, err := c.do("GET", u, nil, map[string]string{"Accept": "application/vnd.oci.image.manifest.v1+json"})
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return statusErr("GET", u, resp, body)
		}
		if got := newBlob(body).digest; got != img.manifest.digest {
			return permanent{fmt.Errorf("GET %s: body has digest %s, want %s", u, got, img.manifest.digest)}
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != img.manifest.digest {
			return permanent{fmt.Errorf("GET %s: Docker-Content-Digest %q, want %s", u, got, img.manifest.digest)}
		}
		return nil
	})
	for _, l := range append([]blob{img.config}, img.layers...) {
		bu := c.base + "/v2/" + repo + "/blobs/" + l.digest
		c.retrying("GET blob "+l.digest, func() error {
			resp, body, err := c.do("GET", bu, nil, nil)
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return statusErr("GET", bu, resp, body)
			}
			if len(body) != len(l.data) {
				return fmt.Errorf("GET %s: %d bytes, want %d", bu, len(body), len(l.data))
			}
			if got := newBlob(body).digest; got != l.digest {
				return permanent{fmt.Errorf("GET %s: body has digest %s", bu, got)}
			}
			return nil
		})
	}
}
