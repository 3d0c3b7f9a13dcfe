package chaos_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/strata-registry/strata/chaos"
)

// TestFailpointScenario runs the failpoints scenario of `strata chaos run`
// against an 11-node cluster of the failpoints binary for 45s (with the
// seed's schedule, every kind of failpoint crash happens): a frontend
// crashing between the shards of a blob and its commit, the leader crashing
// in the middle of a repair, a meta node crashing in the middle of a
// snapshot install. Nothing acknowledged may be lost (on any replica),
// every segment must be back to k+m, and each kind must have fired.
func TestFailpointScenario(t *testing.T) {
	slowFailpointTests(t)
	seed := uint64(7) // its schedule holds every kind of failpoint crash
	if s := os.Getenv(chaos.SeedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = v
	}
	dir := chaos.KeepOnFailureDir(t, "report")
	rep, err := chaos.Run(context.Background(), chaos.RunConfig{Scenario: "failpoints", Duration: 45 * time.Second, Seed: seed,
		Binary: chaos.FailpointBinary(t), Report: filepath.Join(dir, "failpoints.json"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.Summary())
	if !rep.Pass {
		t.Errorf("%d invariant violations; report in %s", len(rep.Failures), dir)
	}
	if rep.Lost != 0 {
		t.Errorf("%d acknowledged writes lost", rep.Lost)
	}
	if !rep.Replicas.Checked {
		t.Errorf("the replicas were not checked: %s", rep.Replicas.Why)
	}
	fired := map[chaos.FaultKind]int{}
	for _, ev := range rep.Faults.Events {
		if ev.Error == "" && len(ev.Targets) > 0 {
			fired[ev.Kind]++
		}
	}
	for _, k := range []chaos.FaultKind{chaos.FaultCrashBeforeCommit, chaos.FaultCrashInRepair, chaos.FaultCrashInSnapshot} {
		if fired[k] == 0 {
			t.Errorf("no %s fault fired (seed %d): %v", k, seed, fired)
		}
	}
}
