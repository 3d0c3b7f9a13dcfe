package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-registry/strata/api"
	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/metastore"
)

func TestBenchPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	cases := []struct {
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 50, 7 * time.Millisecond},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(1, 2), 50, 1 * time.Millisecond}, // nearest rank: ceil(0.5*2) = 1st
		{ms(1, 2), 51, 2 * time.Millisecond},
		{ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{ms(1, 2, 3, 4), 75, 3 * time.Millisecond},
		{ms(1, 2, 3, 4), 100, 4 * time.Millisecond},
		{ms(1, 2, 3, 4), 0, 1 * time.Millisecond},
		{hundred, 50, 50 * time.Millisecond},
		{hundred, 99, 99 * time.Millisecond},
		{hundred, 99.5, 100 * time.Millisecond},
		{hundred, 90, 90 * time.Millisecond},
	}
	for _, c := range cases {
		if got := benchPercentile(c.sorted, c.p); got != c.want {
			t.Errorf("p%v of %d values: %v, want %v", c.p, len(c.sorted), got, c.want)
		}
	}
	// summarizeLatencies sorts for itself and reports milliseconds.
	l := summarizeLatencies(ms(40, 10, 30, 20))
	if l.P50 != 20 || l.P99 != 40 || l.Max != 40 || l.Mean != 25 || l.P90 != 40 {
		t.Errorf("summary %+v", l)
	}
}

