package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestDevClusterPlan(t *testing.T) {
	cases := []struct {
		meta, storage, api int
		want               map[string][]string
	}{
		{3, 3, 2, map[string][]string{
			"m1": {"meta"}, "m2": {"meta"}, "m3": {"meta"},
			"s1": {"storage"}, "s2": {"storage"}, "s3": {"storage"},
			"a1": {"api"}, "a2": {"api"},
		}},
		{3, 0, 0, map[string][]string{
			"m1": {"meta", "storage", "api"}, "m2": {"meta", "storage", "api"}, "m3": {"meta", "storage", "api"},
		}},
		{1, 2, 0, map[string][]string{
			"m1": {"meta", "api"}, "s1": {"storage"}, "s2": {"storage"},
		}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d-%d-%d", tc.meta, tc.storage, tc.api), func(t *testing.T) {
			c := &devCluster{cfg: devClusterConfig{Dir: t.TempDir(), Meta: tc.meta, Storage: tc.storage, API: tc.api}}
			if err := c.plan(nil); err != nil {
				t.Fatal(err)
			}
			got := map[string][]string{}
			ports := map[string]bool{}
			for _, p := range c.procs {
				got[p.info.ID] = p.info.Roles
				for _, a := range []string{p.info.GRPC, p.info.Raft, strings.TrimPrefix(p.info.HTTP, "http://")} {
					if a == "" {
						continue
					}
					if ports[a] {
						t.Errorf("address %s given twice", a)
					}
					ports[a] = true
				}
				if (p.info.Raft != "") != p.info.has("meta") || (p.info.HTTP != "") != p.info.has("api") || p.info.GRPC == "" {
					t.Errorf("%s: addresses %+v do not fit roles %v", p.info.ID, p.info, p.info.Roles)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("roles %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDevClusterArgs(t *testing.T) {
	c := &devCluster{cfg: devClusterConfig{Dir: t.TempDir(), Meta: 3, Storage: 1, API: 1,
		DeadAfter: 10 * time.Second, K: 2, M: 1, ReadConsistency: "stale", LogLevel: "debug"}}
	if err := c.plan(nil); err != nil {
		t.Fatal(err)
	}
	joinOf := func(args []string) string {
		if i := slices.Index(args, "--join"); i >= 0 {
			return args[i+1]
		}
		return ""
	}
	m1, m2, m3, s1 := c.procs[0], c.procs[1], c.procs[2], c.procs[3]
	if j := joinOf(c.args(m1)); j != "" {
		t.Errorf("a fresh m1 should bootstrap, got --join %s", j)
	}
	if j, want := joinOf(c.args(m2)), m1.info.GRPC+","+m3.info.GRPC; j != want {
		t.Errorf("m2 --join %s, want %s", j, want)
	}
	if j, want := joinOf(c.args(s1)), m1.info.GRPC+","+m2.info.GRPC+","+m3.info.GRPC; j != want {
		t.Errorf("s1 --join %s, want %s", j, want)
	}
	got := strings.Join(c.args(s1), " ")
	for _, want := range []string{"serve --roles storage --node-id s1", "--dead-after 10s", "--k 2 --m 1",
		"--read-consistency stale", "--log-level debug", "--data-dir " + filepath.Join(c.cfg.Dir, "s1")} {
		if !strings.Contains(got, want) {
			t.Errorf("s1 args %q lack %q", got, want)
		}
	}
	if strings.Contains(got, "--http-addr") || strings.Contains(got, "--raft-addr") {
		t.Errorf("a storage node needs no http or raft address: %q", got)
	}
	// Once m1 has Raft state it joins the others like everyone else.
	if err := os.MkdirAll(filepath.Join(c.cfg.Dir, "m1", "meta", "raft"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.cfg.Dir, "m1", "meta", "raft", "raft.db"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if j, want := joinOf(c.args(m1)), m2.info.GRPC+","+m3.info.GRPC; j != want {
		t.Errorf("restarted m1 --join %s, want %s", j, want)
	}
}

func TestDevClusterReusesPorts(t *testing.T) {
	dir := t.TempDir()
	first := &devCluster{cfg: devClusterConfig{Dir: dir, Meta: 1, Storage: 1, API: 1}}
	if err := first.plan(nil); err != nil {
		t.Fatal(err)
	}
	if err := first.writeFile(); err != nil {
		t.Fatal(err)
	}
	prev, err := readDevClusterFile(filepath.Join(dir, devClusterJSON))
	if err != nil {
		t.Fatal(err)
	}
	again := &devCluster{cfg: devClusterConfig{Dir: dir, Meta: 1, Storage: 2, API: 1}}
	if err := again.plan(prev); err != nil {
		t.Fatal(err)
	}
	for i, p := range first.procs {
		q, err := again.proc(p.info.ID)
		if err != nil {
			t.Fatal(err)
		}
		if q.info.GRPC != p.info.GRPC || q.info.HTTP != p.info.HTTP || q.info.Raft != p.info.Raft || !q.reused {
			t.Errorf("node %d: %+v, want the ports of %+v", i, q.info, p.info)
		}
	}
	if s2, _ := again.proc("s2"); s2 == nil || s2.reused || s2.info.GRPC == "" {
		t.Errorf("a new node s2 needs new ports: %+v", s2)
	}
}

func TestPercentile(t *testing.T) {
	s := []float64{100, 200, 300, 400, 500, 600, 700, 800, 900, 1000}
	if got := percentile(s, 50); got != 550 {
		t.Errorf("median %v, want 550", got)
	}
	if got := percentile(s, 90); got != 910 {
		t.Errorf("p90 %v, want 910", got)
	}
	if got := percentile([]float64{42}, 90); got != 42 {
		t.Errorf("p90 of one %v, want 42", got)
	}
}

// buildStrata builds the strata binary into a temporary directory.
func buildStrata(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go toolchain on PATH to build strata")
	}
	bin := filepath.Join(t.TempDir(), "strata")
	out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// syncBuffer is a bytes.Buffer safe for a child's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// devRun is one `strata dev cluster` process of a test.
type devRun struct {
	t              *testing.T
	dir            string
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	exited         chan error
	pids           []int // of its nodes, once known
}

// startDevRun starts `strata dev cluster` on dir and waits until it says
// it is ready and cluster.json is there; on test failure it prints the
// output and the end of every node's log, and kills whatever is left.
func startDevRun(t *testing.T, bin, dir string, args ...string) (*devRun, devClusterFile) {
	t.Helper()
	r := &devRun{t: t, dir: dir, exited: make(chan error, 1)}
	r.cmd = exec.Command(bin, append([]string{"dev", "cluster", "--dir", dir}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.exited <- r.cmd.Wait() }()
	t.Cleanup(func() {
		_ = r.cmd.Process.Kill()
		for _, pid := range r.pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("dev cluster stdout:\n%s\nstderr:\n%s", r.stdout.String(), r.stderr.String())
			for _, id := range []string{"m1", "m2", "m3", "s1", "s2", "s3", "a1", "a2"} {
				t.Logf("end of %s.log:\n%s", id, logTail(filepath.Join(dir, id+".log"), 15))
			}
		}
	})
	path := filepath.Join(dir, devClusterJSON)
	deadline := time.After(45 * time.Second)
	for {
		// The ready banner's last line: the frontends are printed before it.
		if out := r.stdout.String(); strings.Contains(out, "strata dev cluster ready") && strings.Contains(out, "Ctrl-C stops every node.") {
			if _, err := os.Stat(path); err == nil {
				break
			}
		}
		select {
		case err := <-r.exited:
			t.Fatalf("dev cluster exited before it was ready: %v", err)
		case <-deadline:
			t.Fatal("dev cluster not ready after 45s")
		case <-time.After(50 * time.Millisecond):
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	info := checkClusterJSON(t, raw)
	for _, n := range info.Nodes {
		r.pids = append(r.pids, n.PID)
	}
	for _, fe := range info.Frontends {
		if !strings.Contains(r.stdout.String(), fe) {
			t.Errorf("stdout does not print frontend %s:\n%s", fe, r.stdout.String())
		}
	}
	return r, info
}

// interrupt sends SIGINT and checks that the dev cluster exits cleanly
// and leaves no node behind.
func (r *devRun) interrupt() {
	t := r.t
	t.Helper()
	stopAt := time.Now()
	if err := r.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.exited:
		if err != nil {
			t.Errorf("dev cluster exit after SIGINT: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dev cluster still running 30s after SIGINT")
	}
	t.Logf("stopped in %s", time.Since(stopAt).Round(time.Millisecond))
	if !strings.Contains(r.stderr.String(), "dev cluster: stopped") {
		t.Errorf("no stop report:\n%s", r.stderr.String())
	}
	for _, pid := range r.pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("node pid %d still there after the dev cluster exited: %v", pid, err)
		}
	}
}

// TestDevCluster starts `strata dev cluster --meta 3 --storage 3 --api 2`,
// pushes through one frontend and reads through the other, checks
// cluster.json, kills a storage node, stops the cluster with SIGINT, and
// starts it again on the same directory.
func TestDevCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an 8-process cluster")
	}
	start := time.Now()
	bin := buildStrata(t)
	t.Logf("built strata in %s", time.Since(start).Round(time.Millisecond))
	dir := t.TempDir()
	start = time.Now()
	run, info := startDevRun(t, bin, dir, "--meta", "3", "--storage", "3", "--api", "2", "--dead-after", "30s")
	t.Logf("cluster ready in %s", time.Since(start).Round(time.Millisecond))
	a1, a2 := info.Frontends[0], info.Frontends[1]

	// Push a blob, a config and a manifest through a1; read them through a2.
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	repo := "dev/test"
	layer := bytes.Repeat([]byte("strata dev cluster layer\n"), 40000) // ~1 MiB: erasure coded
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	for _, b := range [][]byte{layer, config} {
		if err := pushBlob(ctx, a1, repo, b); err != nil {
			t.Fatal(err)
		}
	}
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
		sha256Digest(config), len(config), sha256Digest(layer), len(layer)))
	status, _, _ := do(t, ctx, http.MethodPut, a1+"/v2/"+repo+"/manifests/v1", "application/vnd.oci.image.manifest.v1+json", manifest)
	if status != http.StatusCreated {
		t.Fatalf("PUT manifest through a1: %d", status)
	}
	readBack := func(blobVia, tagVia string) {
		t.Helper()
		if status, body, _ := do(t, ctx, http.MethodGet, blobVia+"/v2/"+repo+"/blobs/"+sha256Digest(layer), "", nil); status != 200 || !bytes.Equal(body, layer) {
			t.Fatalf("GET blob through %s: %d, %d bytes (want %d)", blobVia, status, len(body), len(layer))
		}
		status, body, hdr := do(t, ctx, http.MethodGet, tagVia+"/v2/"+repo+"/manifests/v1", "", nil)
		if status != 200 || !bytes.Equal(body, manifest) || hdr.Get("Docker-Content-Digest") != sha256Digest(manifest) {
			t.Fatalf("GET manifest by tag through %s: %d %q (digest %s)", tagVia, status, body, hdr.Get("Docker-Content-Digest"))
		}
	}
	readBack(a2, a2)
	// Encrypted at rest by default: the frontends share <dir>/keyring, and
	// no shard file holds the layer's text.
	if _, err := os.Stat(filepath.Join(dir, "keyring")); err != nil {
		t.Fatalf("dev cluster keyring: %v", err)
	}
	shardFiles := 0
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && strings.Contains(p, string(filepath.Separator)+"shards"+string(filepath.Separator)) {
			shardFiles++
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("strata dev cluster layer")) {
				t.Errorf("shard file %s holds the layer in the clear", p)
			}
		}
		return nil
	})
	if shardFiles == 0 {
		t.Error("no shard files found")
	}

	// A storage node that dies is reported; the cluster keeps taking pushes.
	if err := syscall.Kill(info.Nodes[5].PID, syscall.SIGKILL); err != nil { // s3
		t.Fatal(err)
	}
	_, _ = waitFor(ctx, func(context.Context) (bool, error) {
		if strings.Contains(run.stderr.String(), "exited on its own") {
			return true, nil
		}
		return false, errors.New("not yet")
	})
	if e := run.stderr.String(); !strings.Contains(e, "node s3") || !strings.Contains(e, "exited on its own") {
		t.Errorf("the death of s3 is not reported:\n%s", e)
	}
	if err := pushBlob(ctx, a2, repo, []byte("after s3 died")); err != nil {
		t.Errorf("push with one storage node down: %v", err)
	}
	select {
	case err := <-run.exited:
		t.Fatalf("dev cluster exited when a node died: %v", err)
	default:
	}
	run.interrupt()

	// Started again on the same directory: same ports, same data.
	start = time.Now()
	again, info2 := startDevRun(t, bin, dir, "--meta", "3", "--storage", "3", "--api", "2", "--dead-after", "30s")
	t.Logf("restarted cluster ready in %s", time.Since(start).Round(time.Millisecond))
	for i, n := range info2.Nodes {
		o := info.Nodes[i]
		if n.ID != o.ID || n.GRPC != o.GRPC || n.HTTP != o.HTTP || n.Raft != o.Raft || n.PID == o.PID {
			t.Errorf("restarted node %+v, want the addresses of %+v and a new pid", n, o)
		}
	}
	readBack(a1, a2)
	again.interrupt()
}

