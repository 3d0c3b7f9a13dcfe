package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// RunConfig configures one run of a scenario against a cluster.
type RunConfig struct {
	// Scenario names an entry of Scenarios. Required.
	Scenario string
	// Duration is how long faults are injected (the workload runs over
	// it, plus a warm-up before and the checks after). Default 60s.
	Duration time.Duration
	// Seed fixes the fault schedule and the workload's choices; 0 draws
	// one (the report says which, to replay it).
	Seed uint64
	// Backend runs the cluster: "process" (`strata dev cluster` on
	// 127.0.0.1, the default) or "compose" (deploy/compose.yaml under
	// Docker Compose, from the images `make image` builds).
	Backend string
	// Image is the strata image of the compose backend (default
	// strata:dev).
	Image string
	// Binary is the strata binary the cluster runs. Required.
	Binary string
	// Report is the path of the JSON report. The human summary goes next
	// to it (.txt), and the artifacts of a failed run (histories, every
	// node's log) into a directory of the same name without ".json".
	// Required.
	Report string
	// WorkDir holds the cluster's data (default: a new temporary
	// directory, removed after a run that passed).
	WorkDir string
	// Keep keeps the cluster's data and the artifacts even when the run
	// passes.
	Keep bool
	// Cluster size (defaults 3 meta, 6 storage, 2 api) and --dead-after
	// (default 3s).
	Meta, Storage, API int
	DeadAfter          time.Duration
	// TolerateServerErrors keeps 5xx answers other than 503 from failing
	// the run (they are still counted and reported).
	TolerateServerErrors bool
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// Unavailability sums up, for one fault kind, the time from each fault to
// the next acknowledged push.
type Unavailability struct {
	Faults int     `json:"faults"`
	MaxMS  float64 `json:"max_ms"`
	MeanMS float64 `json:"mean_ms"`
	// NoPushAfter counts faults after which no push was acknowledged at
	// all.
	NoPushAfter int `json:"no_push_after,omitempty"`
}

// Report is the outcome of a run.
type Report struct {
	Scenario    string    `json:"scenario"`
	Description string    `json:"description"`
	Seed        uint64    `json:"seed"`
	Replay      string    `json:"replay"`
	Backend     string    `json:"backend"`
	Pass        bool      `json:"pass"`
	Failures    []string  `json:"failures"`
	Warnings    []string  `json:"warnings,omitempty"`
	Started     time.Time `json:"started"`
	Ended       time.Time `json:"ended"`
	Seconds     float64   `json:"seconds"`
	FaultPhaseS float64   `json:"fault_phase_seconds"`
	Cluster     struct {
		Meta      int    `json:"meta"`
		Storage   int    `json:"storage"`
		API       int    `json:"api"`
		DeadAfter string `json:"dead_after"`
		M         int    `json:"m"`
		Dir       string `json:"dir,omitempty"`
	} `json:"cluster"`
	Faults struct {
		Injected int                          `json:"injected"`
		ByKind   map[FaultKind]int            `json:"by_kind"`
		Skipped  int                          `json:"skipped"`
		Errors   int                          `json:"errors"`
		Events   []FaultEvent                 `json:"events"`
		Unavail  map[FaultKind]Unavailability `json:"unavailability"`
	} `json:"faults"`
	Operations struct {
		Counters
		BlobsAttempted     int `json:"blobs_attempted"`
		BlobsAcked         int `json:"blobs_acknowledged"`
		ManifestsAttempted int `json:"manifests_attempted"`
		ManifestsAcked     int `json:"manifests_acknowledged"`
		TagOps             int `json:"tag_operations"`
		GCRuns             int `json:"gc_runs"`
		GCFailed           int `json:"gc_runs_failed"`
		GCBlobsCollected   int `json:"gc_blobs_collected"`
	} `json:"operations"`
	// Acknowledged counts every acknowledged write: blob and manifest
	// pushes, deletions and tag writes.
	Acknowledged int `json:"acknowledged"`
	// Lost counts acknowledged writes found missing: must be 0.
	Lost            int                   `json:"lost"`
	Verify          VerifyReport          `json:"verify"`
	Linearizability LinearizabilityResult `json:"linearizability"`
	Repair          struct {
		Done       bool             `json:"done"`
		WaitedMS   int64            `json:"waited_ms"`
		Error      string           `json:"error,omitempty"`
		Status     json.RawMessage  `json:"storage_status,omitempty"`
		Damage     []damage         `json:"damaged_shards,omitempty"`
		Redundancy RedundancyReport `json:"redundancy"`
	} `json:"repair"`
	// ServerErrors are answers with a 5xx status other than 503 (the first
	// of them): the clients retried them, but the design promises 503
	// UNAVAILABLE, with a retry through the election, while a leader or a
	// node is missing.
	ServerErrors struct {
		Count   int      `json:"count"`
		Samples []string `json:"samples,omitempty"`
	} `json:"server_errors"`
	// Replicas is the check of every meta node's own metastore.
	Replicas ReplicaReport `json:"replicas"`
	// Net is what the proxy layer did, when the scenario had one.
	Net       *NetStats      `json:"net,omitempty"`
	Notes     map[string]int `json:"notes,omitempty"`
	Artifacts string         `json:"artifacts,omitempty"`
}

func (r *Report) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

// Run runs one scenario: it starts a cluster through the backend, drives
// the workloads, injects the scenario's faults for cfg.Duration, heals the
// cluster, checks every invariant and writes the report. The returned
// error is for a run that could not be carried out; broken promises are in
// the report (Pass false).
func Run(ctx context.Context, cfg RunConfig) (*Report, error) {
	sc, ok := Scenarios[cfg.Scenario]
	if !ok {
		return nil, fmt.Errorf("chaos: no scenario %q (have %s)", cfg.Scenario, strings.Join(ScenarioNames(), ", "))
	}
	if cfg.Backend == "" {
		cfg.Backend = "process"
	}
	switch cfg.Backend {
	case "process":
	case "compose":
		if sc.Failpoints || sc.SmallDisks {
			return nil, fmt.Errorf("chaos: scenario %s needs the process backend (failpoints armed per process, small filesystems mounted per storage node)", sc.Name)
		}
		if (cfg.Meta != 0 && cfg.Meta != 3) || (cfg.Storage != 0 && cfg.Storage != 6) || (cfg.API != 0 && cfg.API != 2) {
			return nil, errors.New("chaos: the compose backend runs deploy/compose.yaml: 3 meta, 6 storage, 2 api nodes")
		}
	default:
		return nil, fmt.Errorf("chaos: backend %q: process or compose", cfg.Backend)
	}
	if cfg.Binary == "" || cfg.Report == "" {
		return nil, errors.New("chaos: RunConfig needs Binary and Report")
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 60 * time.Second
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	if cfg.Meta == 0 {
		cfg.Meta = 3
	}
	if cfg.Storage == 0 {
		cfg.Storage = 6
	}
	if cfg.API == 0 {
		cfg.API = 2
	}
	if cfg.DeadAfter == 0 {
		cfg.DeadAfter = 3 * time.Second
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	rep := &Report{Scenario: sc.Name, Description: sc.Description, Seed: cfg.Seed, Backend: cfg.Backend, Started: time.Now(),
		Failures: []string{}}
	rep.Replay = fmt.Sprintf("strata chaos run --scenario %s --duration %v --seed %d --report %s", sc.Name, cfg.Duration, cfg.Seed, cfg.Report)
	rep.Cluster.Meta, rep.Cluster.Storage, rep.Cluster.API = cfg.Meta, cfg.Storage, cfg.API
	rep.Cluster.DeadAfter = cfg.DeadAfter.String()
	rep.Cluster.M = parityFor(cfg.Storage)
	schedule := Schedule(sc, cfg.Seed, cfg.Duration)
	logf("chaos: scenario %s (%s), seed %d, faults for %v; replay: %s", sc.Name, describeMix(sc), cfg.Seed, cfg.Duration, rep.Replay)

	reportBase := strings.TrimSuffix(cfg.Report, ".json")
	artifacts := reportBase
	if err := os.MkdirAll(filepath.Dir(cfg.Report), 0o750); err != nil {
		return nil, err
	}
	_ = os.RemoveAll(artifacts)
	work := cfg.WorkDir
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "strata-chaos-"+sc.Name+"-"); err != nil {
			return nil, err
		}
	}
	clusterDir := filepath.Join(work, "cluster")
	// Shards deleted from a disk are found by the leader's audit, every
	// --audit-interval (10m by default): the meta nodes get a shorter one,
	// as every node gets --dead-after 3s, so that it runs within the run.
	var metaArgs []string
	if sc.Faults[FaultDeleteShards] > 0 {
		metaArgs = []string{"--audit-interval", AuditInterval.String()}
	}
	var c *Cluster
	var err error
	if cfg.Backend == "compose" {
		audit := "5s"
		if len(metaArgs) > 0 {
			audit = AuditInterval.String()
		}
		metaArgs = nil // given at start, no restart needed
		c, err = StartCompose(ctx, ComposeConfig{Dir: clusterDir, Image: cfg.Image, DeadAfter: cfg.DeadAfter,
			MetaEnv: []string{"STRATA_AUDIT_INTERVAL=" + audit}, Logf: logf}, cfg.Binary)
	} else {
		ccfg := ClusterConfig{Binary: cfg.Binary, Dir: clusterDir, Meta: cfg.Meta, Storage: cfg.Storage,
			API: cfg.API, DeadAfter: cfg.DeadAfter, Logf: logf}
		if sc.Failpoints {
			ccfg.Env = append(ccfg.Env, FailpointEnv...)
		}
		if sc.SmallDisks {
			ccfg.ShardFS = ShardFSSize
		}
		c, err = StartCluster(ctx, ccfg)
	}
	if err != nil {
		return nil, err
	}
	closed, keepCluster := false, false
	defer func() {
		if !closed {
			c.Close()
		}
		if !keepCluster {
			c.Remove()
		}
	}()
	if sc.Failpoints {
		if err := c.CheckFailpoints(ctx); err != nil {
			return nil, fmt.Errorf("%w: %v", errNoFailpoints, err)
		}
	}
	if (sc.Proxies && cfg.Backend == "process") || len(metaArgs) > 0 {
		began := time.Now()
		if err := c.Prepare(ctx, sc.Proxies && cfg.Backend == "process", metaArgs); err != nil {
			return nil, err
		}
		logf("chaos: nodes restarted with their new command lines (proxies %v, meta nodes %v) in %v", sc.Proxies, metaArgs,
			time.Since(began).Round(time.Millisecond))
	}
	frontends := c.Frontends()
	logf("chaos: cluster of %d nodes up in %v; frontends %v", len(c.Nodes()), time.Since(rep.Started).Round(time.Millisecond), frontends)

	// Workloads.
	h := NewHistory()
	h.SetPhase(1)
	budget := int64(cfg.Duration.Seconds() * 3 * mib)
	probe := 100 * time.Millisecond
	if cfg.Duration > 10*time.Minute {
		probe = 250 * time.Millisecond
	}
	wcfg := WorkloadConfig{Frontends: frontends, Pushers: 4, Readers: 2, Seed: cfg.Seed, History: h,
		Prefix: fmt.Sprintf("chaos/%s-%x", sc.Name, cfg.Seed&0xffffff), UploadRate: 4 * mib, MaxLayerSize: 12 * mib,
		TotalBudget: min(budget, 2<<30), ProbeEvery: probe, Collecting: sc.GC, RetryServerErrors: true,
		Logf: func(format string, args ...any) { logf("chaos: workload: "+format, args...) }}
	if sc.GC {
		// Small images: a push that takes longer than the pause between
		// two collections at zero grace would lose the race again and again.
		wcfg.DeleteEvery, wcfg.MaxLayerSize = time.Second, 2*mib
	}
	w := StartWorkload(wcfg)
	workloadStopped := false
	defer func() {
		if !workloadStopped {
			w.Stop()
		}
	}()
	tw, err := StartTagWorkload(ctx, TagConfig{Frontends: frontends, Repo: fmt.Sprintf("chaos/%s-%x-tags", sc.Name, cfg.Seed&0xffffff),
		Seed: cfg.Seed, History: h})
	if err != nil {
		return nil, err
	}
	tagsStopped := false
	defer func() {
		if !tagsStopped {
			tw.Stop()
		}
	}()

	// Warm-up: some pushes acknowledged before the first fault.
	warm := time.Now()
	for h.Acks() < 10 && time.Since(warm) < 30*time.Second && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	if h.Acks() < 10 {
		rep.fail("the workload made no progress before any fault: %d pushes acknowledged in 30s", h.Acks())
	}

	// Faults, the crash watcher and (GC scenarios) the collector loop.
	in := newInjector(c, h, rep.Cluster.M, logf)
	fctx, stopFaults := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Add(1)
	go func() {
		defer bg.Done()
		watchCrashes(fctx, c, logf)
	}()
	gcs := &gcLoop{c: c, logf: logf}
	if sc.GC {
		bg.Add(1)
		go func() {
			defer bg.Done()
			gcs.run(fctx, cfg.Seed)
		}()
	}
	faultStart := time.Now()
	in.run(fctx, schedule, faultStart.Add(cfg.Duration))
	rep.FaultPhaseS = time.Since(faultStart).Seconds()
	stopFaults()
	bg.Wait()
	logf("chaos: fault phase over after %v; healing", time.Since(faultStart).Round(time.Millisecond))

	// Heal: every node running and serving.
	heal(ctx, c, in, logf)
	healed := h.Acks()
	progress := time.Now()
	for h.Acks() < healed+10 && time.Since(progress) < 60*time.Second && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	if n := h.Acks() - healed; n < 10 {
		rep.fail("no progress after the faults were healed: %d pushes acknowledged in 60s", n)
	}
	tw.Stop()
	tagsStopped = true
	w.Stop()
	workloadStopped = true
	logf("chaos: workload stopped: %s", w.Stats())

	// Checks.
	vctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	if sc.GC {
		if err := gcs.final(vctx); err != nil {
			rep.fail("strata gc run --grace 0s after the faults: %v", err)
		}
	}
	snap := h.Snapshot()
	vstart := time.Now()
	rep.Verify = Verify(vctx, NewClient(frontends[0]), snap, VerifyOptions{Parallel: 6, Retries: 5, LiveOnly: sc.GC})
	for _, f := range rep.Verify.Failures {
		rep.fail("final check through %s: %s", frontends[0], f)
	}
	if len(frontends) > 1 {
		q := Verify(vctx, NewClient(frontends[1]), snap, VerifyOptions{Parallel: 6, Retries: 5, LiveOnly: sc.GC, Quick: true})
		for _, f := range q.Failures {
			rep.fail("final check through %s: %s", frontends[1], f)
		}
	}
	logf("chaos: verified %d blobs (%.1f MiB), %d manifests, %d deletions in %v", rep.Verify.AckedBlobs,
		float64(rep.Verify.BlobBytes)/mib, rep.Verify.AckedManifests, rep.Verify.DeletedManifests, time.Since(vstart).Round(time.Millisecond))
	for _, v := range snap.Violations {
		rep.fail("seen by the workload: %s", v)
	}
	rep.Warnings = append(rep.Warnings, snap.Unexpected...)
	rep.Notes = snap.Notes
	rep.ServerErrors.Count = snap.ServerErrorCount
	rep.ServerErrors.Samples = snap.ServerErrors[:min(len(snap.ServerErrors), 20)]
	if n := snap.ServerErrorCount; n > 0 && !cfg.TolerateServerErrors {
		rep.fail("%d answers were HTTP 5xx other than 503 where the design promises 503 UNAVAILABLE and a retry through the election (--tolerate-5xx to pass anyway); the first: %s",
			n, snap.ServerErrors[0])
	}

	tagOps := tw.Ops()
	_ = os.MkdirAll(artifacts, 0o750)
	rep.Linearizability = CheckTagHistory(tagOps, 2*time.Minute, filepath.Join(artifacts, "tag-history.html"))
	switch rep.Linearizability.Result {
	case "ok":
	case "illegal":
		rep.fail("tag history is NOT linearizable (%d operations on %d tags; not linearizable: %s); see %s and tag-*.txt there",
			rep.Linearizability.Operations, rep.Linearizability.Tags, strings.Join(rep.Linearizability.IllegalTags, ", "),
			rep.Linearizability.Visual)
		for i, tag := range rep.Linearizability.IllegalTags {
			if i == 5 {
				break
			}
			_ = os.WriteFile(filepath.Join(artifacts, "tag-"+tag+".txt"), []byte(DescribeTag(tagOps, tag, tw.Started())), 0o640)
		}
	default:
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("linearizability check inconclusive: %s", rep.Linearizability.Result))
	}

	// The scrubbers pass over a disk when their node starts, then rest an
	// hour: corrupted shards that no read needs (parity, replicas) would
	// wait that long. Storage nodes holding such shards are restarted, one
	// at a time, so that their scrubbers look now.
	for _, id := range in.scrubNudge(vctx) {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("restarted %s after the faults so that its scrubber passes over the shards corrupted on it", id))
	}

	// Repair: the cluster's own view, then the ground truth.
	st, raw, waited, rerr := c.WaitRepaired(vctx, 3*time.Minute)
	rep.Repair.WaitedMS, rep.Repair.Status = waited.Milliseconds(), raw
	rep.Repair.Done = rerr == nil
	if rerr != nil {
		rep.Repair.Error = rerr.Error()
		rep.fail("strata storage status --json: %v", rerr)
	}
	_ = st
	dmg := in.Damage(vctx)
	verify := map[string]bool{}
	for _, d := range dmg {
		verify[d.Segment] = true
	}
	// Damaged shards nobody read may take a moment longer to be healed:
	// the audit runs every AuditInterval.
	for deadline := time.Now().Add(time.Minute + 2*AuditInterval); ; {
		open := 0
		for _, d := range dmg {
			if d.Healed.IsZero() {
				open++
			}
		}
		if open == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Second)
		dmg = in.Damage(vctx)
	}
	rep.Repair.Damage = dmg
	for _, d := range dmg {
		if d.Healed.IsZero() {
			rep.fail("shard %s.%d of %s on %s (%s at %s) was never repaired", d.Segment, d.Index, d.Digest, d.Node,
				d.Kind, d.At.Format(time.RFC3339Nano))
		}
	}
	var digests []string
	blobs := snap.AckedBlobs
	if sc.GC {
		blobs = snap.LiveBlobs()
	}
	for _, b := range blobs {
		digests = append(digests, b.Blob.Digest)
	}
	rstart := time.Now()
	rep.Repair.Redundancy = c.CheckRedundancy(vctx, digests, verify, 300, cfg.Seed)
	for _, b := range rep.Repair.Redundancy.BelowFull {
		rep.fail("below full redundancy after repair: %s", b)
	}
	for _, e := range rep.Repair.Redundancy.Errors {
		rep.fail("redundancy check: %s", e)
	}
	logf("chaos: redundancy of %d blobs, %d segments, %d shards (%d read in full) checked in %v", rep.Repair.Redundancy.Blobs,
		rep.Repair.Redundancy.Segments, rep.Repair.Redundancy.Shards, rep.Repair.Redundancy.Verified, time.Since(rstart).Round(time.Millisecond))

	// Crashes and the nodes' own complaints.
	for _, crash := range c.CheckAlive() {
		rep.fail("%s", crash)
	}
	for id, lines := range c.LogProblems() {
		for i, l := range lines {
			if i == 10 {
				rep.fail("%s's log: ... and %d more", id, len(lines)-10)
				break
			}
			rep.fail("%s's log: %s", id, l)
		}
	}
	in.mu.Lock()
	for _, f := range in.failures {
		rep.fail("%s", f)
	}
	in.mu.Unlock()

	// Every meta node's own copy of the metadata, from its disk.
	c.Close()
	closed = true
	rep.Replicas = CheckReplicas(c.Backend(), c.IDs(RoleMeta), snap, sc.GC)
	for _, f := range rep.Replicas.failures() {
		rep.fail("%s", f)
	}

	// Counts.
	rep.Faults.Events = in.Events()
	rep.Faults.ByKind = map[FaultKind]int{}
	for _, ev := range rep.Faults.Events {
		switch {
		case ev.Error != "":
			rep.Faults.Errors++
		case len(ev.Targets) == 0:
			rep.Faults.Skipped++
			continue
		}
		rep.Faults.Injected++
		rep.Faults.ByKind[ev.Kind]++
	}
	rep.Faults.Unavail = unavailability(rep.Faults.Events, h.AckTimes())
	if n := c.Net(); n != nil {
		st := n.Stats()
		rep.Net = &st
		if st.Cuts > 0 && st.Refused+st.Severed == 0 {
			rep.fail("the proxy layer cut %d links but no connection was refused or severed: partitions did not happen", st.Cuts)
		}
	}
	rep.Operations.Counters = w.Counters()
	rep.Operations.BlobsAcked, rep.Operations.ManifestsAcked = len(snap.AckedBlobs), len(snap.AckedManifests)
	rep.Operations.BlobsAttempted = len(snap.AckedBlobs) + len(snap.AttemptedBlobs)
	rep.Operations.ManifestsAttempted = len(snap.AckedManifests) + len(snap.AttemptedMans) + len(snap.DeletedMans) + len(snap.DeletingMans)
	rep.Operations.ManifestsAcked += len(snap.DeletedMans) + len(snap.DeletingMans)
	rep.Operations.TagOps = len(tagOps)
	rep.Operations.GCRuns, rep.Operations.GCFailed, rep.Operations.GCBlobsCollected = gcs.counts()
	for _, e := range gcs.errs {
		rep.Warnings = append(rep.Warnings, "gc run during the faults: "+e)
	}
	rep.Acknowledged = rep.Operations.BlobsAcked + rep.Operations.ManifestsAcked + len(snap.DeletedMans) +
		rep.Linearizability.Puts + rep.Linearizability.Deletes
	for _, f := range rep.Failures {
		if strings.Contains(f, "LOST ACKNOWLEDGED") {
			rep.Lost++
		}
	}
	rep.Pass = len(rep.Failures) == 0

	// Artifacts: histories and logs of a failed run, for the post-mortem.
	keep := !rep.Pass || cfg.Keep
	if keep {
		if err := writeJSON(filepath.Join(artifacts, "history.json"), struct {
			Seed     uint64       `json:"seed"`
			Schedule []Fault      `json:"schedule"`
			Workload Snapshot     `json:"workload"`
			AckTimes []string     `json:"-"`
			Damage   []damage     `json:"damaged_shards"`
			Faults   []FaultEvent `json:"faults"`
		}{Seed: cfg.Seed, Schedule: schedule, Workload: snap, Damage: dmg, Faults: rep.Faults.Events}); err != nil {
			rep.Warnings = append(rep.Warnings, "writing history.json: "+err.Error())
		}
		if err := writeJSON(filepath.Join(artifacts, "tag-history.json"), struct {
			Started time.Time `json:"started"` // operation times count from here
			Ops     []TagOp   `json:"ops"`
		}{tw.Started(), tagOps}); err != nil {
			rep.Warnings = append(rep.Warnings, "writing tag-history.json: "+err.Error())
		}
	}
	keepCluster = keep
	if keep {
		if err := c.CopyLogs(filepath.Join(artifacts, "logs")); err != nil {
			rep.Warnings = append(rep.Warnings, "copying logs: "+err.Error())
		}
		rep.Artifacts = artifacts
		rep.Cluster.Dir = clusterDir
		if cb, ok := c.Backend().(*composeBackend); ok {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("the compose project %s is kept (stopped, with its volumes); remove it with: %s -f %s -p %s down -v",
				cb.cfg.Project, strings.Join(cb.compose, " "), filepath.Join(clusterDir, "compose.yaml"), cb.cfg.Project))
		}
	} else {
		c.Remove() // before its files go
		_ = os.RemoveAll(artifacts)
		if cfg.WorkDir == "" {
			_ = os.RemoveAll(work)
		} else {
			_ = os.RemoveAll(clusterDir)
		}
	}
	rep.Ended = time.Now()
	rep.Seconds = rep.Ended.Sub(rep.Started).Seconds()
	if err := writeJSON(cfg.Report, rep); err != nil {
		return rep, err
	}
	if err := os.WriteFile(reportBase+".txt", []byte(rep.Summary()), 0o640); err != nil {
		return rep, err
	}
	return rep, nil
}

