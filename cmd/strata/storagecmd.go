package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-registry/strata/cluster"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/metastore"
)

func newNodeCmd() *cobra.Command {
	c := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Operate on one node of the cluster (drain a storage node)",
	}
	c.bind(cmd)
	cmd.AddCommand(newDrainCmd(c))
	return cmd
}

func newDrainCmd(c *clientOptions) *cobra.Command {
	var wait, cancel, force bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Move every shard off a storage node, so that it can be removed",
		Long: `Mark a storage node draining. It takes no new shards, and the leader's
repairer copies each shard it holds to another node (never below full
redundancy: a shard's new copy is recorded before the old one is deleted),
then marks it drained. Then 'strata cluster remove ID' takes it out.

A drain is refused when the other alive storage nodes are too few to hold
the node's segments at full redundancy (a 4+2 segment needs 6 distinct
nodes): add a node first, or pass --force to move what can be moved.

With --wait the command shows the shards left on the node until it is
drained. --cancel ends a drain (or takes a drained node back): the node is
alive again and takes new shards.`,
		Example: `  strata node drain s3 --wait --server 10.0.0.1:7000
  strata node drain s3 --cancel`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			client, closeFn, err := c.dial()
			if err != nil {
				return err
			}
			defer closeFn()
			rctx, rcancel := context.WithTimeout(ctx, c.timeout)
			resp, err := client.Drain(rctx, &cpb.DrainRequest{Id: args[0], Cancel: cancel, Force: force})
			rcancel()
			if err != nil {
				return fmt.Errorf("drain %s: %w", args[0], err)
			}
			out := cmd.OutOrStdout()
			switch {
			case cancel:
				fmt.Fprintf(out, "%s is %s; it holds %d shards\n", args[0], resp.State, resp.ShardCount)
				return nil
			case resp.State == metastore.NodeDrained:
				fmt.Fprintf(out, "%s is drained (%d shards left)\n", args[0], resp.ShardCount)
				return nil
			}
			fmt.Fprintf(out, "%s is draining: %d shards to move\n", args[0], resp.ShardCount)
			if !wait {
				return nil
			}
			return waitDrained(ctx, c, client, args[0], resp.ShardCount, every, out)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&wait, "wait", false, "show progress until the node is drained")
	f.BoolVar(&cancel, "cancel", false, "end the drain: the node takes new shards again")
	f.BoolVar(&force, "force", false, "drain even if the other storage nodes cannot hold every segment at full redundancy")
	f.DurationVar(&every, "interval", time.Second, "how often --wait asks for progress")
	return cmd
}

