package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// `strata bench` is a load generator that speaks plain OCI Distribution HTTP
// to any registry (Strata, CNCF Distribution, zot, ...). Each scenario first
// creates the data it needs (untimed), then runs --concurrency workers for
// --duration or --count operations and prints one JSON line on stdout.

// benchParams are one scenario's knobs.
type benchParams struct {
	Concurrency      int
	Duration         time.Duration
	Count            int
	Size             int64
	UploadMode       string
	ChunkSize        int64
	Images           int
	Tags             int
	PageSize         int
	Layers           int
	Blobs            int
	By               string
	Method           string
	Verify           bool
	SetupConcurrency int
}

func defaultBenchParams() benchParams {
	return benchParams{
		Concurrency: 8, Duration: 10 * time.Second, Size: 16 << 20, UploadMode: uploadMonolithic,
		ChunkSize: 8 << 20, Images: 100, Tags: 1000, PageSize: 100, Layers: 5,
		By: "tag", Method: http.MethodGet, Verify: true, SetupConcurrency: 16,
	}
}

// set applies one option by its flag name (also the key of per-scenario
// options, --scenario name:key=value,...).
func (p *benchParams) set(key, val string) error {
	var err error
	switch key {
	case "concurrency", "c":
		p.Concurrency, err = strconv.Atoi(val)
	case "duration", "d":
		p.Duration, err = time.ParseDuration(val)
	case "count", "n":
		p.Count, err = strconv.Atoi(val)
	case "size":
		p.Size, err = parseBenchSize(val)
	case "upload-mode":
		p.UploadMode = val
	case "chunk-size":
		p.ChunkSize, err = parseBenchSize(val)
	case "images":
		p.Images, err = strconv.Atoi(val)
	case "tags":
		p.Tags, err = strconv.Atoi(val)
	case "page-size":
		p.PageSize, err = strconv.Atoi(val)
	case "layers":
		p.Layers, err = strconv.Atoi(val)
	case "blobs":
		p.Blobs, err = strconv.Atoi(val)
	case "by":
		p.By = val
	case "method":
		p.Method = strings.ToUpper(val)
	case "verify":
		p.Verify, err = strconv.ParseBool(val)
	case "setup-concurrency":
		p.SetupConcurrency, err = strconv.Atoi(val)
	default:
		return fmt.Errorf("unknown option %q", key)
	}
	if err != nil {
		return fmt.Errorf("%s=%s: %w", key, val, err)
	}
	return nil
}

func (p *benchParams) validate() error {
	switch {
	case p.Concurrency < 1:
		return errors.New("concurrency must be at least 1")
	case p.Count < 0 || p.Count == 0 && p.Duration <= 0:
		return errors.New("give a positive --duration or --count")
	case p.Size < 0:
		return errors.New("size must not be negative")
	case p.SetupConcurrency < 1:
		return errors.New("setup-concurrency must be at least 1")
	}
	switch p.UploadMode {
	case uploadMonolithic, uploadChunked, uploadStreamed:
	default:
		return fmt.Errorf("upload-mode %q: monolithic, chunked or streamed", p.UploadMode)
	}
	return nil
}

// parseBenchSize reads 1048576, 1MiB, 1M (= 1,000,000), 64KiB, 1.5GiB ...
func parseBenchSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
		{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"B", 1},
	}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size %q: want bytes, or a number with KiB, MiB, GiB, KB, MB or GB", s)
	}
	return int64(v * mult), nil
}

// fmtBenchSize prints n bytes as 64MiB, 1KiB or 1000B.
func fmtBenchSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// benchMetricGoal is a headline metric to report (--metric name[:goal]).
type benchMetricGoal struct {
	Name string
	Goal float64 // 0: none
}

// benchMetric is a headline metric in a result line: its value and, for the
// comparison report, whether higher is better and the goal as a ratio to
// the baseline registry.
type benchMetric struct {
	Name           string  `json:"name"`
	Value          float64 `json:"value"`
	HigherIsBetter bool    `json:"higher_is_better"`
	Goal           float64 `json:"goal,omitempty"`
}