// AuditInterval is the --audit-interval of the meta nodes in scenarios
// that delete shard files.
const AuditInterval = 15 * time.Second

// parityFor is the parity shards m of the erasure geometry the cluster
// picks for n storage nodes (docs/ARCHITECTURE.md): 4+2 from six, 2+1 from
// three, 1+1 on two.
func parityFor(n int) int {
	switch {
	case n >= 6:
		return 2
	case n >= 2:
		return 1
	}
	return 0
}

// watchCrashes checks every second for nodes that died on their own; each
// is logged (the run fails on it) and started again so the run goes on.
func watchCrashes(ctx context.Context, c *Cluster, logf func(string, ...any)) {
	seen := 0
	for ctx.Err() == nil {
		sleepCtx(ctx, time.Second)
		crashes := c.CheckAlive()
		for _, cr := range crashes[seen:] {
			logf("chaos: CRASH: %s", firstLine(cr))
		}
		seen = len(crashes)
		for _, id := range c.IDs("") {
			if c.State(id) == NodeCrashed {
				if err := c.Restart(id); err != nil {
					logf("chaos: restarting crashed %s: %v", id, err)
				}
			}
		}
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// heal heals cut links, resumes paused nodes, starts stopped ones and
// waits until every node serves.
func heal(ctx context.Context, c *Cluster, in *injector, logf func(string, ...any)) {
	if err := c.Heal(); err != nil {
		in.fail("healing: links: %v", err)
	}
	for _, id := range c.IDs("") {
		switch c.State(id) {
		case NodePaused:
			if err := c.Resume(id); err != nil {
				in.fail("healing: resuming %s: %v", id, err)
			}
		case NodeKilled, NodeCrashed:
			if err := c.Restart(id); err != nil {
				in.fail("healing: restarting %s: %v", id, err)
			}
		}
	}
	began := time.Now()
	_ = in.waitUp(ctx, c.IDs(""))
	logf("chaos: every node serves (%v)", time.Since(began).Round(time.Millisecond))
}

// unavailability computes, per fault kind, the time from each fault to the
// first push acknowledged after it.
func unavailability(events []FaultEvent, acks []time.Time) map[FaultKind]Unavailability {
	out := map[FaultKind]Unavailability{}
	sums := map[FaultKind]float64{}
	for i := range events {
		ev := &events[i]
		if len(ev.Targets) == 0 {
			ev.UnavailableMS = -1
			continue
		}
		u := out[ev.Kind]
		u.Faults++
		j, _ := slices.BinarySearchFunc(acks, ev.Start, func(a, t time.Time) int {
			if a.After(t) {
				return 1
			}
			return -1
		})
		if j >= len(acks) {
			ev.UnavailableMS = -1
			u.NoPushAfter++
		} else {
			ev.UnavailableMS = msOf(acks[j].Sub(ev.Start))
			u.MaxMS = max(u.MaxMS, ev.UnavailableMS)
			sums[ev.Kind] += ev.UnavailableMS
		}
		out[ev.Kind] = u
	}
	for k, u := range out {
		if n := u.Faults - u.NoPushAfter; n > 0 {
			u.MeanMS = float64(int64(sums[k]/float64(n)*10)) / 10
		}
		out[k] = u
	}
	return out
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()/100) / 10 }

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o640)
}

