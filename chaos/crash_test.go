package chaos_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/strata-registry/strata/chaos"
)

func TestMain(m *testing.M) {
	code := m.Run()
	chaos.CleanupBinary()
	os.Exit(code)
}

const (
	// kills is how many SIGKILL/restart cycles TestCrashDuringConcurrentPushes runs.
	kills = 3
	// uploadRate caps the pushers' bytes per second together: uploads of
	// several MiB then take seconds, so kills land in the middle of them.
	uploadRate = 32 << 20
	// phaseBudget bounds the layer bytes the pushers start between two
	// kills: the kills+1 phases start at most 384 MiB of layers, typically
	// about half of that (retries after a kill send some of it again).
	phaseBudget = 96 << 20
	// minPhaseAcks is how many acknowledged operations a phase must have
	// before its kill.
	minPhaseAcks = 8
)

// TestCrashDuringConcurrentPushes SIGKILLs the server at random moments
// while eight clients push images with every upload style, restarts it on
// the same data directory, and holds it to everything it acknowledged:
// after each restart every acknowledged blob, manifest and tag must still be
// there, and at the end every acknowledged byte must read back identical,
// while everything sent but never acknowledged must be absent or exactly
// right.
func TestCrashDuringConcurrentPushes(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test: builds the server and pushes a few hundred MiB")
	}
	began := time.Now()
	seed := chaos.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 42))
	srv := chaos.StartProcess(t, chaos.ProcessConfig{DataDir: chaos.KeepOnFailureDir(t, "data")})

	h := chaos.NewHistory()
	h.SetPhase(1)
	w := chaos.StartWorkload(chaos.WorkloadConfig{
		BaseURL: srv.URL(), Pushers: 8, Seed: seed, PhaseBudget: phaseBudget, UploadRate: uploadRate, History: h,
		Prefix: fmt.Sprintf("chaos/crash-%x", seed&0xffffff),
		Logf:   t.Logf,
	})
	workloadStopped := false
	defer func() {
		if !workloadStopped {
			w.Stop()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	checker := chaos.NewClient(srv.URL())

	for cycle := 1; cycle <= kills; cycle++ {
		start := time.Now()
		// Kill 1-3s into the phase, once something was acknowledged in it,
		// at a moment when uploads are in flight.
		after := time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))
		for {
			el := time.Since(start)
			if el >= after && h.PhaseAcks() >= minPhaseAcks && (h.InFlight() > 0 || el > after+5*time.Second) {
				break
			}
			if err := srv.CheckAlive(); err != nil {
				t.Fatal(err)
			}
			if el > 60*time.Second {
				t.Fatalf("cycle %d: no progress after %v: %d acknowledged operations in this phase; %s",
					cycle, el, h.PhaseAcks(), w.Stats())
			}
			time.Sleep(time.Millisecond)
		}
		inflight, phaseAcks := h.InFlight(), h.PhaseAcks()
		srv.Kill()
		h.SetPhase(cycle + 1)
		// Everything acknowledged before the kill, and what was in flight.
		beforeKill := h.Snapshot()
		t.Logf("cycle %d: SIGKILL %v into the phase with %d uploads in flight; %d operations acknowledged in the phase, %d in all; %s",
			cycle, time.Since(start).Round(time.Millisecond), inflight, phaseAcks, h.Acks(), w.Stats())
		// The clients keep knocking on a dead port for a moment.
		time.Sleep(time.Duration(rng.Int64N(int64(300 * time.Millisecond))))
		srv.Restart()
		rep := chaos.Verify(ctx, checker, beforeKill, chaos.VerifyOptions{Quick: true})
		t.Logf("cycle %d: after restart, %d acknowledged blobs, %d manifests in %d repositories all still there: %v; "+
			"of %d blobs and %d manifests unacknowledged at the kill, %d blobs found stored correctly, %d absent",
			cycle, rep.AckedBlobs, rep.AckedManifests, rep.Repos, len(rep.Failures) == 0,
			len(beforeKill.AttemptedBlobs), len(beforeKill.AttemptedMans), rep.UnackedPresent, rep.UnackedAbsent)
		reportFailures(t, fmt.Sprintf("after restart %d", cycle), rep.Failures)
	}

	// Pushes go on after the last restart, and must succeed.
	start := time.Now()
	for h.PhaseAcks() < 2*minPhaseAcks || time.Since(start) < time.Second {
		if err := srv.CheckAlive(); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("no progress after the last restart: %d acknowledged operations in %v", h.PhaseAcks(), time.Since(start))
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.Stop()
	workloadStopped = true
	if err := srv.CheckAlive(); err != nil {
		t.Fatal(err)
	}
	t.Logf("workload stopped: %s", w.Stats())

	snap := h.Snapshot()
	reportFailures(t, "seen by the workload", snap.Violations)
	reportFailures(t, "unexpected error answers to the workload", snap.Unexpected)
	logNotes(t, snap.Notes)

	vstart := time.Now()
	rep := chaos.Verify(ctx, checker, snap, chaos.VerifyOptions{})
	t.Logf("verified %d acknowledged blobs (%.1f MiB, styles %s), %d acknowledged manifests and tags in %d repositories, "+
		"%d unacknowledged blobs and %d manifests (%d found stored correctly, %d absent) in %v",
		rep.AckedBlobs, float64(rep.BlobBytes)/(1<<20), styleCounts(snap), rep.AckedManifests, rep.Repos,
		len(snap.AttemptedBlobs), len(snap.AttemptedMans), rep.UnackedPresent, rep.UnackedAbsent,
		time.Since(vstart).Round(time.Millisecond))
	reportFailures(t, "final check", rep.Failures)
	if rep.AckedManifests < kills*minPhaseAcks/3 {
		t.Errorf("only %d manifests were acknowledged: the workload did not really run", rep.AckedManifests)
	}

	// A clean stop and start must keep everything too.
	srv.Stop()
	srv.Restart()
	rep = chaos.Verify(ctx, checker, snap, chaos.VerifyOptions{Quick: true})
	reportFailures(t, "after a clean restart", rep.Failures)
	if p := srv.LogProblems(); len(p) > 0 {
		t.Errorf("the server log shows crashes of its own:\n%s", strings.Join(p, "\n"))
	}
	t.Logf("done in %v", time.Since(began).Round(time.Millisecond))
}

// reportFailures fails t with up to 30 of failures.
func reportFailures(t *testing.T, when string, failures []string) {
	t.Helper()
	for i, f := range failures {
		if i == 30 {
			t.Errorf("%s: ... and %d more", when, len(failures)-30)
			break
		}
		t.Errorf("%s: %s", when, f)
	}
}

func logNotes(t *testing.T, notes map[string]int) {
	var keys []string
	for k := range notes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("note: %s: %d", k, notes[k])
	}
}

func styleCounts(s chaos.Snapshot) string {
	n := map[string]int{}
	for _, b := range s.AckedBlobs {
		n[b.Style]++
	}
	var parts []string
	for k, v := range n {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func bytesContains(b []byte, s string) bool { return bytes.Contains(b, []byte(s)) }
