package chaos_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/strata-registry/strata/chaos"
)

// ComposeEnv turns on TestComposeBackend: STRATA_CHAOS_COMPOSE=1 runs it
// (and fails without Docker); otherwise it is skipped, so that a plain
// `go test ./...` stays fast (make chaos-compose runs the same scenario
// through strata chaos run).
const ComposeEnv = "STRATA_CHAOS_COMPOSE"

// TestComposeBackend runs the kill-and-cut scenario for 60s with the
// compose backend: deploy/compose.yaml as containers of the images `make
// image` builds (here, unless STRATA_COMPOSE_NO_BUILD=1), the Raft leader
// and storage nodes killed with docker kill -s KILL, nodes cut off the
// network with docker network disconnect. The seed's schedule holds every
// kind. Nothing acknowledged may be lost and every check must pass.
func TestComposeBackend(t *testing.T) {
	if testing.Short() || os.Getenv(ComposeEnv) != "1" {
		t.Skipf("the compose backend: %s=1 (needs Docker with compose; about 3 minutes)", ComposeEnv)
	}
	if _, err := chaos.ComposeCommand(); err != nil {
		t.Fatal(err)
	}
	bin := chaos.Binary(t)
	if os.Getenv("STRATA_COMPOSE_NO_BUILD") != "1" {
		root, _ := filepath.Abs("..")
		out, err := exec.Command("make", "-C", root, "image", "IMAGE_BUILD_DIR="+t.TempDir()).CombinedOutput()
		if err != nil {
			t.Fatalf("make image: %v\n%s", err, out)
		}
	}
	seed := uint64(10) // partition-storage, partition-leader, storage-kill, leader-kill first
	if s := os.Getenv(chaos.SeedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = v
	}
	dir := chaos.KeepOnFailureDir(t, "report")
	rep, err := chaos.Run(context.Background(), chaos.RunConfig{Backend: "compose", Scenario: "kill-and-cut", Duration: 60 * time.Second,
		Seed: seed, Binary: bin, Report: filepath.Join(dir, "kill-and-cut.json"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.Summary())
	if rep.Backend != "compose" {
		t.Errorf("backend %q", rep.Backend)
	}
	if !rep.Pass {
		t.Errorf("%d invariant violations; report in %s", len(rep.Failures), dir)
	}
	if rep.Lost != 0 {
		t.Errorf("%d acknowledged writes lost", rep.Lost)
	}
	if rep.Acknowledged == 0 || rep.Faults.Injected == 0 {
		t.Errorf("%d writes acknowledged, %d faults injected", rep.Acknowledged, rep.Faults.Injected)
	}
	for _, k := range []chaos.FaultKind{chaos.FaultLeaderKill, chaos.FaultStorageKill} {
		if rep.Faults.ByKind[k] == 0 {
			t.Errorf("no %s injected: %v", k, rep.Faults.ByKind)
		}
	}
	if rep.Faults.ByKind[chaos.FaultPartitionStorage]+rep.Faults.ByKind[chaos.FaultPartitionLeader] == 0 {
		t.Errorf("no partition injected: %v", rep.Faults.ByKind)
	}
}
