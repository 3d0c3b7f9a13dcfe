package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// `strata dev failover-bench` measures how long the cluster refuses writes
// when its Raft leader dies: it starts a dev cluster, and in each run finds
// the leader (the cluster's gRPC Status), SIGKILLs it, and pushes a small
// blob in one request (POST ...?digest=) through the frontends in turn every
// --interval until one is acknowledged with 201. The time from the kill to
// that acknowledgement is the run's recovery time. The killed node is then
// started again with the same command line and the cluster is allowed to
// settle before the next run.

type failoverBenchOptions struct {
	runs     int
	interval time.Duration
	timeout  time.Duration
	settle   time.Duration
	size     int
	keep     bool
	cluster  devClusterConfig
}

// failoverRun is one run, printed as a JSON line.
type failoverRun struct {
	Run        int     `json:"run"`
	Killed     string  `json:"killed"`
	NewLeader  string  `json:"new_leader,omitempty"`
	RecoveryMS float64 `json:"recovery_ms"`
	Attempts   int     `json:"attempts"` // pushes started until the first 201
	Refused    int     `json:"refused"`  // pushes that failed before it
	Frontend   string  `json:"frontend"` // the one that acknowledged first
	LastError  string  `json:"last_error,omitempty"`
	RejoinMS   float64 `json:"rejoin_ms"` // from the restart to a healthy cluster
}

// failoverSummary is the final JSON line.
type failoverSummary struct {
	Runs       int           `json:"runs"`
	RecoveryMS []float64     `json:"recovery_ms"`
	MedianMS   float64       `json:"median_ms"`
	P90MS      float64       `json:"p90_ms"`
	MinMS      float64       `json:"min_ms"`
	MaxMS      float64       `json:"max_ms"`
	Interval   string        `json:"push_interval"`
	Geometry   string        `json:"nodes"`
	Failed     int           `json:"failed_runs"`
	Details    []failoverRun `json:"details,omitempty"`
}