// benchMetricNames are the metrics --metric may name.
var benchMetricNames = map[string]bool{ // name -> higher is better
	"ops_per_s": true, "mb_per_s": true,
	"p50_ms": false, "p90_ms": false, "p99_ms": false, "max_ms": false, "mean_ms": false,
	"server_cpu_s": false, "server_peak_rss_mib": false, "frontend_peak_rss_mib": false, "cpu_s_per_gb": false,
}

// benchResult is the JSON line of one scenario.
type benchResult struct {
	Scenario string `json:"scenario"`
	Case     string `json:"case,omitempty"`
	Target   string `json:"target,omitempty"`
	URL      string `json:"url"`
	Start    string `json:"start"`

	Concurrency int    `json:"concurrency"`
	Duration    string `json:"duration,omitempty"`
	Count       int    `json:"count,omitempty"`
	Size        int64  `json:"size,omitempty"`
	UploadMode  string `json:"upload_mode,omitempty"`
	ChunkSize   int64  `json:"chunk_size,omitempty"`
	Images      int    `json:"images,omitempty"`
	Tags        int    `json:"tags,omitempty"`
	PageSize    int    `json:"page_size,omitempty"`
	Layers      int    `json:"layers,omitempty"`
	Blobs       int    `json:"blobs,omitempty"`
	By          string `json:"by,omitempty"`
	Method      string `json:"method,omitempty"`
	Verify      *bool  `json:"verify,omitempty"`

	SetupSeconds float64 `json:"setup_s"`
	SetupError   string  `json:"setup_error,omitempty"`

	Ops        int64   `json:"ops"`
	Errors     int64   `json:"errors"`
	Throttled  int64   `json:"throttled"` // 429 answers retried after their Retry-After
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
	OpsPerSec  float64 `json:"ops_per_s"`
	Bytes      int64   `json:"bytes"`
	MBPerSec   float64 `json:"mb_per_s"`
	P50        float64 `json:"p50_ms"`
	P90        float64 `json:"p90_ms"`
	P99        float64 `json:"p99_ms"`
	Max        float64 `json:"max_ms"`
	Mean       float64 `json:"mean_ms"`

	ClientCPU      float64         `json:"client_cpu_s"`
	ServerCPU      float64         `json:"server_cpu_s,omitempty"`
	ServerPeakRSS  float64         `json:"server_peak_rss_mib,omitempty"`
	FrontendPeakRS float64         `json:"frontend_peak_rss_mib,omitempty"`
	CPUPerGB       float64         `json:"cpu_s_per_gb,omitempty"`
	Servers        []benchProcStat `json:"servers,omitempty"`
	Metrics        []benchMetric   `json:"metrics,omitempty"`
}

// value returns a metric of the result by its JSON name.
func (r *benchResult) value(name string) (float64, bool) {
	switch name {
	case "ops_per_s":
		return r.OpsPerSec, true
	case "mb_per_s":
		return r.MBPerSec, true
	case "p50_ms":
		return r.P50, true
	case "p90_ms":
		return r.P90, true
	case "p99_ms":
		return r.P99, true
	case "max_ms":
		return r.Max, true
	case "mean_ms":
		return r.Mean, true
	case "server_cpu_s":
		return r.ServerCPU, len(r.Servers) > 0
	case "server_peak_rss_mib":
		return r.ServerPeakRSS, len(r.Servers) > 0
	case "frontend_peak_rss_mib":
		return r.FrontendPeakRS, r.FrontendPeakRS > 0
	case "cpu_s_per_gb":
		return r.CPUPerGB, r.CPUPerGB > 0
	}
	return 0, false
}

// benchOptions are the command's flags beyond the scenario parameters.
type benchOptions struct {
	urls       []string
	username   string
	password   string
	insecure   bool
	h2c        bool
	scenarios  []string
	repo       string
	target     string
	caseName   string
	metrics    []string
	pids       []string
	timeout    time.Duration
	maxOps     int
	progress   bool
	summary    bool
	beforeRun  string
	sampleRSS  time.Duration
	cpuProfile string
	params     benchParams
	changed    map[string]string // global scenario flags given on the command line
	stdout     io.Writer
	stderr     io.Writer
	isTerminal bool
}