// gcLoop runs `strata gc run --grace 0s` through a running frontend every
// few seconds.
type gcLoop struct {
	c    *Cluster
	logf func(string, ...any)

	mu                  sync.Mutex
	runs, failed, blobs int
	errs                []string // the first few failures
}

func (g *gcLoop) counts() (runs, failed, blobs int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.runs, g.failed, g.blobs
}

func (g *gcLoop) run(ctx context.Context, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0x6c))
	for {
		if !sleepUntil(ctx, time.Now().Add(4*time.Second+time.Duration(r.Int64N(int64(5*time.Second))))) {
			return
		}
		if _, err := g.once(ctx); err != nil && ctx.Err() == nil {
			g.logf("chaos: gc run during faults: %v", err)
		}
	}
}

// final runs the collector once more after the faults, up to 3 times
// until it succeeds.
func (g *gcLoop) final(ctx context.Context) error {
	var err error
	for i := 0; i < 3; i++ {
		var n int
		if n, err = g.once(ctx); err == nil {
			g.logf("chaos: final gc run collected %d blobs", n)
			return nil
		}
		sleepCtx(ctx, 2*time.Second)
	}
	return err
}

func (g *gcLoop) once(ctx context.Context) (int, error) {
	var fe string
	for _, n := range g.c.Nodes() {
		if n.HTTP != "" && g.c.State(n.ID) == NodeRunning {
			fe = n.HTTP
			break
		}
	}
	if fe == "" {
		return 0, errors.New("no frontend running")
	}
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	out, err := g.c.Strata(cctx, "gc", "run", "--grace", "0s", "--wait", "--json", "--server", fe, "--timeout", "60s")
	var st struct {
		Blobs int64  `json:"blobs_collected"`
		Error string `json:"error"`
	}
	if err == nil {
		if jerr := json.Unmarshal(out, &st); jerr != nil {
			err = fmt.Errorf("gc run --json: %w: %.200s", jerr, out)
		} else if st.Error != "" {
			err = fmt.Errorf("the run had errors: %s", st.Error)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.runs++
	g.blobs += int(st.Blobs)
	if err != nil {
		g.failed++
		if len(g.errs) < 5 {
			msg := firstLine(err.Error())
			if len(msg) > 300 {
				msg = msg[:300] + " [...]"
			}
			g.errs = append(g.errs, time.Now().Format("15:04:05.000")+" "+msg)
		}
	}
	return int(st.Blobs), err
}