func newFailoverBenchCmd() *cobra.Command {
	o := &failoverBenchOptions{}
	cmd := &cobra.Command{
		Use:    "failover-bench",
		Short:  "Measure write unavailability when the Raft leader is SIGKILLed (dev cluster)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			errOut := cmd.ErrOrStderr()
			o.cluster.Logf = func(format string, args ...any) { fmt.Fprintf(errOut, format+"\n", args...) }
			return runFailoverBench(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.runs, "runs", 10, "leader kills")
	f.DurationVar(&o.interval, "interval", 20*time.Millisecond, "start a push this often until one is acknowledged")
	f.DurationVar(&o.timeout, "timeout", 60*time.Second, "give up on a run after this long")
	f.DurationVar(&o.settle, "settle", 2*time.Second, "wait this long after the cluster is healthy again before the next kill")
	f.IntVar(&o.size, "size", 1024, "bytes per pushed blob")
	f.BoolVar(&o.keep, "keep", false, "keep the cluster's directory (always kept when --dir is given)")
	f.IntVar(&o.cluster.Meta, "meta", 3, "meta nodes")
	f.IntVar(&o.cluster.Storage, "storage", 3, "storage nodes")
	f.IntVar(&o.cluster.API, "api", 2, "api frontends")
	f.StringVar(&o.cluster.Dir, "dir", "", "directory of the dev cluster (default: a temporary one, removed afterwards)")
	f.DurationVar(&o.cluster.DeadAfter, "dead-after", 0, "passed to every node")
	f.StringVar(&o.cluster.LogLevel, "log-level", "", "passed to every node")
	return cmd
}

func runFailoverBench(ctx context.Context, o *failoverBenchOptions, out io.Writer) error {
	if o.runs < 1 {
		return errors.New("--runs must be at least 1")
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logf := o.cluster.Logf
	if o.cluster.Dir == "" {
		d, err := os.MkdirTemp("", "strata-failover-")
		if err != nil {
			return err
		}
		o.cluster.Dir = d
		if !o.keep {
			defer os.RemoveAll(d)
		}
	}
	if abs, err := filepath.Abs(o.cluster.Dir); err == nil {
		o.cluster.Dir = abs
	}
	logf("failover-bench: starting a dev cluster (%d meta, %d storage, %d api) in %s",
		o.cluster.Meta, o.cluster.Storage, o.cluster.API, o.cluster.Dir)
	c, err := startDevCluster(ctx, o.cluster)
	if err != nil {
		return err
	}
	defer c.Stop()
	frontends := c.Frontends()
	if len(frontends) == 0 {
		return errors.New("failover-bench: the cluster has no frontend")
	}
	enc := json.NewEncoder(out)
	sum := failoverSummary{Interval: o.interval.String(),
		Geometry: fmt.Sprintf("%d meta, %d storage, %d api", o.cluster.Meta, o.cluster.Storage, o.cluster.API)}
	for i := 1; i <= o.runs && ctx.Err() == nil; i++ {
		r, err := failoverOnce(ctx, c, o, frontends)
		r.Run = i
		if err != nil {
			sum.Failed++
			logf("failover-bench: run %d: %v", i, err)
			if r.Killed == "" { // the cluster is not usable: stop here
				return err
			}
		} else {
			sum.RecoveryMS = append(sum.RecoveryMS, r.RecoveryMS)
		}
		sum.Details = append(sum.Details, r)
		logf("failover-bench: run %d: killed leader %s, first 201 after %.0f ms via %s (%d pushes, %d refused); new leader %s; rejoined in %.0f ms",
			i, r.Killed, r.RecoveryMS, r.Frontend, r.Attempts, r.Refused, r.NewLeader, r.RejoinMS)
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	sum.Runs = len(sum.Details)
	if len(sum.RecoveryMS) > 0 {
		s := slices.Sorted(slices.Values(sum.RecoveryMS))
		sum.MedianMS, sum.P90MS = percentile(s, 50), percentile(s, 90)
		sum.MinMS, sum.MaxMS = s[0], s[len(s)-1]
	}
	sum.Details = nil // already printed run by run
	if err := enc.Encode(sum); err != nil {
		return err
	}
	if sum.Failed > 0 {
		return fmt.Errorf("failover-bench: %d of %d runs did not recover within %s", sum.Failed, sum.Runs, o.timeout)
	}
	return nil
}

// percentile of sorted values, by linear interpolation between ranks.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 1 {
		return sorted[0]
	}
	rank := p / 100 * float64(len(sorted)-1)
	lo := int(math.Floor(rank))
	hi := min(lo+1, len(sorted)-1)
	return round1(sorted[lo] + (rank-float64(lo))*(sorted[hi]-sorted[lo]))
}

func round1(ms float64) float64 { return math.Round(ms*10) / 10 }

func msOf(d time.Duration) float64 { return round1(float64(d) / float64(time.Millisecond)) }

// failoverOnce kills the leader, measures the time to the first
// acknowledged push, restarts the node and waits for the cluster to settle.
func failoverOnce(ctx context.Context, c *devCluster, o *failoverBenchOptions, frontends []string) (failoverRun, error) {
	var r failoverRun
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	leader, err := waitFor(lctx, func(ctx context.Context) (string, error) { return c.Leader(ctx) })
	cancel()
	if err != nil {
		return r, fmt.Errorf("finding the leader: %w", err)
	}
	r.Killed = leader

	killed := time.Now()
	if err := c.Kill(leader, syscall.SIGKILL); err != nil {
		return r, err
	}
	first, err := pushUntilAcked(ctx, o, frontends, &r)
	if err == nil {
		r.RecoveryMS = msOf(first.Sub(killed))
	}

	// Bring the node back, and let the cluster settle before the next run.
	restarted := time.Now()
	if rerr := c.Restart(leader); rerr != nil {
		return r, errors.Join(err, rerr)
	}
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	p, _ := c.proc(leader)
	if _, herr := waitFor(hctx, func(context.Context) (bool, error) {
		if !c.running(p) {
			return false, fmt.Errorf("node %s exited after its restart", leader)
		}
		if !startedSinceLastRun(c.logPath(p)) {
			return false, errors.New("not rejoined yet")
		}
		return true, nil
	}); herr != nil {
		return r, errors.Join(err, fmt.Errorf("restarting %s: %w; end of its log:\n%s", leader, herr, logTail(c.logPath(p), 20)))
	}
	if herr := c.WaitHealthy(hctx); herr != nil {
		return r, errors.Join(err, herr)
	}
	r.RejoinMS = msOf(time.Since(restarted))
	if nl, lerr := c.Leader(hctx); lerr == nil {
		r.NewLeader = nl
	}
	select {
	case <-ctx.Done():
	case <-time.After(o.settle):
	}
	return r, err
}

// startedSinceLastRun reports whether a node's log shows it started (joined
// and registered) after the last command line the dev cluster wrote into it.
func startedSinceLastRun(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndex(s, "=== "); i >= 0 {
		s = s[i:]
	}
	return strings.Contains(s, "strata node started")
}

// pushUntilAcked starts a push of a new random blob every o.interval,
// through the frontends in turn, and returns when the first is acknowledged.
func pushUntilAcked(ctx context.Context, o *failoverBenchOptions, frontends []string, r *failoverRun) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	type result struct {
		at       time.Time
		frontend string
		err      error
	}
	results := make(chan result, 64)
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	inflight := 0
	defer func() { // let every push end before returning
		cancel()
		for ; inflight > 0; inflight-- {
			<-results
		}
	}()
	launch := func() {
		fe := frontends[r.Attempts%len(frontends)]
		r.Attempts++
		inflight++
		data := make([]byte, o.size)
		_, _ = rand.Read(data)
		go func() {
			pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
			defer pcancel()
			err := pushBlob(pctx, fe, "failover-bench", data)
			results <- result{at: time.Now(), frontend: fe, err: err}
		}()
	}
	launch()
	for {
		select {
		case res := <-results:
			inflight--
			if res.err == nil {
				r.Frontend = res.frontend
				return res.at, nil
			}
			r.Refused++
			r.LastError = res.err.Error()
		case <-tick.C:
			if inflight < 500 {
				launch()
			}
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("no push acknowledged within %s (%d tried; last error: %s)", o.timeout, r.Attempts, r.LastError)
		}
	}
}

// waitFor polls f every 50ms until it succeeds or ctx ends.
func waitFor[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		v, err := f(cctx)
		cancel()
		if err == nil {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