// benchParamFlags are the flags that are also per-scenario options.
var benchParamFlags = []string{"concurrency", "duration", "count", "size", "upload-mode", "chunk-size", "images",
	"tags", "page-size", "layers", "blobs", "by", "method", "verify", "setup-concurrency"}

func newBenchCmd() *cobra.Command {
	o := &benchOptions{params: defaultBenchParams()}
	var sizeFlag, chunkFlag string
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test any OCI registry over plain HTTP and report throughput, latency and server CPU/RSS",
		Long: `Load-test an OCI registry (Strata or any other) over the plain OCI Distribution API.

Each scenario first creates the data it needs (untimed: images for the pull and
manifest scenarios, tags, blobs), then runs --concurrency workers for --duration
(or --count operations, bounded by --timeout) and prints one JSON line on stdout:
operations/s, MB/s (10^6 bytes), p50/p90/p99/max latency in ms, errors, throttled
(429 Too Many Requests answers, each retried after its Retry-After: an operation's
latency includes its waits), and with
--server-pid the CPU seconds and peak RSS of the server processes during the
timed part. A progress bar goes to stderr when it is a terminal (or --progress);
--summary prints a table on stderr at the end.

Scenarios (--scenario, repeatable, or all):
` + benchScenarioHelp() + `
Options for one scenario only: --scenario name:key=value,... with the names of
the flags below (concurrency, duration, count, size, upload-mode, chunk-size,
images, tags, page-size, layers, blobs, by, method, verify, setup-concurrency).
Each scenario has defaults of its own (see above); flags given on the command
line override them for every scenario, per-scenario options override both.

Blobs are unique per operation (a shared pseudo-random prefix and a unique
tail), so no registry can skip work by deduplicating. Authentication: basic
(--username/--password) and the docker token protocol (a 401 with
WWW-Authenticate: Bearer realm=... is answered with a token from the realm).`,
		Example: `  strata bench --url http://127.0.0.1:5000 --scenario all --summary
  strata bench --url http://127.0.0.1:5000 --scenario push-blob --size 256MiB --concurrency 8 --count 32
  strata bench --url http://127.0.0.1:5000 --scenario pull-herd:concurrency=64,size=64MiB --server-pid api=$(pidof strata)
  strata bench --url http://a1:5000 --url http://a2:5000 --scenario manifest-get:images=1000,concurrency=64 \
      --scenario tag-list:tags=10000 --duration 20s --summary`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.changed = map[string]string{}
			cmd.Flags().Visit(func(f *pflag.Flag) {
				if slices.Contains(benchParamFlags, f.Name) {
					o.changed[f.Name] = f.Value.String()
				}
			})
			if sizeFlag != "" {
				o.changed["size"] = sizeFlag
			}
			if chunkFlag != "" {
				o.changed["chunk-size"] = chunkFlag
			}
			o.stdout, o.stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			o.isTerminal = benchIsTerminal(o.stderr)
			return runBench(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.urls, "url", nil, "registry base URL, e.g. http://127.0.0.1:5000 (repeatable: workers spread over them)")
	f.StringVar(&o.username, "username", os.Getenv("STRATA_BENCH_USERNAME"), "user for basic auth or the token realm (env STRATA_BENCH_USERNAME)")
	f.StringVar(&o.password, "password", os.Getenv("STRATA_BENCH_PASSWORD"), "password (env STRATA_BENCH_PASSWORD)")
	f.BoolVar(&o.insecure, "insecure", false, "skip TLS certificate verification for https URLs")
	f.BoolVar(&o.h2c, "h2c", false, "speak HTTP/2 over cleartext (prior knowledge) to http URLs")
	f.StringArrayVar(&o.scenarios, "scenario", nil, "scenario to run, repeatable, or all; name:key=value,... sets options for it alone")
	f.StringVar(&o.repo, "repo", "strata-bench", "repository prefix: each scenario uses <repo>/<run id>/<scenario>")
	f.StringVar(&o.target, "target", "", "a name for the registry under test, copied into the JSON lines")
	f.StringVar(&o.caseName, "case", "", "a name for this measurement, copied into the JSON lines (comparison reports group by it)")
	f.StringArrayVar(&o.metrics, "metric", nil, "headline metric for reports, name[:goal] (goal: wanted ratio to the baseline), repeatable")
	f.StringArrayVar(&o.pids, "server-pid", nil, "server process to measure, pid or name=pid (repeatable; names starting with \"api\" count as frontends)")
	f.DurationVar(&o.timeout, "timeout", 10*time.Minute, "upper bound on each scenario's setup and on its timed part")
	f.IntVar(&o.maxOps, "max-ops", 1_000_000, "upper bound on operations per scenario in --duration mode")
	f.BoolVar(&o.progress, "progress", false, "show the progress bar even when stderr is not a terminal")
	f.BoolVar(&o.summary, "summary", false, "print a table of every scenario on stderr at the end")
	f.StringVar(&o.beforeRun, "before-run", "", "shell command to run after each scenario's setup, before its timed part (e.g. to kill nodes)")
	f.DurationVar(&o.sampleRSS, "rss-interval", 50*time.Millisecond, "how often the servers' RSS is sampled")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this load generator (go tool pprof) to this file")

	p := &o.params
	f.IntVarP(&p.Concurrency, "concurrency", "c", p.Concurrency, "workers (clients) running operations at once")
	f.DurationVarP(&p.Duration, "duration", "d", p.Duration, "how long the timed part runs (unless --count)")
	f.IntVarP(&p.Count, "count", "n", 0, "run this many operations instead of for --duration")
	f.StringVar(&sizeFlag, "size", "", "blob or layer size (push-blob, pulls, images), e.g. 1MiB, 256MiB")
	f.StringVar(&p.UploadMode, "upload-mode", p.UploadMode, "push-blob: monolithic (POST+PUT), chunked (PATCH with Content-Range per --chunk-size), streamed (one PATCH, chunked encoding)")
	f.StringVar(&chunkFlag, "chunk-size", "", "PATCH size for --upload-mode chunked (default 8MiB)")
	f.IntVar(&p.Images, "images", p.Images, "images pushed beforehand for manifest-get and pull-images")
	f.IntVar(&p.Tags, "tags", p.Tags, "tags made beforehand for tag-list")
	f.IntVar(&p.PageSize, "page-size", p.PageSize, "tag-list page size (n=)")
	f.IntVar(&p.Layers, "layers", p.Layers, "layers per image for push-images and pull-images")
	f.IntVar(&p.Blobs, "blobs", 0, "distinct blobs for pull-distinct (default: one per worker)")
	f.StringVar(&p.By, "by", p.By, "manifest-get: tag or digest")
	f.StringVar(&p.Method, "method", p.Method, "manifest-get: GET or HEAD")
	f.BoolVar(&p.Verify, "verify", p.Verify, "check the digest of everything pulled (blobs, manifests) and the content of tag pages")
	f.IntVar(&p.SetupConcurrency, "setup-concurrency", p.SetupConcurrency, "workers for the untimed setup")
	cmd.AddCommand(newBenchReportCmd())
	return cmd
}