// waitDrained polls the cluster's status until node is drained, drawing a
// progress bar of the shards moved off it.
func waitDrained(ctx context.Context, c *clientOptions, client cpb.ClusterClient, node string, total uint64, every time.Duration, out io.Writer) error {
	tty := isTerminal(out)
	start := time.Now()
	lastLine := time.Time{}
	for {
		sctx, cancel := context.WithTimeout(ctx, c.timeout)
		st, err := client.Status(sctx, &cpb.StatusRequest{ShardCounts: true})
		cancel()
		switch {
		case ctx.Err() != nil:
			if tty {
				fmt.Fprintln(out)
			}
			return fmt.Errorf("stopped waiting; the drain of %s goes on", node)
		case err != nil:
			fmt.Fprintf(out, "\nstatus: %v (retrying)\n", err)
		default:
			i := slices.IndexFunc(st.Members, func(m *cpb.Member) bool { return m.Node.GetId() == node })
			if i < 0 {
				return fmt.Errorf("%s is no longer in the registry", node)
			}
			m := st.Members[i]
			left := m.ShardCount
			total = max(total, left)
			line := drainProgress(total, left, time.Since(start))
			if tty {
				fmt.Fprintf(out, "\r%s\033[K", line)
			} else if time.Since(lastLine) >= 10*every || m.Node.State == metastore.NodeDrained {
				fmt.Fprintln(out, line)
				lastLine = time.Now()
			}
			switch m.Node.State {
			case metastore.NodeDrained:
				if tty {
					fmt.Fprintln(out)
				}
				fmt.Fprintf(out, "%s is drained after %v\n", node, time.Since(start).Round(time.Second))
				return nil
			case metastore.NodeDraining:
			default:
				if tty {
					fmt.Fprintln(out)
				}
				return fmt.Errorf("%s is %s now, not draining", node, m.Node.State)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(every):
		}
	}
}

// drainProgress renders one progress line.
func drainProgress(total, left uint64, took time.Duration) string {
	const width = 30
	done := total - min(left, total)
	frac := 1.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	fill := int(frac * width)
	bar := strings.Repeat("#", fill) + strings.Repeat("-", width-fill)
	s := fmt.Sprintf("[%s] %3.0f%%  %d/%d shards moved, %d left", bar, 100*frac, done, total, left)
	if secs := took.Seconds(); done > 0 && secs >= 1 {
		rate := float64(done) / secs
		eta := time.Duration(float64(left) / rate * float64(time.Second)).Round(time.Second)
		s += fmt.Sprintf("  (%.0f shards/s, about %v to go)", rate, eta)
	}
	return s
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func newStorageCmd() *cobra.Command {
	c := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "storage",
		Short: "Storage nodes, their shards, and repair",
	}
	c.bind(cmd)
	cmd.AddCommand(newStorageStatusCmd(c))
	return cmd
}

// storageStatus is the --json form of strata storage status.
type storageStatus struct {
	Leader string        `json:"leader"`
	Nodes  []storageNode `json:"nodes"`
	Repair repairStatus  `json:"repair"`
}

type storageNode struct {
	ID                string `json:"id"`
	State             string `json:"state"`
	Zone              string `json:"zone"`
	GRPCAddr          string `json:"grpc_addr"`
	Shards            uint64 `json:"shards"`
	UsedBytes         uint64 `json:"used_bytes"`
	FreeBytes         uint64 `json:"free_bytes"`
	CapacityBytes     uint64 `json:"capacity_bytes"`
	LastHeartbeatUnix int64  `json:"last_heartbeat_unix_nano"` // 0: none seen by this leader
}

type repairStatus struct {
	Running          bool   `json:"running"`
	QueueLength      uint64 `json:"queue_length"`
	PendingShards    uint64 `json:"pending_shards"`
	InProgress       uint64 `json:"in_progress"`
	SegmentsRepaired uint64 `json:"segments_repaired"`
	ShardsRebuilt    uint64 `json:"shards_rebuilt"`
	ShardsMoved      uint64 `json:"shards_moved"`
	BytesRead        uint64 `json:"bytes_read"`
	BytesWritten     uint64 `json:"bytes_written"`
	Failures         uint64 `json:"failures"`
	Passes           uint64 `json:"passes"`
	LastPassUnixNano int64  `json:"last_pass_unix_nano"`
	LastError        string `json:"last_error,omitempty"`
}

func newStorageStatusCmd(c *clientOptions) *cobra.Command {
	asJSON := false
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print each storage node (state, zone, shards, space, heartbeat) and the repair queue and progress",
		Example: `  strata storage status --server 10.0.0.1:7000
  strata storage status --json | jq '.nodes[] | select(.state != "alive")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			client, closeFn, err := c.dial()
			if err != nil {
				return err
			}
			defer closeFn()
			ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
			defer cancel()
			st, err := client.Status(ctx, &cpb.StatusRequest{ShardCounts: true})
			if err != nil {
				return fmt.Errorf("status from %s: %w", c.server, err)
			}
			ss := toStorageStatus(st)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(ss)
			}
			printStorageStatus(cmd.OutOrStdout(), ss, st.Repair != nil)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

func toStorageStatus(st *cpb.StatusResponse) storageStatus {
	ss := storageStatus{Leader: st.Leader, Nodes: []storageNode{}}
	for _, m := range st.Members {
		n := m.Node
		if !slices.Contains(n.GetRoles(), cluster.RoleStorage) {
			continue
		}
		ss.Nodes = append(ss.Nodes, storageNode{
			ID: n.Id, State: n.State, Zone: n.Zone, GRPCAddr: n.GrpcAddr, Shards: m.ShardCount,
			UsedBytes: m.UsedBytes, FreeBytes: m.FreeBytes, CapacityBytes: m.CapacityBytes, LastHeartbeatUnix: m.LastHeartbeatUnixNano,
		})
	}
	sort.Slice(ss.Nodes, func(i, j int) bool { return ss.Nodes[i].ID < ss.Nodes[j].ID })
	ss.Repair.QueueLength = st.RepairQueueLength
	if r := st.Repair; r != nil {
		ss.Repair = repairStatus{
			Running: r.Running, QueueLength: st.RepairQueueLength, PendingShards: r.PendingShards, InProgress: r.InProgress,
			SegmentsRepaired: r.SegmentsRepaired, ShardsRebuilt: r.ShardsRebuilt, ShardsMoved: r.ShardsMoved,
			BytesRead: r.BytesRead, BytesWritten: r.BytesWritten, Failures: r.Failures, Passes: r.Passes,
			LastPassUnixNano: r.LastPassUnixNano, LastError: r.LastError,
		}
	}
	return ss
}

func printStorageStatus(w io.Writer, ss storageStatus, haveRepairer bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tZONE\tSHARDS\tUSED\tFREE\tCAPACITY\tHEARTBEAT\tGRPC")
	for _, n := range ss.Nodes {
		hb, used, free, capacity := "-", "-", "-", "-"
		if n.LastHeartbeatUnix > 0 {
			hb = time.Since(time.Unix(0, n.LastHeartbeatUnix)).Round(100*time.Millisecond).String() + " ago"
			used, free, capacity = humanBytes(n.UsedBytes), humanBytes(n.FreeBytes), humanBytes(n.CapacityBytes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", n.ID, orDash(n.State), orDash(n.Zone), n.Shards,
			used, free, capacity, hb, orDash(n.GRPCAddr))
	}
	tw.Flush()
	if len(ss.Nodes) == 0 {
		fmt.Fprintln(w, "(no storage nodes registered)")
	}
	r := ss.Repair
	fmt.Fprintln(w)
	fmt.Fprintf(w, "repair queue: %d segments   shards on dead/draining nodes: %d\n", r.QueueLength, r.PendingShards)
	if !haveRepairer {
		fmt.Fprintln(w, "repairer: not reported by this node")
		return
	}
	state := "running on the leader " + orDash(ss.Leader)
	if !r.Running {
		state = "not running (no leader?)"
	}
	last := "never"
	if r.LastPassUnixNano > 0 {
		last = time.Since(time.Unix(0, r.LastPassUnixNano)).Round(100*time.Millisecond).String() + " ago"
	}
	fmt.Fprintf(w, "repairer: %s; %d segments in progress; last pass %s\n", state, r.InProgress, last)
	fmt.Fprintf(w, "  since this leader began: %d segments repaired, %d shards rebuilt, %d moved; %s read, %s written; %d failures\n",
		r.SegmentsRepaired, r.ShardsRebuilt, r.ShardsMoved, humanBytes(r.BytesRead), humanBytes(r.BytesWritten), r.Failures)
	if r.LastError != "" {
		fmt.Fprintf(w, "  last failure: %s\n", r.LastError)
	}
}
