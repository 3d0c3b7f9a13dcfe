package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/strata-registry/strata/cluster"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/metastore"
)

type clientOptions struct {
	server                 string
	tlsCert, tlsKey, tlsCA string
	timeout                time.Duration
}

func (c *clientOptions) bind(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&c.server, "server", envOr("STRATA_SERVER", "127.0.0.1:7000"), "gRPC address of any meta node")
	f.StringVar(&c.tlsCert, "tls-cert", os.Getenv("STRATA_TLS_CERT"), "client certificate for mutual TLS")
	f.StringVar(&c.tlsKey, "tls-key", os.Getenv("STRATA_TLS_KEY"), "client key for mutual TLS")
	f.StringVar(&c.tlsCA, "tls-ca", os.Getenv("STRATA_TLS_CA"), "CA of the cluster's certificates")
	f.DurationVar(&c.timeout, "timeout", 30*time.Second, "how long to wait for the cluster")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func (c *clientOptions) dial() (cpb.ClusterClient, func(), error) {
	tlsConf, err := cluster.LoadTLS(c.tlsCert, c.tlsKey, c.tlsCA)
	if err != nil {
		return nil, nil, err
	}
	creds := insecure.NewCredentials()
	if tlsConf != nil {
		creds = credentials.NewTLS(tlsConf)
	}
	cc, err := grpc.NewClient(c.server, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cluster.MaxMessageSize)))
	if err != nil {
		return nil, nil, err
	}
	return cpb.NewClusterClient(cc), func() { cc.Close() }, nil
}

func newClusterCmd() *cobra.Command {
	c := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Inspect and change cluster membership; back up the metadata",
	}
	c.bind(cmd)
	cmd.AddCommand(newStatusCmd(c), newRemoveCmd(c), newSnapshotCmd(c))
	return cmd
}

func newStatusCmd(c *clientOptions) *cobra.Command {
	asJSON := false
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print members, roles, the leader, Raft term and indexes, and storage node health",
		Example: `  strata cluster status --server 127.0.0.1:7000
  strata cluster status --server 127.0.0.1:7000 --json | jq -r .leader`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			client, closeFn, err := c.dial()
			if err != nil {
				return err
			}
			defer closeFn()
			ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
			defer cancel()
			st, err := client.Status(ctx, &cpb.StatusRequest{})
			if err != nil {
				return fmt.Errorf("status from %s: %w", c.server, err)
			}
			if asJSON {
				b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(st)
				if err != nil {
					return err
				}
				fmt.Println(string(b))
				return nil
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object (its top-level leader field is the leader's node id)")
	return cmd
}

func printStatus(w io.Writer, st *cpb.StatusResponse) {
	fmt.Fprintf(w, "leader: %s   term: %d   commit index: %d   applied index: %d   (answered by %s, %s)\n\n",
		orDash(st.Leader), st.Term, st.CommitIndex, st.AppliedIndex, st.NodeId, strings.ToLower(st.State))
	members := st.Members
	sort.Slice(members, func(i, j int) bool { return members[i].Node.Id < members[j].Node.Id })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLES\tSTATE\tRAFT\tGRPC\tHTTP\tZONE\tHEARTBEAT\tUSED\tFREE")
	for _, m := range members {
		n := m.Node
		raft := orDash(m.Suffrage)
		if m.Leader {
			raft += " (leader)"
		}
		hb, used, free := "-", "-", "-"
		if m.LastHeartbeatUnixNano > 0 {
			hb = time.Since(time.Unix(0, m.LastHeartbeatUnixNano)).Round(100*time.Millisecond).String() + " ago"
			used, free = humanBytes(m.UsedBytes), humanBytes(m.FreeBytes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Id, strings.Join(n.Roles, ","), orDash(n.State),
			raft, orDash(n.GrpcAddr), orDash(n.HttpAddr), orDash(n.Zone), hb, used, free)
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func humanBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func newRemoveCmd(c *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a member live: out of Raft (meta nodes) and out of the node registry",
		Long: `Remove a member live. A meta node leaves the Raft configuration; every node
leaves the registry. No other member restarts. Drain a storage node first
(strata node drain) so that no shard is left only on it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, closeFn, err := c.dial()
			if err != nil {
				return err
			}
			defer closeFn()
			ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
			defer cancel()
			if _, err := client.Remove(ctx, &cpb.RemoveRequest{Id: args[0]}); err != nil {
				return fmt.Errorf("remove %s: %w", args[0], err)
			}
			fmt.Printf("removed %s\n", args[0])
			return nil
		},
	}
}

func newSnapshotCmd(c *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Back up the metadata to a file, or restore a node's metadata from one",
	}
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "Write a consistent snapshot of the metadata (from the leader) to FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, closeFn, err := c.dial()
			if err != nil {
				return err
			}
			defer closeFn()
			ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
			defer cancel()
			// The snapshot comes from the leader, so that it holds every
			// acknowledged write.
			st, err := client.Status(ctx, &cpb.StatusRequest{})
			if err != nil {
				return fmt.Errorf("status from %s: %w", c.server, err)
			}
			for _, m := range st.Members {
				if m.Leader && m.Node.GrpcAddr != "" && m.Node.GrpcAddr != c.server {
					lc := *c
					lc.server = m.Node.GrpcAddr
					lclient, lclose, err := lc.dial()
					if err != nil {
						return err
					}
					defer lclose()
					client = lclient
				}
			}
			stream, err := client.SnapshotSave(ctx, &cpb.SnapshotSaveRequest{})
			if err != nil {
				return err
			}
			tmp := args[0] + ".partial"
			f, err := os.Create(tmp)
			if err != nil {
				return err
			}
			defer os.Remove(tmp)
			var n int64
			for {
				chunk, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					f.Close()
					return fmt.Errorf("snapshot from %s: %w", c.server, err)
				}
				if _, err := f.Write(chunk.Data); err != nil {
					f.Close()
					return err
				}
				n += int64(len(chunk.Data))
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			if err := os.Rename(tmp, args[0]); err != nil {
				return err
			}
			fmt.Printf("saved %s of metadata to %s\n", humanBytes(uint64(n)), args[0])
			return nil
		},
	}
	var dataDir string
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Restore a stopped meta node's metadata from FILE; it then bootstraps a new cluster",
		Long: `Restore the metadata of a stopped meta node from a snapshot taken with
'strata cluster snapshot save'. The node's Raft state is discarded: when it
starts again without --join it bootstraps a new cluster holding the restored
metadata, and other meta nodes (with empty data directories) join it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			metaDir := filepath.Join(dataDir, "meta")
			// Opening the old database first fails if the node still runs.
			if _, err := os.Stat(filepath.Join(metaDir, "pebble")); err == nil {
				old, err := metastore.Open(filepath.Join(metaDir, "pebble"))
				if err != nil {
					return fmt.Errorf("is the node still running? %w", err)
				}
				old.Close()
			}
			if err := os.RemoveAll(metaDir); err != nil {
				return err
			}
			st, err := metastore.Open(filepath.Join(metaDir, "pebble"))
			if err != nil {
				return err
			}
			if err := st.RestoreAsNew(f); err != nil {
				st.Close()
				return fmt.Errorf("restore %s: %w", args[0], err)
			}
			if err := st.Close(); err != nil {
				return err
			}
			fmt.Printf("restored %s into %s; start the node without --join to bootstrap from it\n", args[0], metaDir)
			return nil
		},
	}
	restore.Flags().StringVar(&dataDir, "data-dir", "./strata-data", "data directory of the stopped node")
	cmd.AddCommand(save, restore)
	return cmd
}