func TestBenchResultJSONShape(t *testing.T) {
	verify := true
	r := benchResult{Scenario: "pull-herd", Case: "herd", Target: "strata", URL: "http://x", Concurrency: 4,
		Duration: "1s", Size: 1 << 20, Verify: &verify, Bytes: 4 << 20}
	lat := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond, 40 * time.Millisecond}
	fillBenchResult(&r, lat, 2*time.Second, []benchProcStat{
		{Name: "api-a1", PID: 10, CPUSeconds: 0.5, PeakRSSMiB: 100},
		{Name: "meta-m1", PID: 11, CPUSeconds: 0.25, PeakRSSMiB: 300},
	})
	r.Metrics = []benchMetric{{Name: "mb_per_s", Value: r.MBPerSec, HigherIsBetter: true, Goal: 1.2}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("\n")) {
		t.Fatal("a result must be one line")
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"scenario": "pull-herd", "case": "herd", "target": "strata", "url": "http://x", "concurrency": 4.0,
		"duration": "1s", "size": float64(1 << 20), "verify": true,
		"ops": 4.0, "errors": 0.0, "throttled": 0.0, "seconds": 2.0, "ops_per_s": 2.0, "bytes": float64(4 << 20), "mb_per_s": 2.1,
		"p50_ms": 20.0, "p90_ms": 40.0, "p99_ms": 40.0, "max_ms": 40.0, "mean_ms": 25.0,
		"server_cpu_s": 0.75, "server_peak_rss_mib": 400.0, "frontend_peak_rss_mib": 100.0,
		"setup_s": 0.0, "client_cpu_s": 0.0,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	for _, k := range []string{"servers", "metrics", "start", "cpu_s_per_gb"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
	// Fields of other scenarios are left out.
	for _, k := range []string{"upload_mode", "images", "tags", "layers", "by", "method", "setup_error", "first_error"} {
		if _, ok := m[k]; ok {
			t.Errorf("unexpected %q in %s", k, b)
		}
	}
	srv := m["servers"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "pid", "cpu_s", "peak_rss_mib", "hwm_mib"} {
		if _, ok := srv[k]; !ok {
			t.Errorf("no %q in a server entry %v", k, srv)
		}
	}
}

func TestParseBenchSize(t *testing.T) {
	for in, want := range map[string]int64{
		"1024": 1024, "1KiB": 1024, "64MiB": 64 << 20, "1GiB": 1 << 30, "1MB": 1e6, "1M": 1e6,
		"1.5KiB": 1536, "0": 0, "10B": 10, " 2 MiB ": 2 << 20,
	} {
		got, err := parseBenchSize(in)
		if err != nil || got != want {
			t.Errorf("parseBenchSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1TiB"} {
		if _, err := parseBenchSize(in); err == nil {
			t.Errorf("parseBenchSize(%q) accepted", in)
		}
	}
	if s := fmtBenchSize(256 << 20); s != "256MiB" {
		t.Error(s)
	}
}

func TestParseChallenge(t *testing.T) {
	scheme, p := parseChallenge(`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"`)
	if scheme != "Bearer" || p["realm"] != "https://auth.example/token" || p["service"] != "registry.example" ||
		p["scope"] != "repository:a/b:pull,push" {
		t.Errorf("%s %v", scheme, p)
	}
	scheme, p = parseChallenge(`Basic realm=registry`)
	if scheme != "Basic" || p["realm"] != "registry" {
		t.Errorf("%s %v", scheme, p)
	}
}

func TestParseProcStatCPU(t *testing.T) {
	// Fields 14 and 15 (utime, stime) are 250 and 50 ticks; the command
	// name holds a space and a parenthesis.
	stat := "1234 (my (weird) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 1000 200"
	got, err := parseProcStatCPU([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	if want := 300 / clockTicks(); got != want {
		t.Errorf("cpu %v, want %v", got, want)
	}
	// Burn a little CPU so that this process has used a tick at least.
	var c float64
	for deadline := time.Now().Add(2 * time.Second); c == 0 && time.Now().Before(deadline); {
		for i := range 1_000_000 {
			benchSink += i
		}
		if c, err = procCPUSeconds(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	if c <= 0 {
		t.Errorf("own cpu %v", c)
	}
	if rss, hwm, err := procMemKiB(os.Getpid()); err != nil || rss == 0 || hwm < rss {
		t.Errorf("own rss %d hwm %d: %v", rss, hwm, err)
	}
}

var benchSink int

func TestPlanBench(t *testing.T) {
	base := defaultBenchParams()
	plan, err := planBench([]string{"all"}, base, map[string]string{"duration": "2s"})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != len(benchScenarios) {
		t.Fatalf("all: %d scenarios", len(plan))
	}
	for _, pl := range plan {
		if pl.p.Duration != 2*time.Second {
			t.Errorf("%s: duration %v", pl.sc.name, pl.p.Duration)
		}
	}
	plan, err = planBench([]string{"pull-herd:concurrency=64,size=64MiB,verify=false"}, base, map[string]string{"concurrency": "3"})
	if err != nil {
		t.Fatal(err)
	}
	if p := plan[0].p; p.Concurrency != 64 || p.Size != 64<<20 || p.Verify {
		t.Errorf("options: %+v", p)
	}
	plan, _ = planBench([]string{"push-small-images"}, base, map[string]string{"concurrency": "3"})
	if p := plan[0].p; p.Concurrency != 3 || p.Size != 1<<10 {
		t.Errorf("flags over defaults: %+v", p)
	}
	for _, bad := range []string{"nope", "push-blob:size", "push-blob:upload-mode=sideways", "push-blob:bogus=1"} {
		if _, err := planBench([]string{bad}, base, nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// newBenchTestRegistry serves the real single-node stack (Pebble under a
// Raft voter, local shard directories at 2+1, the OCI API) behind a bearer
// token gate like docker's token protocol, and returns its URL and how many
// tokens it issued.
func newBenchTestRegistry(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	return newBenchTestRegistryWith(t, nil)
}

// newBenchTestRegistryWith is newBenchTestRegistry with wrap, if not nil,
// around the registry's handler (behind the token gate).
func newBenchTestRegistryWith(t *testing.T, wrap func(http.Handler) http.Handler) (string, *atomic.Int64) {
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
	for i := range 3 {
		ls, err := blobstore.OpenLocal(fmt.Sprintf("d%d", i), filepath.Join(dir, fmt.Sprintf("shards%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ls.Close() })
		nodes = append(nodes, blobstore.Node{Info: blobstore.NodeInfo{ID: ls.NodeID(), Zone: ls.NodeID(), Free: 1 << 40}, Shards: ls})
	}
	blobs, err := blobstore.New(blobstore.Config{K: 2, M: 1, SegmentSize: 256 << 10}, func() []blobstore.Node { return nodes })
	if err != nil {
		t.Fatal(err)
	}
	meta, err := cluster.NewMeta(cluster.MetaConfig{Node: node, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	inner := api.New(api.Config{}, meta, blobs).Handler()
	if wrap != nil {
		inner = wrap(inner)
	}
	var issued atomic.Int64
	var hs *httptest.Server
	hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			if u, p, ok := r.BasicAuth(); !ok || u != "bench" || p != "secret" {
				http.Error(w, "bad credentials", http.StatusUnauthorized)
				return
			}
			issued.Add(1)
			fmt.Fprintf(w, `{"token":"tok-%s"}`, r.URL.Query().Get("scope"))
			return
		}
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer tok-") {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test",scope="repository:x:pull"`, hs.URL))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		hs.Close()
		node.Close()
		st.Close()
	})
	return hs.URL, &issued
}

// TestBenchScenarios runs every scenario for a few operations against an
// in-process Strata behind token auth.
func TestBenchScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	url, issued := newBenchTestRegistry(t)
	var out, errb bytes.Buffer
	o := &benchOptions{
		urls: []string{url, url}, username: "bench", password: "secret",
		scenarios: []string{
			"push-blob:size=600KiB", "push-blob:upload-mode=chunked,chunk-size=200KiB,size=500KiB",
			"push-blob:upload-mode=streamed,size=300KiB",
			"pull-herd:size=700KiB", "pull-distinct:size=100KiB,verify=false",
			"manifest-get:images=4", "manifest-get:images=3,by=digest,method=HEAD",
			"push-small-images", "tag-list:tags=30,page-size=7",
			"push-images:size=64KiB,layers=3", "pull-images:size=64KiB,layers=2,images=2",
		},
		repo: "bench-test", target: "strata-test", caseName: "smoke",
		metrics: []string{"ops_per_s:2"}, pids: []string{fmt.Sprintf("api-self=%d", os.Getpid())},
		timeout: time.Minute, maxOps: 1000, summary: true, progress: true, sampleRSS: 10 * time.Millisecond,
		params: defaultBenchParams(), stdout: &out, stderr: &errb,
		changed: map[string]string{"count": "5", "concurrency": "2", "setup-concurrency": "4"},
	}
	if err := runBench(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out.String(), errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(o.scenarios) {
		t.Fatalf("%d JSON lines for %d scenarios:\n%s", len(lines), len(o.scenarios), out.String())
	}
	for i, line := range lines {
		var r benchResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, line)
		}
		name := strings.SplitN(o.scenarios[i], ":", 2)[0]
		if r.Scenario != name || r.Ops != 5 || r.Errors != 0 || r.SetupError != "" || r.Concurrency != 2 {
			t.Errorf("%s: %s", o.scenarios[i], line)
		}
		if r.Target != "strata-test" || r.Case != "smoke" || len(r.Metrics) != 1 || r.Metrics[0].Goal != 2 {
			t.Errorf("%s: labels or metrics: %s", o.scenarios[i], line)
		}
		if len(r.Servers) != 1 || r.Servers[0].Name != "api-self" || r.Servers[0].PeakRSSMiB <= 0 || r.FrontendPeakRS <= 0 {
			t.Errorf("%s: server stats: %s", o.scenarios[i], line)
		}
		if r.Ops > 0 && (r.P50 <= 0 || r.Max < r.P99 || r.P99 < r.P50 || r.OpsPerSec <= 0) {
			t.Errorf("%s: latencies: %s", o.scenarios[i], line)
		}
		if name != "manifest-get" && name != "tag-list" && r.Bytes == 0 {
			t.Errorf("%s: no bytes: %s", o.scenarios[i], line)
		}
	}
	if issued.Load() == 0 {
		t.Error("no token was fetched")
	}
	if !strings.Contains(errb.String(), "push-small-images") || !strings.Contains(errb.String(), "p99 ms") {
		t.Errorf("no summary table on stderr:\n%s", errb.String())
	}

	// The report: one row per case and metric, a ratio to the baseline.
	var both bytes.Buffer
	both.WriteString(out.String())
	both.WriteString(strings.ReplaceAll(out.String(), `"strata-test"`, `"distribution"`))
	results, err := readBenchResults(&both, nil)
	if err != nil {
		t.Fatal(err)
	}
	var rep bytes.Buffer
	if err := printBenchReport(&rep, results, "distribution"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rep.String(), "| smoke | ops/s |") || !strings.Contains(rep.String(), "strata-test / distribution") {
		t.Errorf("report:\n%s", rep.String())
	}
}

// TestBenchWrongCredentials fails clearly when the token realm refuses.
func TestBenchWrongCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	url, _ := newBenchTestRegistry(t)
	var out, errb bytes.Buffer
	o := &benchOptions{urls: []string{url}, username: "bench", password: "wrong", scenarios: []string{"tag-list"},
		params: defaultBenchParams(), stdout: &out, stderr: &errb, timeout: time.Minute, maxOps: 10}
	err := runBench(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("err %v", err)
	}
}

// A registry shedding load answers 429 with Retry-After: the bench waits and
// sends the request again, and counts those answers (throttled) instead of
// failing the operation.
func TestBenchRetriesTooManyRequests(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a registry")
	}
	var gets, refused atomic.Int64
	url, _ := newBenchTestRegistryWith(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") && gets.Add(1)%3 != 0 {
				refused.Add(1)
				w.Header().Set("Retry-After", "0")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusTooManyRequests)
				fmt.Fprint(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"retry shortly"}]}`)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	var out, errb bytes.Buffer
	o := &benchOptions{
		urls: []string{url}, username: "bench", password: "secret",
		scenarios: []string{"pull-herd:size=300KiB", "pull-distinct:size=100KiB"},
		repo:      "bench-429", timeout: time.Minute, maxOps: 1000, summary: true, sampleRSS: 10 * time.Millisecond,
		params: defaultBenchParams(), stdout: &out, stderr: &errb,
		changed: map[string]string{"count": "6", "concurrency": "3"},
	}
	if err := runBench(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out.String(), errb.String())
	}
	var throttled int64
	for line := range strings.Lines(strings.TrimSpace(out.String())) {
		var r benchResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.Ops != 6 || r.Errors != 0 || r.Throttled < 6 {
			t.Errorf("%s: %s", r.Scenario, line)
		}
		throttled += r.Throttled
	}
	if throttled != refused.Load() {
		t.Errorf("the JSON lines count %d throttled answers, the registry sent %d", throttled, refused.Load())
	}
	if !strings.Contains(errb.String(), "429 Too Many Requests") {
		t.Errorf("no throttled note in the summary:\n%s", errb.String())
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for h, want := range map[string]time.Duration{
		"": time.Second, "junk": time.Second, "0": 0, "-3": 0, "2": 2 * time.Second, "86400": time.Minute,
		now.Add(5 * time.Second).Format(http.TimeFormat): 5 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):      0,
	} {
		if got := retryAfter(h, now); got < want || got > want+want/5 {
			t.Errorf("Retry-After %q: wait %v, want %v plus up to a fifth", h, got, want)
		}
	}
}