func benchScenarioHelp() string {
	var b strings.Builder
	for _, s := range benchScenarios {
		p := defaultBenchParams()
		s.defaults(&p)
		fmt.Fprintf(&b, "  %-18s %s\n  %-18s (defaults: concurrency %d", s.name, s.about, "", p.Concurrency)
		switch s.name {
		case "push-blob", "pull-herd", "pull-distinct", "push-images", "pull-images", "push-small-images":
			fmt.Fprintf(&b, ", size %s", fmtBenchSize(p.Size))
		}
		switch s.name {
		case "manifest-get", "pull-images":
			fmt.Fprintf(&b, ", images %d", p.Images)
		case "tag-list":
			fmt.Fprintf(&b, ", tags %d", p.Tags)
		}
		b.WriteString(")\n")
	}
	return b.String()
}

// benchIsTerminal reports whether w is a terminal.
func benchIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// benchPlanned is a scenario with its parameters resolved.
type benchPlanned struct {
	sc *benchScenario
	p  benchParams
}

// planBench resolves --scenario values into scenarios with parameters:
// the scenario's defaults, then the flags given, then its own options.
func planBench(specs []string, base benchParams, changed map[string]string) ([]benchPlanned, error) {
	if len(specs) == 0 {
		return nil, errors.New("no --scenario (one of " + strings.Join(benchScenarioNames(), ", ") + ", or all)")
	}
	var out []benchPlanned
	for _, spec := range specs {
		name, opts, _ := strings.Cut(spec, ":")
		var scs []*benchScenario
		if name == "all" {
			for i := range benchScenarios {
				scs = append(scs, &benchScenarios[i])
			}
		} else {
			sc, ok := findBenchScenario(name)
			if !ok {
				return nil, fmt.Errorf("unknown scenario %q (one of %s, or all)", name, strings.Join(benchScenarioNames(), ", "))
			}
			scs = append(scs, sc)
		}
		for _, sc := range scs {
			p := base
			sc.defaults(&p)
			for _, k := range benchParamFlags {
				if v, ok := changed[k]; ok {
					if err := p.set(k, v); err != nil {
						return nil, fmt.Errorf("--%s: %w", k, err)
					}
				}
			}
			if opts != "" {
				for kv := range strings.SplitSeq(opts, ",") {
					k, v, ok := strings.Cut(kv, "=")
					if !ok {
						return nil, fmt.Errorf("--scenario %s: option %q is not key=value", spec, kv)
					}
					if err := p.set(strings.TrimSpace(k), strings.TrimSpace(v)); err != nil {
						return nil, fmt.Errorf("--scenario %s: %w", spec, err)
					}
				}
			}
			if err := p.validate(); err != nil {
				return nil, fmt.Errorf("scenario %s: %w", sc.name, err)
			}
			out = append(out, benchPlanned{sc: sc, p: p})
		}
	}
	return out, nil
}

