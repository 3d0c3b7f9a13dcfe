package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/strata-registry/strata/api"
	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/metastore"
)

type serveOptions struct {
	dev         bool
	dataDir     string
	httpAddr    string
	raftAddr    string
	nodeID      string
	shardDirs   []string
	k, m        int
	segmentSize int
	logLevel    string
	strict      bool
}

func newServeCmd() *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a Strata node",
		Long: `Run a Strata node.

With --dev it runs every role in one process: the OCI API on --http-addr, one
Raft voter whose state machine is a Pebble database, and local shard storage
(k=1, m=0 on one directory unless --shard-dir, --k and --m say otherwise).
All state lives under --data-dir:

  <data-dir>/node-id        this node's stable id
  <data-dir>/meta/pebble/   the metadata state machine
  <data-dir>/meta/raft/     the Raft log, stable store and snapshots
  <data-dir>/shards/0/      shard files (when no --shard-dir is given)`,
		Example: `  strata serve --dev
  strata serve --dev --data-dir /var/lib/strata --http-addr 0.0.0.0:5000
  strata serve --dev --shard-dir /d1 --shard-dir /d2 --shard-dir /d3 --k 2 --m 1`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !o.dev {
				return errors.New("only --dev (all roles in one process) is available in this version; see README")
			}
			return serve(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.dev, "dev", false, "run every role in one process (embedded single-node registry)")
	f.StringVar(&o.dataDir, "data-dir", envOr("STRATA_DATA_DIR", "./strata-data"), "directory for all state")
	f.StringVar(&o.httpAddr, "http-addr", envOr("STRATA_HTTP_ADDR", "127.0.0.1:5000"), "address of the OCI HTTP API")
	f.StringVar(&o.raftAddr, "raft-addr", envOr("STRATA_RAFT_ADDR", "127.0.0.1:0"), "address of the Raft transport (port 0 picks a free one)")
	f.StringVar(&o.nodeID, "node-id", os.Getenv("STRATA_NODE_ID"), "stable node id (default: kept in <data-dir>/node-id, generated once)")
	f.StringArrayVar(&o.shardDirs, "shard-dir", nil, "shard directory, repeatable; each acts as one local storage node (default <data-dir>/shards/0)")
	f.IntVar(&o.k, "k", 1, "erasure data shards per segment")
	f.IntVar(&o.m, "m", 0, "erasure parity shards per segment")
	f.IntVar(&o.segmentSize, "segment-size", blobstore.DefaultSegmentSize, "bytes per segment")
	f.BoolVar(&o.strict, "strict-manifests", false, "refuse image manifests whose layers are not all in the repository (default: sparse manifests are accepted)")
	f.StringVar(&o.logLevel, "log-level", envOr("STRATA_LOG_LEVEL", "info"), "debug, info, warn or error")
	return cmd
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// loadNodeID returns the node id: the flag, else the one kept in the data
// directory, else a new one that is then kept.
func loadNodeID(dataDir, flag string) (string, error) {
	path := filepath.Join(dataDir, "node-id")
	b, err := os.ReadFile(path)
	if err == nil {
		stored := strings.TrimSpace(string(b))
		if flag != "" && flag != stored {
			return "", fmt.Errorf("--node-id %q, but %s says this data belongs to node %q", flag, path, stored)
		}
		return stored, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	id := flag
	if id == "" {
		var r [4]byte
		_, _ = rand.Read(r[:])
		id = "node-" + hex.EncodeToString(r[:])
	}
	return id, os.WriteFile(path, []byte(id+"\n"), 0o640)
}

func serve(ctx context.Context, o *serveOptions) error {
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	if err := os.MkdirAll(o.dataDir, 0o750); err != nil {
		return err
	}
	nodeID, err := loadNodeID(o.dataDir, o.nodeID)
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// Shard storage first: it has nothing to recover.
	dirs := o.shardDirs
	if len(dirs) == 0 {
		dirs = []string{filepath.Join(o.dataDir, "shards", "0")}
	}
	if o.k+o.m > len(dirs) {
		return fmt.Errorf("erasure geometry %d+%d needs %d shard directories, have %d (--shard-dir)", o.k, o.m, o.k+o.m, len(dirs))
	}
	var nodes []blobstore.Node
	for i, d := range dirs {
		ls, err := blobstore.OpenLocal(fmt.Sprintf("%s-disk%d", nodeID, i), d)
		if err != nil {
			return err
		}
		defer ls.Close()
		nodes = append(nodes, blobstore.Node{Info: blobstore.NodeInfo{ID: ls.NodeID(), Zone: ls.NodeID()}, Shards: ls})
	}
	blobs, err := blobstore.New(blobstore.Config{K: o.k, M: o.m, SegmentSize: o.segmentSize},
		func() []blobstore.Node { return nodes })
	if err != nil {
		return err
	}

	// Metadata: Pebble under Raft.
	st, err := metastore.Open(filepath.Join(o.dataDir, "meta", "pebble"))
	if err != nil {
		return err
	}
	defer st.Close()
	node, err := cluster.Open(cluster.Config{
		NodeID: nodeID, Dir: filepath.Join(o.dataDir, "meta", "raft"), RaftAddr: o.raftAddr,
		Bootstrap: true, Logger: log,
	}, st)
	if err != nil {
		return err
	}
	defer node.Close()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = node.WaitLeader(wctx)
	cancel()
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv := api.New(api.Config{
		Registry: reg, Logger: log, StrictManifests: o.strict,
		Ready: func(ctx context.Context) error {
			if !node.IsLeader() {
				return cluster.ErrNoLeader
			}
			return nil
		},
	}, &cluster.Local{Node: node, Store: st}, blobs)

	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Info("strata is serving", "url", "http://"+ln.Addr().String(), "node", nodeID,
		"data_dir", o.dataDir, "raft", node.RaftAddr(), "erasure", fmt.Sprintf("%d+%d", o.k, o.m),
		"shard_dirs", len(dirs), "version", version)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	return nil
}