// checkClusterJSON checks the exact shape of cluster.json.
func checkClusterJSON(t *testing.T, raw []byte) devClusterFile {
	t.Helper()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		t.Fatalf("cluster.json: %v\n%s", err, raw)
	}
	if len(top) != 2 || top["nodes"] == nil || top["frontends"] == nil {
		t.Fatalf("cluster.json top-level keys: want nodes and frontends only:\n%s", raw)
	}
	var nodes []map[string]any
	if err := json.Unmarshal(top["nodes"], &nodes); err != nil {
		t.Fatal(err)
	}
	var info devClusterFile
	if err := json.Unmarshal(raw, &info); err != nil {
		t.Fatal(err)
	}
	wantRoles := map[string]string{"m1": "meta", "m2": "meta", "m3": "meta",
		"s1": "storage", "s2": "storage", "s3": "storage", "a1": "api", "a2": "api"}
	var ids, frontends []string
	for i, n := range nodes {
		id, _ := n["id"].(string)
		ids = append(ids, id)
		role := wantRoles[id]
		keys := map[string]bool{"id": true, "roles": true, "pid": true, "grpc": true}
		switch role {
		case "meta":
			keys["raft"] = true
		case "api":
			keys["http"] = true
		}
		for k := range n {
			if !keys[k] {
				t.Errorf("node %s has key %q", id, k)
			}
		}
		for k := range keys {
			if _, ok := n[k]; !ok {
				t.Errorf("node %s lacks key %q", id, k)
			}
		}
		ni := info.Nodes[i]
		if len(ni.Roles) != 1 || ni.Roles[0] != role {
			t.Errorf("node %s roles %v, want [%s]", id, ni.Roles, role)
		}
		if ni.PID <= 0 || !processAlive(ni.PID) {
			t.Errorf("node %s pid %d not alive", id, ni.PID)
		}
		if ni.HTTP != "" {
			if !strings.HasPrefix(ni.HTTP, "http://127.0.0.1:") {
				t.Errorf("node %s http %q", id, ni.HTTP)
			}
			frontends = append(frontends, ni.HTTP)
		}
		for _, a := range []string{ni.GRPC, ni.Raft} {
			if a != "" && !strings.HasPrefix(a, "127.0.0.1:") {
				t.Errorf("node %s address %q: want host:port on 127.0.0.1", id, a)
			}
		}
	}
	if got := strings.Join(ids, ","); got != "m1,m2,m3,s1,s2,s3,a1,a2" {
		t.Errorf("node ids %s", got)
	}
	if !slices.Equal(frontends, info.Frontends) || len(frontends) != 2 {
		t.Fatalf("frontends %v, want the api nodes' %v", info.Frontends, frontends)
	}
	return info
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func do(t *testing.T, ctx context.Context, method, url, contentType string, body []byte) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	if resp.StatusCode >= 300 {
		t.Logf("%s %s: %s %s", method, url, resp.Status, b)
	}
	return resp.StatusCode, b, resp.Header
}

// TestFailoverBench runs one leader kill of `strata dev failover-bench` and
// checks its JSON lines.
func TestFailoverBench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an 8-process cluster")
	}
	bin := buildStrata(t)
	start := time.Now()
	cmd := exec.Command(bin, "dev", "failover-bench", "--runs", "1", "--settle", "0s", "--dir", t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("failover-bench: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		t.Fatalf("want a line for the run and one for the summary, got:\n%s", out)
	}
	var run failoverRun
	var sum failoverSummary
	if err := json.Unmarshal([]byte(lines[0]), &run); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &sum); err != nil {
		t.Fatal(err)
	}
	if run.Run != 1 || !strings.HasPrefix(run.Killed, "m") || run.NewLeader == "" || run.NewLeader == run.Killed ||
		run.RecoveryMS <= 0 || run.Attempts < 1 {
		t.Errorf("run: %+v", run)
	}
	if sum.Runs != 1 || sum.Failed != 0 || len(sum.RecoveryMS) != 1 || sum.MedianMS != run.RecoveryMS || sum.P90MS != run.RecoveryMS {
		t.Errorf("summary: %s", lines[1])
	}
	t.Logf("one failover in %s: %s", time.Since(start).Round(time.Millisecond), lines[0])
}