func benchScenarioNames() []string {
	var n []string
	for _, s := range benchScenarios {
		n = append(n, s.name)
	}
	return n
}

func parseBenchMetrics(specs []string) ([]benchMetricGoal, error) {
	var out []benchMetricGoal
	for _, s := range specs {
		name, goal, hasGoal := strings.Cut(s, ":")
		if _, ok := benchMetricNames[name]; !ok {
			names := make([]string, 0, len(benchMetricNames))
			for k := range benchMetricNames {
				names = append(names, k)
			}
			slices.Sort(names)
			return nil, fmt.Errorf("--metric %q: one of %s", name, strings.Join(names, ", "))
		}
		m := benchMetricGoal{Name: name}
		if hasGoal {
			g, err := strconv.ParseFloat(goal, 64)
			if err != nil || g <= 0 {
				return nil, fmt.Errorf("--metric %q: goal must be a positive number", s)
			}
			m.Goal = g
		}
		out = append(out, m)
	}
	return out, nil
}

func runBench(ctx context.Context, o *benchOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if len(o.urls) == 0 {
		return errors.New("--url is required (the registry's base URL, e.g. http://127.0.0.1:5000)")
	}
	plan, err := planBench(o.scenarios, o.params, o.changed)
	if err != nil {
		return err
	}
	metrics, err := parseBenchMetrics(o.metrics)
	if err != nil {
		return err
	}
	var pids []benchPID
	for _, s := range o.pids {
		p, err := parseBenchPID(s)
		if err != nil {
			return err
		}
		if _, err := procCPUSeconds(p.PID); err != nil {
			return fmt.Errorf("--server-pid %s: %w", s, err)
		}
		pids = append(pids, p)
	}
	conns := 16
	for _, pl := range plan {
		conns = max(conns, pl.p.Concurrency*max(pl.p.Layers+1, 1), pl.p.SetupConcurrency)
	}
	var clients []*benchClient
	for _, u := range o.urls {
		c, err := newBenchClient(u, benchClientOptions{Username: o.username, Password: o.password,
			Insecure: o.insecure, H2C: o.h2c, Conns: conns})
		if err != nil {
			return err
		}
		defer c.close()
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = c.ping(pctx)
		cancel()
		if err != nil {
			return fmt.Errorf("registry at %s: %w", u, err)
		}
		clients = append(clients, c)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var rb [8]byte
	_, _ = rand.Read(rb[:])
	run := hex.EncodeToString(rb[:])
	data := newBenchData(run)
	enc := json.NewEncoder(o.stdout)
	var results []benchResult
	failed := 0
	for _, pl := range plan {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r := runBenchScenario(ctx, o, pl, clients, data, run, pids)
		for _, m := range metrics {
			v, ok := r.value(m.Name)
			if !ok {
				continue
			}
			r.Metrics = append(r.Metrics, benchMetric{Name: m.Name, Value: v, HigherIsBetter: benchMetricNames[m.Name], Goal: m.Goal})
		}
		if err := enc.Encode(r); err != nil {
			return err
		}
		if r.Errors > 0 || r.SetupError != "" {
			failed++
		}
		results = append(results, r)
	}
	if o.summary {
		printBenchSummary(o.stderr, results)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d scenarios had errors (see first_error/setup_error in their JSON lines)", failed, len(results))
	}
	return nil
}

// benchWorkerStats is what one worker saw.
type benchWorkerStats struct {
	lat      []time.Duration
	bytes    int64
	errs     int64
	firstErr error
}

// runBenchScenario sets one scenario up and runs its timed part.
func runBenchScenario(ctx context.Context, o *benchOptions, pl benchPlanned, clients []*benchClient,
	data *benchData, run string, pids []benchPID) benchResult {
	p := pl.p
	r := benchResult{
		Scenario: pl.sc.name, Case: o.caseName, Target: o.target, URL: strings.Join(o.urls, ","),
		Concurrency: p.Concurrency, Count: p.Count,
	}
	if p.Count == 0 {
		r.Duration = p.Duration.String()
	}
	verify := p.Verify
	switch pl.sc.name {
	case "push-blob":
		r.Size, r.UploadMode = p.Size, p.UploadMode
		if p.UploadMode == uploadChunked {
			r.ChunkSize = p.ChunkSize
		}
	case "pull-herd":
		r.Size, r.Verify = p.Size, &verify
	case "pull-distinct":
		r.Size, r.Verify, r.Blobs = p.Size, &verify, p.Blobs
		if r.Blobs <= 0 {
			r.Blobs = p.Concurrency
		}
	case "manifest-get":
		r.Images, r.By, r.Method, r.Verify = p.Images, p.By, p.Method, &verify
	case "push-small-images":
		r.Size = p.Size
	case "tag-list":
		r.Tags, r.PageSize, r.Verify = p.Tags, p.PageSize, &verify
	case "push-images":
		r.Size, r.Layers = p.Size, p.Layers
	case "pull-images":
		r.Size, r.Layers, r.Images, r.Verify = p.Size, p.Layers, p.Images, &verify
	}
	prog := newBenchProgress(o, pl.sc.name, p)
	env := &benchEnv{p: p, clients: clients, data: data, repo: o.repo + "/" + run + "/" + pl.sc.name,
		setupProgress: prog.setup}

	// Setup, untimed.
	setupStart := time.Now()
	sctx, cancel := context.WithTimeout(ctx, o.timeout)
	prog.start()
	op, err := pl.sc.setup(sctx, env)
	cancel()
	r.SetupSeconds = roundTo(time.Since(setupStart).Seconds(), 2)
	if err == nil && o.beforeRun != "" {
		if out, herr := exec.CommandContext(ctx, "sh", "-c", o.beforeRun).CombinedOutput(); herr != nil {
			err = fmt.Errorf("--before-run: %v: %s", herr, strings.TrimSpace(string(out)))
		}
	}
	if err != nil {
		prog.stop()
		r.SetupError = err.Error()
		r.Start = setupStart.UTC().Format(time.RFC3339)
		return r
	}

	// The timed part: workers take operation numbers until --count is
	// reached or --duration has passed; --timeout bounds it all.
	limit := int64(p.Count)
	if limit == 0 {
		limit = int64(o.maxOps)
	}
	rctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	watch := startProcWatcher(pids, o.sampleRSS)
	cpu0, throttled0 := clientCPUSeconds(), benchThrottled(clients)
	start := time.Now()
	r.Start = start.UTC().Format(time.RFC3339)
	prog.run(start)
	var next atomic.Int64
	stats := make([]benchWorkerStats, p.Concurrency)
	var wg sync.WaitGroup
	for w := range p.Concurrency {
		wg.Go(func() {
			st := &stats[w]
			c := env.client(w)
			info := benchOpInfo{worker: w, rng: benchSeed(run, w)}
			for ; ; info.iter++ {
				if p.Count == 0 && time.Since(start) >= p.Duration || rctx.Err() != nil {
					return
				}
				seq := next.Add(1) - 1
				if seq >= limit {
					return
				}
				info.seq = seq
				t0 := time.Now()
				n, err := op(rctx, c, info)
				d := time.Since(t0)
				if err != nil {
					st.errs++
					if st.firstErr == nil {
						st.firstErr = err
					}
					prog.errs.Add(1)
					continue
				}
				st.lat = append(st.lat, d)
				st.bytes += n
				prog.ops.Add(1)
				prog.bytes.Add(n)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	procs := watch.finish()
	r.ClientCPU = roundTo(clientCPUSeconds()-cpu0, 2)
	r.Throttled = benchThrottled(clients) - throttled0
	prog.stop()

	var lat []time.Duration
	for _, st := range stats {
		lat = append(lat, st.lat...)
		r.Bytes += st.bytes
		r.Errors += st.errs
		if st.firstErr != nil && r.FirstError == "" {
			r.FirstError = st.firstErr.Error()
		}
	}
	fillBenchResult(&r, lat, elapsed, procs)
	return r
}

// benchThrottled is how many 429 answers the clients have retried.
func benchThrottled(clients []*benchClient) int64 {
	var n int64
	for _, c := range clients {
		n += c.throttled.Load()
	}
	return n
}

// fillBenchResult computes the rates, latencies and server figures.
func fillBenchResult(r *benchResult, lat []time.Duration, elapsed time.Duration, procs []benchProcStat) {
	r.Ops = int64(len(lat))
	secs := elapsed.Seconds()
	r.Seconds = roundTo(secs, 3)
	if secs > 0 {
		r.OpsPerSec = roundTo(float64(r.Ops)/secs, 1)
		r.MBPerSec = roundTo(float64(r.Bytes)/secs/1e6, 1)
	}
	l := summarizeLatencies(lat)
	r.P50, r.P90, r.P99, r.Max, r.Mean = l.P50, l.P90, l.P99, l.Max, l.Mean
	if len(procs) > 0 {
		r.Servers = procs
		var cpu, rss float64
		for _, pr := range procs {
			cpu += pr.CPUSeconds
			rss += pr.PeakRSSMiB
			if strings.HasPrefix(pr.Name, "api") {
				r.FrontendPeakRS = max(r.FrontendPeakRS, pr.PeakRSSMiB)
			}
		}
		r.ServerCPU, r.ServerPeakRSS = roundTo(cpu, 2), roundTo(rss, 1)
		if r.Bytes > 0 {
			r.CPUPerGB = roundTo(cpu/(float64(r.Bytes)/1e9), 3)
		}
	}
}

// benchProgress draws a one-line progress bar on stderr.
type benchProgress struct {
	enabled bool
	w       io.Writer
	name    string
	p       benchParams

	ops, bytes, errs atomic.Int64
	setupDone        atomic.Int64
	setupTotal       atomic.Int64
	runStart         atomic.Int64 // unix nanos; 0 while setting up

	stopc chan struct{}
	done  chan struct{}
}

func newBenchProgress(o *benchOptions, name string, p benchParams) *benchProgress {
	return &benchProgress{enabled: o.progress || o.isTerminal, w: o.stderr, name: name, p: p}
}

func (b *benchProgress) setup(done, total int) {
	b.setupDone.Store(int64(done))
	b.setupTotal.Store(int64(total))
}

func (b *benchProgress) run(start time.Time) { b.runStart.Store(start.UnixNano()) }

func (b *benchProgress) start() {
	if !b.enabled {
		return
	}
	b.stopc, b.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(b.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-b.stopc:
				fmt.Fprint(b.w, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprint(b.w, "\r\033[K"+b.line())
			}
		}
	}()
}

func (b *benchProgress) line() string {
	rs := b.runStart.Load()
	if rs == 0 {
		if t := b.setupTotal.Load(); t > 0 {
			return fmt.Sprintf("%-18s setup %d/%d", b.name, b.setupDone.Load(), t)
		}
		return fmt.Sprintf("%-18s setup", b.name)
	}
	el := time.Since(time.Unix(0, rs))
	frac := 0.0
	if b.p.Count > 0 {
		frac = float64(b.ops.Load()+b.errs.Load()) / float64(b.p.Count)
	} else if b.p.Duration > 0 {
		frac = el.Seconds() / b.p.Duration.Seconds()
	}
	frac = min(max(frac, 0), 1)
	const width = 24
	fill := int(frac * width)
	bar := strings.Repeat("#", fill) + strings.Repeat(".", width-fill)
	secs := max(el.Seconds(), 1e-9)
	return fmt.Sprintf("%-18s [%s] %3.0f%% %d ops %.1f ops/s %.1f MB/s %d errors", b.name, bar, frac*100,
		b.ops.Load(), float64(b.ops.Load())/secs, float64(b.bytes.Load())/secs/1e6, b.errs.Load())
}

func (b *benchProgress) stop() {
	if b.stopc == nil {
		return
	}
	close(b.stopc)
	<-b.done
	b.stopc = nil
}

// benchParamsText describes a result's parameters in a few words.
func benchParamsText(r *benchResult) string {
	var parts []string
	parts = append(parts, fmt.Sprintf("c=%d", r.Concurrency))
	if r.Size > 0 {
		parts = append(parts, fmtBenchSize(r.Size))
	}
	if r.UploadMode != "" && r.UploadMode != uploadMonolithic {
		parts = append(parts, r.UploadMode)
	}
	if r.Layers > 0 {
		parts = append(parts, fmt.Sprintf("%d layers", r.Layers))
	}
	if r.Images > 0 {
		parts = append(parts, fmt.Sprintf("%d images", r.Images))
	}
	if r.Tags > 0 {
		parts = append(parts, fmt.Sprintf("%d tags", r.Tags))
	}
	if r.By != "" {
		parts = append(parts, r.Method+" by "+r.By)
	}
	if r.Verify != nil && !*r.Verify {
		parts = append(parts, "unchecked")
	}
	return strings.Join(parts, " ")
}

func printBenchSummary(w io.Writer, results []benchResult) {
	fmt.Fprintf(w, "\n%-18s %-30s %8s %6s %10s %9s %9s %9s %9s %8s %9s\n",
		"scenario", "parameters", "ops", "errors", "ops/s", "MB/s", "p50 ms", "p99 ms", "max ms", "srv cpu", "srv rss")
	for i := range results {
		r := &results[i]
		if r.SetupError != "" {
			fmt.Fprintf(w, "%-18s %-30s setup failed: %s\n", r.Scenario, benchParamsText(r), r.SetupError)
			continue
		}
		cpu, rss := "-", "-"
		if len(r.Servers) > 0 {
			cpu = fmt.Sprintf("%.1fs", r.ServerCPU)
			rss = fmt.Sprintf("%.0fMiB", r.ServerPeakRSS)
		}
		fmt.Fprintf(w, "%-18s %-30s %8d %6d %10.1f %9.1f %9.2f %9.2f %9.2f %8s %9s\n", r.Scenario, benchParamsText(r),
			r.Ops, r.Errors, r.OpsPerSec, r.MBPerSec, r.P50, r.P99, r.Max, cpu, rss)
		if r.FirstError != "" {
			fmt.Fprintf(w, "%-18s first error: %s\n", "", r.FirstError)
		}
		if r.Throttled > 0 {
			fmt.Fprintf(w, "%-18s %d answers of 429 Too Many Requests, retried after their Retry-After\n", "", r.Throttled)
		}
	}
}
