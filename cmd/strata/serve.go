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
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/strata-registry/strata/api"
	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/gc"
	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/keys/kmsplugin"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

type serveOptions struct {
	config          string
	dev             bool
	roles           []string
	dataDir         string
	httpAddr        string
	grpcAddr        string
	raftAddr        string
	nodeID          string
	join            []string
	zone            string
	shardDirs       []string
	k, m            int
	segmentSize     int
	inlineMax       int64
	segmentCache    int64
	readMemory      int64
	memoryLimit     int64
	strict          bool
	readConsistency string
	maxStaleness    time.Duration
	noReadLease     bool
	deadAfter       time.Duration
	repairRate      int64
	repairConc      int
	scrubRate       int64
	tlsCert         string
	tlsKey          string
	tlsCA           string
	logLevel        string

	advGRPC, advRaft, advHTTP, metricsAddr string
	pprofAddr                              string
	maxData                                int
	auditInterval                          time.Duration
	snapshotThreshold, trailingLogs        uint64
	snapshotInterval                       time.Duration
	keyring                                string
	keyProvider                            keys.Provider
	keyManager                             keys.Manager
	kmsPlugins                             []string
	keyName                                string
	keyReconcile                           time.Duration

	gcGrace, gcInterval, uploadIdle, lifecycleInterval time.Duration
	adminRemote                                        bool
}

func newServeCmd() *cobra.Command { return newServeCmdFor(&serveOptions{}) }

