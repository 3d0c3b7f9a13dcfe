package chaos_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strata-registry/strata/chaos"
)

// ScenariosEnv names the environment variable that turns on
// TestChaosScenarios: a comma-separated list of scenarios (or "all"). Each
// starts an 11-node dev cluster and runs for STRATA_CHAOS_DURATION (default
// 45s), so they are not part of a plain `go test ./...`; `make chaos-quick`
// and `make chaos` run them through `strata chaos run`.
const ScenariosEnv = "STRATA_CHAOS_SCENARIOS"

func TestChaosScenarios(t *testing.T) {
	list := os.Getenv(ScenariosEnv)
	if list == "" || testing.Short() {
		t.Skipf("multi-node chaos scenarios: set %s=leader-kill,storage-kill,... or all", ScenariosEnv)
	}
	names := strings.Split(list, ",")
	if list == "all" {
		names = chaos.ScenarioNames()
	}
	d := 45 * time.Second
	if s := os.Getenv("STRATA_CHAOS_DURATION"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			t.Fatalf("STRATA_CHAOS_DURATION: %v", err)
		}
	}
	var seed uint64
	if s := os.Getenv(chaos.SeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", chaos.SeedEnv, err)
		}
	}
	bin := chaos.Binary(t)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			dir := chaos.KeepOnFailureDir(t, "report")
			rep, err := chaos.Run(context.Background(), chaos.RunConfig{Scenario: name, Duration: d, Seed: seed, Binary: bin,
				Report: filepath.Join(dir, name+".json"), Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			t.Log("\n" + rep.Summary())
			if !rep.Pass {
				t.Errorf("%d invariant violations; report in %s", len(rep.Failures), dir)
			}
		})
	}
}
