package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-registry/strata/chaos"
)

// `strata chaos run` runs one scenario of the chaos suite (package chaos)
// against a local multi-process cluster that `strata dev cluster` starts:
// concurrent OCI clients push, pull, move tags and delete while faults are
// injected on a schedule drawn from --seed; afterwards every invariant is
// checked and a report is written.

func newChaosCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "chaos",
		Short: "Kill anything, lose nothing: run the chaos suite against a local cluster",
	}
	cmd.AddCommand(newChaosRunCmd(), newChaosListCmd())
	return cmd
}

func newChaosRunCmd() *cobra.Command {
	cfg := chaos.RunConfig{}
	var quiet bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run one chaos scenario and check every invariant",
		Long: `Run one chaos scenario against a local cluster.

The cluster is "strata dev cluster --meta 3 --storage 6 --api 2 --dead-after 3s"
in a temporary directory, driven through its cluster.json; with --backend
compose it is deploy/compose.yaml (the same 3, 6 and 2 nodes) as containers of
the images "make image" builds, and faults are docker kill, docker stop/start,
docker pause/unpause and docker network disconnect/connect. Concurrent OCI
clients push multi-layer images (shared layers, every upload style, some with
go-containerregistry), pull them back with digest checks, move and read tags
through different frontends and (GC scenarios) delete images, while the
scenario's faults are injected for --duration: SIGKILL of the leader, of meta
nodes, of up to m storage nodes; SIGSTOP pauses; partitions (SIGSTOP of the
side cut off); corrupted and deleted shard files; rolling restarts;
"strata gc run --grace 0s".

Then the cluster is healed and checked: every acknowledged push reads back
byte-identical, no read ever returned bytes that do not match their digest,
the tag history is linearizable (porcupine), repair brings every segment back
to k+m shards, nothing crashed. The JSON report goes to --report, a summary
next to it (.txt) and to stdout; a failed run keeps its histories and every
node's log in a directory named like the report. The exit status is 1 when an
invariant was broken. --seed replays a run's schedule and choices.`,
		Example: `  strata chaos run --scenario leader-kill --duration 60s --report chaos-results/leader-kill.json
  strata chaos run --scenario mixed --duration 20m --report soak.json --seed 1234`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.Scenario == "" {
				return errors.New("--scenario is required (see strata chaos list)")
			}
			if cfg.Report == "" {
				return errors.New("--report is required")
			}
			if cfg.Binary == "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				cfg.Binary = exe
			}
			for _, p := range []*string{&cfg.Binary, &cfg.Report} {
				if abs, err := filepath.Abs(*p); err == nil {
					*p = abs
				}
			}
			errOut := cmd.ErrOrStderr()
			if !quiet {
				cfg.Logf = func(format string, args ...any) {
					fmt.Fprintf(errOut, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := chaos.Run(ctx, cfg)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), rep.Summary())
			if ctx.Err() != nil {
				return errors.New("interrupted")
			}
			if !rep.Pass {
				return fmt.Errorf("scenario %s: %d invariant violations; report %s", rep.Scenario, len(rep.Failures), cfg.Report)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Scenario, "scenario", "", "scenario to run: "+strings.Join(chaos.ScenarioNames(), ", "))
	f.DurationVar(&cfg.Duration, "duration", 60*time.Second, "how long faults are injected (warm-up and checks come on top)")
	f.StringVar(&cfg.Report, "report", "", "path of the JSON report (a .txt summary and, on failure, a directory of histories and logs go next to it)")
	f.Uint64Var(&cfg.Seed, "seed", 0, "seed of the fault schedule and the workload's choices (0: a new one, printed in the report)")
	f.StringVar(&cfg.Backend, "backend", "process", "what runs the cluster: process (strata dev cluster on 127.0.0.1) or compose (deploy/compose.yaml under Docker Compose; make image first)")
	f.StringVar(&cfg.Image, "image", "strata:dev", "the strata image of --backend compose (it must be built from the same source as this binary)")
	f.StringVar(&cfg.Binary, "binary", "", "strata binary the cluster runs (default: this one)")
	f.StringVar(&cfg.WorkDir, "dir", "", "directory for the cluster's data (default: a temporary one, removed after a run that passed)")
	f.BoolVar(&cfg.Keep, "keep", false, "keep the cluster's data, histories and logs even when the run passes")
	f.IntVar(&cfg.Meta, "meta", 3, "meta nodes")
	f.IntVar(&cfg.Storage, "storage", 6, "storage nodes (6 gives 4+2 erasure coding, so m=2)")
	f.IntVar(&cfg.API, "api", 2, "api frontends")
	f.DurationVar(&cfg.DeadAfter, "dead-after", 3*time.Second, "passed to every node: a storage node silent this long is declared dead")
	f.BoolVar(&cfg.TolerateServerErrors, "tolerate-5xx", false, "count HTTP 5xx answers other than 503 but do not fail the run for them")
	f.BoolVar(&quiet, "quiet", false, "no progress lines on stderr")
	return cmd
}

func newChaosListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the chaos scenarios",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			for _, n := range chaos.ScenarioNames() {
				fmt.Fprintf(tw, "%s\t%s\n", n, chaos.Scenarios[n].Description)
			}
			return tw.Flush()
		},
	}
}