// newServeCmdFor is newServeCmd parsing into o.
func newServeCmdFor(o *serveOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a Strata node (every role in one process with --dev)",
		Long: `Run a Strata node.

A node has one or more roles:
  api      the OCI Distribution API on --http-addr (stateless)
  meta     a Raft voter whose state machine is a Pebble database
  storage  erasure-coded shards on --shard-dir, served over gRPC

With --dev it runs every role in one process, with no configuration: the OCI
API on 127.0.0.1:5000, one Raft voter, and local shard storage (k=1, m=0 on one
directory unless --shard-dir, --k and --m say otherwise). A cluster is the same
binary with --roles and --join: the first meta node (no --join) bootstraps,
every other node joins through any member it is given.

State lives under --data-dir:
  <data-dir>/node-id        this node's stable id
  <data-dir>/meta/pebble/   the metadata state machine      (meta)
  <data-dir>/meta/raft/     Raft log, stable store, snapshots (meta)
  <data-dir>/shards/0/      shard files unless --shard-dir    (storage)

Every setting can also come from a YAML file (--config, keys named like the
flags) or from STRATA_<FLAG> environment variables (STRATA_HTTP_ADDR, ...);
flags win over the environment, which wins over the file.`,
		Example: `  strata serve --dev
  strata serve --dev --data-dir /var/lib/strata --http-addr 0.0.0.0:5000
  strata serve --dev --shard-dir /d1 --shard-dir /d2 --shard-dir /d3 --k 2 --m 1

  # a three-node cluster, every role on every node
  strata serve --node-id m1 --data-dir /srv/m1 --http-addr :5000 --grpc-addr 10.0.0.1:7000 --raft-addr 10.0.0.1:7001
  strata serve --node-id m2 --data-dir /srv/m2 --http-addr :5000 --grpc-addr 10.0.0.2:7000 --raft-addr 10.0.0.2:7001 --join 10.0.0.1:7000
  strata serve --node-id m3 ... --join 10.0.0.1:7000,10.0.0.2:7000`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := applySettings(cmd, o.config); err != nil {
				return err
			}
			return serve(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", os.Getenv("STRATA_CONFIG"), "YAML file with settings named like the flags")
	f.BoolVar(&o.dev, "dev", false, "run every role in one process (embedded single-node registry)")
	f.StringSliceVar(&o.roles, "roles", []string{"meta", "storage", "api"}, "roles of this node: meta, storage, api")
	f.StringVar(&o.dataDir, "data-dir", "./strata-data", "directory for all state")
	f.StringVar(&o.httpAddr, "http-addr", "127.0.0.1:5000", "address of the OCI HTTP API (api role)")
	f.StringVar(&o.grpcAddr, "grpc-addr", "127.0.0.1:0", "address of the internal gRPC API (port 0 picks a free one)")
	f.StringVar(&o.raftAddr, "raft-addr", "127.0.0.1:0", "address of the Raft transport (meta role; port 0 picks a free one)")
	f.StringVar(&o.nodeID, "node-id", "", "stable node id (default: kept in <data-dir>/node-id, generated once)")
	f.StringSliceVar(&o.join, "join", nil, "gRPC addresses of cluster members to join through (none: bootstrap a new cluster)")
	f.StringVar(&o.zone, "zone", "", "failure zone of this node (rack, room); shards spread over distinct zones first (default: the node id)")
	f.StringArrayVar(&o.shardDirs, "shard-dir", nil, "shard directory, repeatable (default <data-dir>/shards/0); with --dev each acts as one storage node")
	f.IntVar(&o.k, "k", 0, "erasure data shards per segment (default: 1 in --dev; in a cluster the best fit: 4+2 with 6 or more storage nodes, 2+1 with 3 to 5)")
	f.IntVar(&o.m, "m", -1, "erasure parity shards per segment (default: see --k)")
	f.IntVar(&o.segmentSize, "segment-size", blobstore.DefaultSegmentSize, "bytes per segment")
	f.Var(newSizeFlag(&o.inlineMax, 16<<10), "inline-max", "api role: a blob shorter than this, written whole (or the first chunk of a chunked upload), is kept sealed in the replicated metadata instead of as erasure-coded shards on storage nodes (0: never; at most 64KiB)")
	f.Var(newSizeFlag(&o.segmentCache, 256<<20), "segment-cache", "api role: bytes of decoded segments a frontend keeps in memory; concurrent pulls of one blob share one fetch of each segment (0: no cache)")
	f.Var(newSizeFlag(&o.memoryLimit, 0), "memory-limit", "soft limit of the process's memory for Go's garbage collector (0: derived from the roles, --read-memory and --segment-cache; -1: none; GOMEMLIMIT, when set, wins)")
	f.Var(newSizeFlag(&o.readMemory, blobstore.DefaultReadMemory), "read-memory", "api role: bytes of segment data a frontend's blob reads may hold at once (shards fetched and not yet sent); a blob GET that gets none for its first segment within 200ms is refused with 429 TOOMANYREQUESTS (-1: no bound)")
	f.BoolVar(&o.strict, "strict-manifests", false, "refuse image manifests whose layers are not all in the repository (default: sparse manifests are accepted)")
	f.StringVar(&o.readConsistency, "read-consistency", "linearizable", "tag and listing reads: linearizable, or stale (served by any replica within --max-staleness)")
	f.DurationVar(&o.maxStaleness, "max-staleness", 5*time.Second, "bound on the staleness of reads with --read-consistency=stale")
	f.BoolVar(&o.noReadLease, "no-read-lease", false, "meta role: confirm leadership with a heartbeat round for every linearizable read instead of within a read lease (leases assume meta nodes' clocks never stop, as they do when a machine is suspended)")
	f.DurationVar(&o.deadAfter, "dead-after", 5*time.Minute, "a storage node silent this long is declared dead")
	f.Int64Var(&o.repairRate, "repair-rate", 256<<20, "bytes per second the leader's repairer may fetch and write (meta role; 0: no bound)")
	f.IntVar(&o.repairConc, "repair-concurrency", cluster.DefaultRepairConcurrency, "segments the leader's repairer rebuilds at once (meta role)")
	f.Int64Var(&o.scrubRate, "scrub-rate", blobstore.DefaultScrubRate, "bytes per second the scrubber reads to re-verify shards (storage role; negative: no bound)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "certificate for mutual TLS on internal gRPC (with --tls-key and --tls-ca)")
	f.StringVar(&o.tlsKey, "tls-key", "", "private key for --tls-cert")
	f.StringVar(&o.tlsCA, "tls-ca", "", "CA bundle that peers' certificates must chain to")
	f.DurationVar(&o.gcGrace, "gc-grace", time.Hour, "a blob no manifest has referenced for this long is garbage-collected")
	f.DurationVar(&o.gcInterval, "gc-interval", time.Minute, "how often the leader collects garbage")
	f.DurationVar(&o.uploadIdle, "upload-idle", 24*time.Hour, "an upload session untouched this long is cancelled and its space reclaimed")
	f.DurationVar(&o.lifecycleInterval, "lifecycle-interval", 10*time.Minute, "how often the leader applies every repository's lifecycle policy")
	f.BoolVar(&o.adminRemote, "admin-remote", false, "serve the admin API (/admin/v1/) to clients that are not on loopback")
	f.StringVar(&o.advGRPC, "advertise-grpc-addr", "", "gRPC address other nodes dial (host:port; default: the --grpc-addr listener's)")
	f.StringVar(&o.advRaft, "advertise-raft-addr", "", "Raft address other meta nodes dial (host:port, host may be a DNS name; default: the --raft-addr listener's)")
	f.StringVar(&o.advHTTP, "advertise-http-addr", "", "HTTP address recorded for this frontend (default: the --http-addr listener's)")
	f.DurationVar(&o.auditInterval, "audit-interval", 10*time.Minute, "how often the leader checks that every storage node still holds the shards the registry places on it (missing ones are repaired)")
	f.Uint64Var(&o.snapshotThreshold, "snapshot-threshold", 8192, "meta role: Raft log entries since the last snapshot that make a new one (the log is compacted behind it)")
	f.Uint64Var(&o.trailingLogs, "trailing-logs", 10240, "meta role: Raft log entries kept behind a snapshot, so that a slightly lagging member catches up without installing one")
	f.DurationVar(&o.snapshotInterval, "snapshot-interval", 30*time.Second, "meta role: how often Raft checks --snapshot-threshold")
	f.IntVar(&o.maxData, "max-data-requests", 256, "blob GETs and upload bodies served at once; beyond it clients get 429 TOOMANYREQUESTS (bounds memory)")
	f.StringVar(&o.keyring, "keyring", "", "keyring file of the key-encryption keys that wrap every blob's data key (api role); default with --dev: <data-dir>/keyring, created on first start; \"off\" stores blobs in the clear. Every frontend of a cluster needs the same file")
	f.StringArrayVar(&o.kmsPlugins, "kms-plugin", nil, "api role: a Kubernetes KMS v2 plugin that wraps data keys for the key named NAME, as NAME=SOCKET (a unix socket path); repeat for several. Repositories created with encryption type KMS and that key name use it; --key-name NAME makes it the default")
	f.StringVar(&o.keyName, "key-name", keys.DefaultKeyName, "api role: the key-encryption key of repositories without a key of their own (a keyring key, or a --kms-plugin NAME)")
	f.DurationVar(&o.keyReconcile, "key-reconcile-interval", 6*time.Hour, "api role: how often a frontend walks every wrapped data key and rewraps stale ones (rotation finishing, missing repository copies); 0 disables the periodic pass")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve /metrics and /healthz on this address too (for nodes without the api role)")
	f.StringVar(&o.pprofAddr, "pprof-addr", "", "serve Go's profiler (/debug/pprof/) on this address, e.g. 127.0.0.1:6060 (never on a public address)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
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

func (o *serveOptions) validate() error {
	if o.dev {
		o.roles = []string{cluster.RoleMeta, cluster.RoleStorage, cluster.RoleAPI}
		if len(o.join) > 0 {
			return errors.New("--dev runs a single node; it cannot --join")
		}
	}
	if len(o.roles) == 0 {
		return errors.New("--roles: at least one of meta, storage, api")
	}
	for _, r := range o.roles {
		switch r {
		case cluster.RoleMeta, cluster.RoleStorage, cluster.RoleAPI:
		default:
			return fmt.Errorf("--roles: unknown role %q (meta, storage, api)", r)
		}
	}
	if !o.has(cluster.RoleMeta) && len(o.join) == 0 {
		return errors.New("a node without the meta role needs --join with the gRPC address of a meta node")
	}
	if (o.k > 0) != (o.m >= 0) {
		return errors.New("--k and --m go together")
	}
	if o.dev && o.k == 0 {
		o.k, o.m = 1, 0
	}
	if (o.tlsCert != "" || o.tlsKey != "" || o.tlsCA != "") && (o.tlsCert == "" || o.tlsKey == "" || o.tlsCA == "") {
		return errors.New("mutual TLS needs all of --tls-cert, --tls-key and --tls-ca")
	}
	return nil
}

func (o *serveOptions) has(role string) bool { return slices.Contains(o.roles, role) }

func serve(ctx context.Context, o *serveOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	if limit, source := o.setMemoryLimit(); limit > 0 {
		log.Info("memory limit", "bytes", limit, "size", fmtBenchSize(limit), "from", source)
	}
	gcPercent, gcSource := o.setGCPercent()
	gcAttrs := []any{"gogc", gcPercent}
	if gcSource != "" {
		gcAttrs = append(gcAttrs, "from", gcSource)
	}
	if gcSource != "GOGC" { // tuneGC below keeps the floor
		gcAttrs = append(gcAttrs, "least_growth", fmtBenchSize(gcHeadroom))
	}
	log.Info("garbage collector target", gcAttrs...)
	if err := os.MkdirAll(o.dataDir, 0o750); err != nil {
		return err
	}
	_, statErr := os.Stat(filepath.Join(o.dataDir, "node-id"))
	fresh := errors.Is(statErr, os.ErrNotExist)
	nodeID, err := loadNodeID(o.dataDir, o.nodeID)
	if err != nil {
		return err
	}
	if o.zone == "" {
		o.zone = nodeID
	}
	if o.has(cluster.RoleAPI) {
		if o.keyProvider, o.keyManager, err = openKeys(o, fresh); err != nil {
			return err
		}
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	tlsConf, err := cluster.LoadTLS(o.tlsCert, o.tlsKey, o.tlsCA)
	if err != nil {
		return err
	}
	peers := cluster.NewPeers(o.join, tlsConf)
	defer peers.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	go newMemTrimmer(reg, log).run(ctx)
	if gcSource != "GOGC" {
		tuneGC(ctx, gcPercent)
	}
	gsrv := grpc.NewServer(cluster.ServerOptions(tlsConf)...)
	gln, err := net.Listen("tcp", o.grpcAddr)
	if err != nil {
		return fmt.Errorf("--grpc-addr: %w", err)
	}
	grpcAdv, err := advertised(gln.Addr(), o.advGRPC, "--advertise-grpc-addr")
	if err != nil {
		return err
	}
	self := &pb.NodeRecord{Id: nodeID, GrpcAddr: grpcAdv, Roles: o.roles, Zone: o.zone}
	if o.metricsAddr != "" {
		mln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-addr: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go ms.Serve(mln)
		defer ms.Close()
	}

	if o.pprofAddr != "" {
		pln, err := net.Listen("tcp", o.pprofAddr)
		if err != nil {
			return fmt.Errorf("--pprof-addr: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		ps := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go ps.Serve(pln)
		defer ps.Close()
		log.Info("profiler listening", "addr", pln.Addr().String())
	}

	// Storage first: it has nothing to recover.
	var local []blobstore.Node
	var disks []*blobstore.LocalStore
	if o.has(cluster.RoleStorage) {
		dirs := o.shardDirs
		if len(dirs) == 0 {
			dirs = []string{filepath.Join(o.dataDir, "shards", "0")}
		}
		if !o.dev && len(dirs) > 1 {
			return errors.New("a cluster storage node keeps one --shard-dir (run one storage node per disk); several are for --dev")
		}
		for i, d := range dirs {
			id := nodeID
			if o.dev {
				id = fmt.Sprintf("%s-disk%d", nodeID, i)
			}
			ls, err := blobstore.OpenLocal(id, d)
			if err != nil {
				return err
			}
			defer ls.Close()
			disks = append(disks, ls)
			zone := o.zone
			if o.dev {
				zone = id
			}
			local = append(local, blobstore.Node{Info: blobstore.NodeInfo{ID: id, Zone: zone}, Shards: ls})
		}
		if !o.dev {
			blobstore.RegisterShardServer(gsrv, local[0].Shards)
		}
	}

	// Metadata.
	var meta *cluster.Meta
	var svc *cluster.Service
	if o.has(cluster.RoleMeta) {
		st, err := metastore.Open(filepath.Join(o.dataDir, "meta", "pebble"))
		if err != nil {
			return err
		}
		defer st.Close()
		node, err := cluster.Open(cluster.Config{
			NodeID: nodeID, Dir: filepath.Join(o.dataDir, "meta", "raft"), RaftAddr: o.raftAddr, AdvertiseRaftAddr: o.advRaft,
			Bootstrap: len(o.join) == 0, Logger: log,
			SnapshotThreshold: o.snapshotThreshold, TrailingLogs: o.trailingLogs, SnapshotInterval: o.snapshotInterval,
			NoReadLease: o.noReadLease, Registerer: reg,
		}, st)
		if err != nil {
			return err
		}
		defer node.Close()
		self.RaftAddr = node.RaftAddr()
		if meta, err = cluster.NewMeta(cluster.MetaConfig{Node: node, Store: st, Peers: peers,
			ReadConsistency: o.readConsistency, MaxStaleness: o.maxStaleness}); err != nil {
			return err
		}
		if svc, err = cluster.NewService(meta, o.deadAfter, log); err != nil {
			return err
		}
		svc.Register(gsrv)
		go svc.RunLeaderDuties(ctx)
		// Repair: every meta node runs it; it works while the node leads.
		rep, err := cluster.NewRepairer(meta, cluster.RepairConfig{Peers: peers, Local: local, OnlyLocal: o.dev,
			Concurrency: o.repairConc, BytesPerSecond: o.repairRate, FreeSpace: svc.FreeSpace, Registerer: reg, Log: log})
		if err != nil {
			return err
		}
		svc.SetRepairer(rep)
		go rep.Run(ctx)
		go rep.RunAudit(ctx, o.auditInterval, 2000)
		// Garbage collection and lifecycle policies: every meta node runs
		// them; they act while the node leads.
		collector := gc.NewCollector(gc.CollectorConfig{Grace: o.gcGrace, UploadIdle: o.uploadIdle, Interval: o.gcInterval},
			st, meta, rep.StorageNodes, node.IsLeader, reg, log)
		lifecycle := gc.NewLifecycle(st, meta, node.IsLeader, o.lifecycleInterval, reg, log)
		svc.SetMaintenance(cluster.Maintenance{Collector: collector, Lifecycle: lifecycle})
		go collector.Run(ctx)
		go lifecycle.Run(ctx)
	} else {
		if meta, err = cluster.NewMeta(cluster.MetaConfig{Peers: peers,
			ReadConsistency: o.readConsistency, MaxStaleness: o.maxStaleness}); err != nil {
			return err
		}
	}
	go func() {
		if err := gsrv.Serve(gln); err != nil {
			log.Error("grpc server", "err", err)
		}
	}()
	defer gsrv.Stop()

	// The HTTP listener is opened before joining so that the registry
	// records the address it really got.
	var hln net.Listener
	if o.has(cluster.RoleAPI) {
		if hln, err = net.Listen("tcp", o.httpAddr); err != nil {
			return fmt.Errorf("--http-addr: %w", err)
		}
		if self.HttpAddr, err = advertised(hln.Addr(), o.advHTTP, "--advertise-http-addr"); err != nil && o.advHTTP == "" {
			// The HTTP address is informational (status, cluster.json):
			// a wildcard bind is recorded as it is.
			self.HttpAddr, err = hln.Addr().String(), nil
		}
		if err != nil {
			return err
		}
	}
	if err := joinCluster(ctx, o, meta, svc, self, log); err != nil {
		return err
	}
	// Bad shards found by reads (api) and scrubbers (storage) go on the
	// repair queue, through the leader.
	reporter := cluster.NewShardReporter(meta, cluster.ReporterConfig{Registerer: reg, Log: log})
	go reporter.Run(ctx)
	for _, ls := range disks {
		sc := blobstore.NewScrubber(ls, blobstore.ScrubConfig{BytesPerSecond: o.scrubRate, OnCorrupt: reporter.OnCorrupt(ls.NodeID())})
		cluster.RegisterScrubMetrics(reg, ls.NodeID(), sc)
		go sc.Run(ctx) //nolint:errcheck // ends with ctx
	}
	if o.has(cluster.RoleStorage) && !o.dev {
		go cluster.RunHeartbeats(ctx, meta, nodeID, func(ctx context.Context) (used, free, capacity uint64) {
			u, err := local[0].Shards.Usage(ctx)
			if err != nil {
				return 0, 0, 0
			}
			return uint64(u.Used), u.Free, u.Capacity
		}, max(o.deadAfter/10, 200*time.Millisecond), log)
	}

	log.Info("strata node started", "node", nodeID, "roles", strings.Join(o.roles, ","),
		"grpc", self.GrpcAddr, "raft", self.RaftAddr, "data_dir", o.dataDir, "version", version)
	if !o.has(cluster.RoleAPI) {
		<-ctx.Done()
		log.Info("shutting down")
		return nil
	}
	return serveHTTP(ctx, o, hln, meta, local, peers, nodeID, reg, reporter, log)
}

// joinCluster makes the node a member: a bootstrapping meta node registers
// itself once it leads; every other node joins through --join, retrying
// until a member answers.
func joinCluster(ctx context.Context, o *serveOptions, meta *cluster.Meta, svc *cluster.Service, self *pb.NodeRecord, log *slog.Logger) error {
	if len(o.join) == 0 {
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := meta.Node().WaitLeader(wctx); err != nil {
			return err
		}
		return meta.Propose(wctx, &pb.Command{Op: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNode{Node: self}}})
	}
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := cluster.Join(ctx, meta, self)
		if err == nil {
			log.Info("joined the cluster", "via", strings.Join(o.join, ","))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt%10 == 1 {
			log.Warn("joining the cluster, will retry", "via", strings.Join(o.join, ","), "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 2*time.Second)
	}
}

// serveHTTP runs the OCI API until ctx ends.
func serveHTTP(ctx context.Context, o *serveOptions, ln net.Listener, meta *cluster.Meta, local []blobstore.Node,
	peers *cluster.Peers, nodeID string, reg *prometheus.Registry, reporter *cluster.ShardReporter, log *slog.Logger) error {
	blobCfg := blobstore.Config{K: o.k, M: o.m, SegmentSize: o.segmentSize, InlineMax: int(o.inlineMax), OnShardError: reporter.OnShardError}
	if o.segmentCache > 0 {
		blobCfg.SegmentCache = blobstore.NewSegmentCache(o.segmentCache, reg)
	}
	// One budget for every pipeline this frontend makes (SetBlobs, WithGeometry).
	blobCfg.ReadBudget = blobstore.NewReadBudget(o.readMemory, reg)
	var blobs *blobstore.Store
	var storage *cluster.StorageView
	var err error
	if o.dev {
		blobs, err = blobstore.New(blobCfg, func() []blobstore.Node { return local })
	} else {
		storage = cluster.NewStorageView(meta, peers, nodeID, local, log)
		blobCfg.OnNoSpace = storage.NoSpace
		blobs, err = storage.NewStore(blobCfg)
	}
	if err != nil {
		return err
	}
	srv := api.New(api.Config{
		Registry: reg, Logger: log, StrictManifests: o.strict, AdminRemote: o.adminRemote, MaxDataRequests: o.maxData,
		Keys: o.keyProvider, KeyManager: o.keyManager, KeyName: o.keyName, UploadIdle: o.uploadIdle,
		Ready: func(ctx context.Context) error { return meta.Ready(ctx) },
	}, meta, blobs)
	if storage != nil {
		go storage.Run(ctx, blobCfg, srv.SetBlobs)
	}
	if o.keyProvider != nil {
		// A frontend with the wrong keyring stops here, not at every pull.
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := srv.CheckKeys(cctx, 32)
		cancel()
		switch {
		case errors.Is(err, api.ErrWrongKeys):
			return err
		case err != nil:
			log.Warn("could not check the keyring against the registry's data yet", "err", err)
		}
	}
	bg := make(chan struct{})
	go func() { srv.Run(ctx); close(bg) }()
	go srv.RunKeyReconciler(ctx, o.keyReconcile)
	defer func() { <-bg }()
	hs := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		Protocols:         new(http.Protocols),
	}
	// HTTP/1.1, and HTTP/2 over cleartext for clients that speak it with
	// prior knowledge (many requests on one connection, no head-of-line
	// blocking between them).
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Info("strata is serving", "url", "http://"+ln.Addr().String(), "node", nodeID, "data_dir", o.dataDir,
		"blob_encryption", o.keyProvider != nil)
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

// advertised is the address other nodes are given: the flag's when set,
// else the listener's, which must then not be a wildcard address.
func advertised(ln net.Addr, flag, name string) (string, error) {
	if flag != "" {
		if _, _, err := net.SplitHostPort(flag); err != nil {
			return "", fmt.Errorf("%s %q: %w", name, flag, err)
		}
		return flag, nil
	}
	if tcp, ok := ln.(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		return "", fmt.Errorf("listening on %s: give %s, the address other nodes can dial", ln, name)
	}
	return ln.String(), nil
}

// openKeys opens the key providers of a frontend: the keyring (the
// default provider, and the keys Strata manages itself) and the KMS plugins
// named by --kms-plugin, behind one cache of unwrapped data keys.
func openKeys(o *serveOptions, fresh bool) (keys.Provider, keys.Manager, error) {
	ring, err := openKeyring(o, fresh)
	if err != nil {
		return nil, nil, err
	}
	if ring == nil && len(o.kmsPlugins) == 0 {
		return nil, nil, nil
	}
	var fallback keys.Provider
	var mgr keys.Manager
	if ring != nil {
		fallback, mgr = ring, ring
	}
	mux := keys.NewMux(fallback)
	for _, spec := range o.kmsPlugins {
		name, sock, ok := strings.Cut(spec, "=")
		if !ok || name == "" || sock == "" {
			return nil, nil, fmt.Errorf("--kms-plugin %q: want NAME=SOCKET", spec)
		}
		p, err := kmsplugin.New(kmsplugin.Config{Name: name, Socket: sock})
		if err != nil {
			return nil, nil, err
		}
		mux.Handle(name, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := mux.CurrentVersion(ctx, o.keyName); err != nil {
		if errors.Is(err, keys.ErrUnavailable) {
			slog.Warn("the default key-encryption key's provider does not answer yet; pushes wait for it", "key", o.keyName, "err", err)
		} else {
			return nil, nil, fmt.Errorf("--key-name %q: %w (a keyring key or a --kms-plugin NAME)", o.keyName, err)
		}
	}
	return keys.NewCache(mux, 4096, 10*time.Minute), mgr, nil
}

// openKeyring opens the keyring that wraps blob data keys: the --keyring
// file, or <data-dir>/keyring with --dev. It is created only on a node's
// first start: a node with data whose keyring is missing or damaged must not
// start with a new one (its blobs would be unreadable), so it stops with the
// reason.
func openKeyring(o *serveOptions, fresh bool) (*keys.Keyring, error) {
	path := o.keyring
	switch {
	case path == "off":
		return nil, nil
	case path == "" && !o.dev:
		return nil, nil
	case path == "":
		path = filepath.Join(o.dataDir, "keyring")
	}
	_, err := os.Stat(path)
	create := fresh && errors.Is(err, os.ErrNotExist)
	ring, err := keys.OpenKeyring(path, create)
	if err != nil {
		if !create && errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("keyring %s is missing: this node has data whose blobs it encrypts; restore the keyring (or start with --keyring off only if it never had one): %w", path, err)
		}
		return nil, fmt.Errorf("keyring %s: %w", path, err)
	}
	return ring, nil
}

// Memory a node needs besides the budgets it is configured with, per role,
// for the automatic --memory-limit.
const memoryPerRole = 256 << 20

// autoMemoryLimit is the soft memory limit of a node with o's roles and
// budgets: memoryPerRole for each role, and for the api role the read
// budget and the segment cache on top.
func (o *serveOptions) autoMemoryLimit() int64 {
	limit := int64(len(o.roles)) * memoryPerRole
	if o.has(cluster.RoleAPI) {
		if o.readMemory < 0 {
			return 0 // reads are not bounded: neither is the process
		}
		limit += o.readMemory + max(o.segmentCache, 0)
	}
	return limit
}

// setMemoryLimit gives Go's garbage collector a soft limit (GOMEMLIMIT) and
// returns it and where it came from; 0 when there is none. Without one the
// heap may grow to twice the live data between collections, and a frontend
// streaming many segments allocates fast: 8 clients pulling images from a
// 4+2 cluster took a frontend's RSS to 2.4 GiB with 0.4 GiB live. With the
// limit the collector runs sooner as the heap nears it (it is soft: live data
// above it is never refused, the collector then uses at most about half the
// CPU), so the process stays near what its budgets allow.
func (o *serveOptions) setMemoryLimit() (int64, string) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return debug.SetMemoryLimit(-1), "GOMEMLIMIT"
	}
	limit, source := o.memoryLimit, "--memory-limit"
	if limit == 0 {
		limit, source = o.autoMemoryLimit(), "roles and budgets"
	}
	if limit <= 0 {
		return 0, ""
	}
	debug.SetMemoryLimit(limit)
	return limit, source
}

// sizeFlag is a flag of bytes, given as 1073741824, 1GiB, 512MiB or 1.5GB
// (parseBenchSize); a leading "-" makes it negative.
type sizeFlag struct{ p *int64 }

func newSizeFlag(p *int64, def int64) *sizeFlag {
	*p = def
	return &sizeFlag{p}
}

func (f *sizeFlag) String() string {
	switch {
	case f.p == nil || *f.p == 0:
		return "0"
	case *f.p < 0:
		return "-" + fmtBenchSize(-*f.p)
	}
	return fmtBenchSize(*f.p)
}

func (f *sizeFlag) Set(s string) error {
	s = strings.TrimSpace(s)
	neg := strings.HasPrefix(s, "-")
	n, err := parseBenchSize(strings.TrimPrefix(s, "-"))
	if err != nil {
		return err
	}
	if neg {
		n = -n
	}
	*f.p = n
	return nil
}

func (f *sizeFlag) Type() string { return "size" }
