package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/strata-registry/strata/cluster"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore"
)

// `strata dev cluster` starts a local multi-process cluster on 127.0.0.1, the
// way `cockroach demo` does: it runs its own binary once per node as
// `strata serve --roles ... --join ...`, waits until a push through every
// frontend works, and writes <dir>/cluster.json for scripts and tests:
//
//	<dir>/cluster.json   the nodes (id, roles, pid, addresses) and the frontend URLs
//	<dir>/<id>/          the data directory of node <id>
//	<dir>/<id>.log       its stdout and stderr (appended to across restarts)
//
// Nodes are m1..mN (meta), s1..sN (storage) and a1..aN (api). A role with no
// node of its own (--storage 0, --api 0) is taken by the meta nodes, so
// `--meta 3 --storage 0 --api 0` is three nodes with every role. m1 bootstraps
// the cluster when its data directory has no Raft state; every other node (and
// m1 once it has state) joins through the meta nodes. Started again on the same
// --dir it reuses the data and the ports recorded in cluster.json.
//
// The chaos suite and the failover benchmark drive the same code through
// devCluster: Kill, Restart, Leader, WaitHealthy, Stop.

func newDevCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Developer tools: a local multi-process cluster",
	}
	cmd.AddCommand(newDevClusterCmd(), newFailoverBenchCmd())
	return cmd
}

// devClusterConfig configures a dev cluster.
type devClusterConfig struct {
	Binary string // the strata binary to run per node (default: this executable)
	Dir    string // data, logs and cluster.json

	Meta, Storage, API int // nodes of each kind

	// Passed through to every node when set.
	DeadAfter       time.Duration // --dead-after (0: serve's default)
	K, M            int           // --k/--m (K 0: the cluster's best fit)
	ReadConsistency string        // --read-consistency
	LogLevel        string        // --log-level

	// Keyring is the key-encryption keyring every frontend shares ("off":
	// blobs and manifests in the clear). Default <dir>/keyring, created
	// with the cluster; a cluster first started in the clear stays so.
	Keyring string

	// NodeEnv (KEY=VALUE) is added to every node's environment, which
	// otherwise has none of this process's STRATA_* variables.
	NodeEnv []string

	ReadyTimeout time.Duration // for start-up (default 90s)
	StopTimeout  time.Duration // SIGTERM to SIGKILL (default 15s)

	// Logf reports progress and unexpected exits; nil discards them.
	Logf func(format string, args ...any)
}

func (c *devClusterConfig) setDefaults() error {
	if c.Meta < 1 {
		return errors.New("dev cluster: --meta must be at least 1")
	}
	if c.Storage < 0 || c.API < 0 {
		return errors.New("dev cluster: --storage and --api must not be negative")
	}
	if c.Dir == "" {
		return errors.New("dev cluster: no directory")
	}
	if c.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("dev cluster: finding this executable: %w", err)
		}
		c.Binary = exe
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = 90 * time.Second
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = 15 * time.Second
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return nil
}

// devClusterFile is the shape of <dir>/cluster.json.
type devClusterFile struct {
	Nodes     []devNodeInfo `json:"nodes"`
	Frontends []string      `json:"frontends"`
}

// devNodeInfo describes one node in cluster.json.
type devNodeInfo struct {
	ID    string   `json:"id"`
	Roles []string `json:"roles"`
	PID   int      `json:"pid"`
	HTTP  string   `json:"http,omitempty"` // http://host:port (api role)
	GRPC  string   `json:"grpc"`           // host:port
	Raft  string   `json:"raft,omitempty"` // host:port (meta role)
}

func (n *devNodeInfo) has(role string) bool { return slices.Contains(n.Roles, role) }

// devProc is one child process, started and restarted with the same node id,
// roles, ports and data directory.
type devProc struct {
	info   devNodeInfo
	reused bool // ports came from an earlier run's cluster.json

	// Guarded by devCluster.mu.
	cmd      *exec.Cmd
	done     chan struct{} // closed when the process has exited
	exitErr  error
	expected bool // we stopped or killed it: its exit is not news
}

// devCluster is a running dev cluster.
type devCluster struct {
	cfg   devClusterConfig
	procs []*devProc // m*, s*, a*, in that order

	mu      sync.Mutex
	stopped bool
	conns   map[string]*grpc.ClientConn
}

const (
	devClusterJSON = "cluster.json"
	devCheckRepo   = "dev-cluster-check"
)

// startDevCluster starts every node and returns once the cluster takes
// pushes through every frontend; cluster.json is then written. On error
// every node it started is stopped again.
func startDevCluster(ctx context.Context, cfg devClusterConfig) (*devCluster, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, err
	}
	prev, err := readDevClusterFile(filepath.Join(cfg.Dir, devClusterJSON))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if cfg.Keyring == "" {
		path := filepath.Join(cfg.Dir, "keyring")
		_, statErr := os.Stat(path)
		switch {
		case statErr == nil:
			cfg.Keyring = path
		case prev != nil: // started before without one: its data is in the clear
			cfg.Keyring = "off"
		default:
			if _, err := keys.OpenKeyring(path, true); err != nil {
				return nil, err
			}
			cfg.Keyring = path
		}
	}
	c := &devCluster{cfg: cfg, conns: map[string]*grpc.ClientConn{}}
	if err := c.plan(prev); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()

	// A bootstrapping m1 first, alone, until it leads; then everyone else.
	first := c.procs[0]
	rest := c.procs
	if !c.hasRaftState(first) {
		if err := c.startProc(first); err != nil {
			return nil, err
		}
		if err := c.waitUntil(ctx, []*devProc{first}, "m1 to lead", func(ctx context.Context) error {
			st, err := c.status(ctx, first)
			if err == nil && st.Leader != first.info.ID {
				err = fmt.Errorf("leader %q", st.Leader)
			}
			return err
		}); err != nil {
			return nil, err
		}
		rest = c.procs[1:]
	}
	for _, p := range rest {
		if err := c.startProc(p); err != nil {
			return nil, err
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		return nil, err
	}
	if err := c.writeFile(); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// plan names the nodes, gives them roles and picks their ports, reusing
// those of an earlier run where the node id is the same.
func (c *devCluster) plan(prev *devClusterFile) error {
	cfg := c.cfg
	metaRoles := []string{cluster.RoleMeta}
	if cfg.Storage == 0 {
		metaRoles = append(metaRoles, cluster.RoleStorage)
	}
	if cfg.API == 0 {
		metaRoles = append(metaRoles, cluster.RoleAPI)
	}
	add := func(prefix string, n int, roles []string) {
		for i := 1; i <= n; i++ {
			c.procs = append(c.procs, &devProc{info: devNodeInfo{
				ID: prefix + strconv.Itoa(i), Roles: slices.Clone(roles),
			}})
		}
	}
	add("m", cfg.Meta, metaRoles)
	add("s", cfg.Storage, []string{cluster.RoleStorage})
	add("a", cfg.API, []string{cluster.RoleAPI})

	old := map[string]devNodeInfo{}
	if prev != nil {
		for _, n := range prev.Nodes {
			old[n.ID] = n
		}
	}
	for _, p := range c.procs {
		o, ok := old[p.info.ID]
		if !ok {
			continue
		}
		if processAlive(o.PID) && dialable(o.GRPC) {
			return fmt.Errorf("dev cluster: node %s of an earlier run (pid %d) still listens on %s; stop it first", o.ID, o.PID, o.GRPC)
		}
		if p.info.has(cluster.RoleAPI) != (o.HTTP != "") || p.info.has(cluster.RoleMeta) != (o.Raft != "") {
			return fmt.Errorf("dev cluster: node %s had roles %v in %s, now %v: use another --dir", o.ID, o.Roles,
				filepath.Join(cfg.Dir, devClusterJSON), p.info.Roles)
		}
		p.info.GRPC, p.info.HTTP, p.info.Raft, p.reused = o.GRPC, o.HTTP, o.Raft, true
	}
	for _, p := range c.procs {
		if !p.reused {
			if err := c.pickPorts(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// pickPorts gives p free ports on 127.0.0.1, distinct from every other node's.
func (c *devCluster) pickPorts(p *devProc) error {
	taken := map[string]bool{}
	for _, q := range c.procs {
		if q != p {
			taken[q.info.GRPC], taken[q.info.Raft], taken[strings.TrimPrefix(q.info.HTTP, "http://")] = true, true, true
		}
	}
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	next := func() (string, error) {
		for range 100 {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return "", fmt.Errorf("dev cluster: picking a port: %w", err)
			}
			lns = append(lns, l) // held until every port of p is picked
			if a := l.Addr().String(); !taken[a] {
				return a, nil
			}
		}
		return "", errors.New("dev cluster: no free port")
	}
	var err error
	if p.info.GRPC, err = next(); err != nil {
		return err
	}
	p.info.HTTP, p.info.Raft = "", ""
	if p.info.has(cluster.RoleMeta) {
		if p.info.Raft, err = next(); err != nil {
			return err
		}
	}
	if p.info.has(cluster.RoleAPI) {
		a, err := next()
		if err != nil {
			return err
		}
		p.info.HTTP = "http://" + a
	}
	return nil
}

func (c *devCluster) dataDir(p *devProc) string { return filepath.Join(c.cfg.Dir, p.info.ID) }
func (c *devCluster) logPath(p *devProc) string { return filepath.Join(c.cfg.Dir, p.info.ID+".log") }

// hasRaftState reports whether a meta node has been part of a cluster.
func (c *devCluster) hasRaftState(p *devProc) bool {
	_, err := os.Stat(filepath.Join(c.dataDir(p), "meta", "raft", "raft.db"))
	return err == nil
}

// args is the command line of p: a meta node without Raft state and no
// other meta node before it bootstraps; every other node joins through
// the meta nodes (the first one first).
func (c *devCluster) args(p *devProc) []string {
	i := p.info
	args := []string{"serve", "--roles", strings.Join(i.Roles, ","), "--node-id", i.ID,
		"--data-dir", c.dataDir(p), "--grpc-addr", i.GRPC}
	if i.HTTP != "" {
		args = append(args, "--http-addr", strings.TrimPrefix(i.HTTP, "http://"))
	}
	if i.Raft != "" {
		args = append(args, "--raft-addr", i.Raft)
	}
	var join []string
	for _, q := range c.procs {
		if q != p && q.info.has(cluster.RoleMeta) {
			join = append(join, q.info.GRPC)
		}
	}
	bootstrap := p == c.procs[0] && !c.hasRaftState(p)
	if !bootstrap && len(join) > 0 {
		args = append(args, "--join", strings.Join(join, ","))
	}
	cfg := c.cfg
	if cfg.DeadAfter > 0 {
		args = append(args, "--dead-after", cfg.DeadAfter.String())
	}
	if cfg.K > 0 {
		args = append(args, "--k", strconv.Itoa(cfg.K), "--m", strconv.Itoa(cfg.M))
	}
	if cfg.ReadConsistency != "" {
		args = append(args, "--read-consistency", cfg.ReadConsistency)
	}
	if cfg.LogLevel != "" {
		args = append(args, "--log-level", cfg.LogLevel)
	}
	if i.has(cluster.RoleAPI) && cfg.Keyring != "" {
		args = append(args, "--keyring", cfg.Keyring)
	}
	return args
}

// startProc starts p, which must not be running. Its output is appended to
// <dir>/<id>.log after a line with its command line.
func (c *devCluster) startProc(p *devProc) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("dev cluster: stopped")
	}
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("dev cluster: node %s is running (pid %d)", p.info.ID, p.info.PID)
	}
	if err := os.MkdirAll(c.dataDir(p), 0o750); err != nil {
		return err
	}
	logf, err := os.OpenFile(c.logPath(p), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	args := c.args(p)
	fmt.Fprintf(logf, "=== %s dev cluster: %s %s\n", time.Now().Format(time.RFC3339Nano), c.cfg.Binary, strings.Join(args, " "))
	cmd := exec.Command(c.cfg.Binary, args...)
	cmd.Dir = c.cfg.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Settings meant for this process must not leak into the nodes.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "STRATA_") })
	cmd.Env = append(cmd.Env, c.cfg.NodeEnv...)
	// A process group of its own: a Ctrl-C in the terminal reaches only
	// the dev cluster, which then stops the nodes itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("dev cluster: starting %s: %w", p.info.ID, err)
	}
	logf.Close() // the child has its own copy
	done := make(chan struct{})
	p.cmd, p.done, p.exitErr, p.expected = cmd, done, nil, false
	p.info.PID = cmd.Process.Pid
	go func() {
		err := cmd.Wait()
		c.mu.Lock()
		p.exitErr = err
		expected := p.expected || c.stopped
		c.mu.Unlock()
		close(done)
		if !expected {
			c.cfg.Logf("dev cluster: node %s (pid %d) exited on its own: %v; the rest keep running (log: %s)",
				p.info.ID, cmd.Process.Pid, exitText(err), c.logPath(p))
		}
	}()
	return nil
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// running reports whether p's process is alive.
func (c *devCluster) running(p *devProc) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return p.cmd != nil && !isClosed(p.done)
}

// waitUntil polls check every 100ms until it succeeds. It fails early when
// one of watch exits: a port taken meanwhile (by another program) gets new
// ports and a new start, when the ports were not fixed by an earlier run.
func (c *devCluster) waitUntil(ctx context.Context, watch []*devProc, what string, check func(context.Context) error) error {
	restarts := 0
	var last error
	for {
		for _, p := range watch {
			c.mu.Lock()
			exited := p.cmd != nil && isClosed(p.done)
			c.mu.Unlock()
			if !exited {
				continue
			}
			tail := logTail(c.logPath(p), 30)
			if !p.reused && restarts < 3 && strings.Contains(tail, "address already in use") {
				restarts++
				c.cfg.Logf("dev cluster: node %s lost a port to another program; trying new ports", p.info.ID)
				if err := c.pickPorts(p); err != nil {
					return err
				}
				if err := c.startProc(p); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("dev cluster: node %s exited during start-up (%v); end of %s:\n%s",
				p.info.ID, exitText(p.exitErr), c.logPath(p), tail)
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dev cluster: waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitHealthy returns once every node is registered (meta nodes as voters,
// storage nodes alive), a leader is known, and every frontend answers
// GET /v2/ and takes a small monolithic blob push. The frontends refresh
// their view of the storage nodes every second, so the push must succeed
// at least 1.5s after the registry was complete: by then every frontend
// writes with the full cluster's erasure geometry.
func (c *devCluster) WaitHealthy(ctx context.Context) error {
	var complete time.Time
	err := c.waitUntil(ctx, c.procs, "every node to register", func(ctx context.Context) error {
		st, err := c.anyStatus(ctx)
		if err != nil {
			return err
		}
		if st.Leader == "" {
			return errors.New("no leader")
		}
		members := map[string]*cpb.Member{}
		for _, m := range st.Members {
			members[m.Node.GetId()] = m
		}
		for _, p := range c.procs {
			m := members[p.info.ID]
			switch {
			case m == nil || m.Node.GetGrpcAddr() == "":
				return fmt.Errorf("%s not registered", p.info.ID)
			case p.info.has(cluster.RoleMeta) && m.Suffrage != "voter":
				return fmt.Errorf("%s not a voter", p.info.ID)
			case p.info.has(cluster.RoleStorage) && m.Node.GetState() != metastore.NodeAlive:
				return fmt.Errorf("storage node %s is %s", p.info.ID, m.Node.GetState())
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	complete = time.Now()
	for _, url := range c.Frontends() {
		err := c.waitUntil(ctx, c.procs, "a push through "+url, func(ctx context.Context) error {
			if err := getV2(ctx, url); err != nil {
				return err
			}
			if err := pushBlob(ctx, url, devCheckRepo, []byte("strata dev cluster check\n")); err != nil {
				return err
			}
			if time.Since(complete) < 1500*time.Millisecond {
				return errors.New("the frontends may not have seen every storage node yet")
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Frontends are the base URLs of the nodes with the api role.
func (c *devCluster) Frontends() []string {
	var out []string
	for _, p := range c.procs {
		if p.info.HTTP != "" {
			out = append(out, p.info.HTTP)
		}
	}
	return out
}

// Nodes describes every node as cluster.json does.
func (c *devCluster) Nodes() []devNodeInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]devNodeInfo, len(c.procs))
	for i, p := range c.procs {
		out[i] = p.info
		out[i].Roles = slices.Clone(p.info.Roles)
	}
	return out
}

func (c *devCluster) proc(id string) (*devProc, error) {
	for _, p := range c.procs {
		if p.info.ID == id {
			return p, nil
		}
	}
	return nil, fmt.Errorf("dev cluster: no node %q", id)
}

// Kill sends sig to node id and, for SIGKILL, waits until it is gone. Its
// exit is not reported as news.
func (c *devCluster) Kill(id string, sig syscall.Signal) error {
	p, err := c.proc(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if p.cmd == nil || isClosed(p.done) {
		c.mu.Unlock()
		return fmt.Errorf("dev cluster: node %s is not running", id)
	}
	p.expected = true
	proc, done := p.cmd.Process, p.done
	c.mu.Unlock()
	if err := proc.Signal(sig); err != nil {
		return err
	}
	if sig == syscall.SIGKILL {
		<-done
	}
	return nil
}

// Restart starts node id again (it must have exited) with the same id,
// roles, ports and data, and rewrites cluster.json with its new pid. It does
// not wait for the node to rejoin: see WaitHealthy.
func (c *devCluster) Restart(id string) error {
	p, err := c.proc(id)
	if err != nil {
		return err
	}
	if err := c.startProc(p); err != nil {
		return err
	}
	return c.writeFile()
}

// Stop sends SIGTERM to every node, SIGKILL to those still running after
// StopTimeout, and waits for all of them.
func (c *devCluster) Stop() {
	c.mu.Lock()
	c.stopped = true
	var running []*devProc
	for _, p := range c.procs {
		if p.cmd != nil && !isClosed(p.done) {
			p.expected = true
			running = append(running, p)
		}
	}
	for addr, conn := range c.conns {
		conn.Close()
		delete(c.conns, addr)
	}
	c.mu.Unlock()
	for _, p := range running {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(c.cfg.StopTimeout)
wait:
	for _, p := range running {
		select {
		case <-p.done:
		case <-deadline:
			break wait
		}
	}
	for _, p := range running {
		if !isClosed(p.done) {
			c.cfg.Logf("dev cluster: node %s (pid %d) still running %s after SIGTERM; sending SIGKILL",
				p.info.ID, p.info.PID, c.cfg.StopTimeout)
			_ = p.cmd.Process.Kill()
		}
	}
	for _, p := range running {
		<-p.done
	}
}

// KillAll sends SIGKILL to every node at once (a second Ctrl-C).
func (c *devCluster) KillAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	for _, p := range c.procs {
		if p.cmd != nil && !isClosed(p.done) {
			p.expected = true
			_ = p.cmd.Process.Kill()
		}
	}
}

// writeFile writes cluster.json atomically.
func (c *devCluster) writeFile() error {
	f := devClusterFile{Nodes: c.Nodes(), Frontends: c.Frontends()}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(c.cfg.Dir, devClusterJSON)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readDevClusterFile(path string) (*devClusterFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f devClusterFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("dev cluster: %s: %w", path, err)
	}
	return &f, nil
}

// client returns a Cluster gRPC client for a node's gRPC address.
func (c *devCluster) client(addr string) (cpb.ClusterClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	conn, ok := c.conns[addr]
	if !ok {
		var err error
		conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		c.conns[addr] = conn
	}
	return cpb.NewClusterClient(conn), nil
}

// status asks meta node p for the cluster's status (a follower forwards
// the question to the leader).
func (c *devCluster) status(ctx context.Context, p *devProc) (*cpb.StatusResponse, error) {
	cl, err := c.client(p.info.GRPC)
	if err != nil {
		return nil, err
	}
	return cl.Status(ctx, &cpb.StatusRequest{})
}

// anyStatus asks the running meta nodes in turn until one answers.
func (c *devCluster) anyStatus(ctx context.Context) (*cpb.StatusResponse, error) {
	var errs []error
	for _, p := range c.procs {
		if !p.info.has(cluster.RoleMeta) || !c.running(p) {
			continue
		}
		st, err := c.status(ctx, p)
		if err == nil {
			return st, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", p.info.ID, err))
	}
	if len(errs) == 0 {
		return nil, errors.New("no meta node running")
	}
	return nil, errors.Join(errs...)
}

// Leader returns the id of the Raft leader, as the leader itself reports it.
func (c *devCluster) Leader(ctx context.Context) (string, error) {
	st, err := c.anyStatus(ctx)
	if err != nil {
		return "", err
	}
	if st.Leader == "" || st.NodeId != st.Leader || st.State != "Leader" {
		return "", fmt.Errorf("dev cluster: no confirmed leader (node %s, state %s, leader %q)", st.NodeId, st.State, st.Leader)
	}
	return st.Leader, nil
}

// getV2 checks that GET /v2/ answers 200.
func getV2(ctx context.Context, base string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s/v2/: %s", base, resp.Status)
	}
	return nil
}

// pushBlob pushes data to repo in one request
// (POST /v2/<repo>/blobs/uploads/?digest=) and wants 201 Created.
func pushBlob(ctx context.Context, base, repo string, data []byte) error {
	sum := sha256.Sum256(data)
	dgst := "sha256:" + hex.EncodeToString(sum[:])
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/?digest="+dgst, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("push to %s: %s: %s", base, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// logTail returns the last n lines of a file.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

func dialable(addr string) bool {
	if addr == "" {
		return false
	}
	conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func newDevClusterCmd() *cobra.Command {
	cfg := devClusterConfig{}
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Run a local multi-process cluster (meta, storage and api nodes) on 127.0.0.1",
		Long: `Run a local multi-process Strata cluster on 127.0.0.1.

Every node is this binary as a child process, "strata serve --roles ... --join ...",
on free ports: meta nodes m1..mN (Raft voters), storage nodes s1..sN and api
frontends a1..aN. A role with no node of its own (--storage 0, --api 0) is taken
by the meta nodes. m1 bootstraps, every other node joins through the meta nodes.

Once every frontend takes a push it prints the frontend URLs and writes
<dir>/cluster.json (nodes with id, roles, pid and addresses; the frontend URLs).
Node <id> keeps its data in <dir>/<id>/ and its log in <dir>/<id>.log. A node
that dies is reported and the rest keep running. Ctrl-C stops every node
(SIGTERM, then SIGKILL after --stop-timeout; a second Ctrl-C kills at once).

Run again on the same --dir, it reuses the data and the ports in cluster.json.`,
		Example: `  strata dev cluster --meta 3 --storage 3 --api 2 --dir /tmp/strata-dev
  strata dev cluster --meta 3 --storage 0 --api 0     # three nodes with every role
  strata dev cluster --dead-after 10s --k 2 --m 1 --log-level debug`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.Dir == "" {
				d, err := os.MkdirTemp("", "strata-dev-cluster-")
				if err != nil {
					return err
				}
				cfg.Dir = d
			}
			if abs, err := filepath.Abs(cfg.Dir); err == nil {
				cfg.Dir = abs
			}
			if (cfg.K > 0) != cmd.Flags().Changed("m") {
				return errors.New("--k and --m go together")
			}
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			cfg.Logf = func(format string, args ...any) { fmt.Fprintf(errOut, format+"\n", args...) }
			return runDevCluster(cmd.Context(), cfg, out)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Meta, "meta", 3, "meta nodes (Raft voters) m1..mN")
	f.IntVar(&cfg.Storage, "storage", 3, "storage nodes s1..sN (0: the meta nodes store shards)")
	f.IntVar(&cfg.API, "api", 2, "api frontends a1..aN (0: the meta nodes serve the API)")
	f.StringVar(&cfg.Dir, "dir", "", "directory for data, logs and cluster.json (default: a new temporary directory)")
	f.DurationVar(&cfg.DeadAfter, "dead-after", 0, "passed to every node: a storage node silent this long is declared dead (default: serve's)")
	f.IntVar(&cfg.K, "k", 0, "passed to every node: erasure data shards per segment (default: the cluster's best fit)")
	f.IntVar(&cfg.M, "m", 0, "passed to every node: erasure parity shards per segment (with --k)")
	f.StringVar(&cfg.ReadConsistency, "read-consistency", "", "passed to every node: linearizable or stale (default: serve's)")
	f.StringVar(&cfg.LogLevel, "log-level", "", "passed to every node: debug, info, warn or error (default: serve's)")
	f.StringVar(&cfg.Keyring, "keyring", "", "keyring every frontend shares to encrypt blobs and manifests (default: <dir>/keyring, created with the cluster; \"off\": in the clear)")
	f.StringArrayVar(&cfg.NodeEnv, "node-env", nil, "KEY=VALUE added to every node's environment, repeatable (nodes get none of this command's STRATA_* variables otherwise)")
	f.DurationVar(&cfg.ReadyTimeout, "ready-timeout", 90*time.Second, "how long start-up may take")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", 15*time.Second, "how long nodes get to stop after SIGTERM before SIGKILL")
	return cmd
}

// runDevCluster starts the cluster, prints the frontends and waits for
// SIGINT or SIGTERM (or ctx) to stop it.
func runDevCluster(ctx context.Context, cfg devClusterConfig, out io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()

	cfg.Logf("dev cluster: %d meta, %d storage, %d api nodes in %s", cfg.Meta, cfg.Storage, cfg.API, cfg.Dir)
	start := time.Now()
	c, err := startDevCluster(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return errors.New("dev cluster: interrupted during start-up")
		}
		return err
	}
	fmt.Fprintf(out, "strata dev cluster ready in %s: %d nodes, data and logs in %s\n",
		time.Since(start).Round(100*time.Millisecond), len(c.procs), c.cfg.Dir)
	for _, p := range c.procs {
		if p.info.HTTP != "" {
			fmt.Fprintf(out, "  frontend %-3s %s\n", p.info.ID, p.info.HTTP)
		}
	}
	fmt.Fprintf(out, "  cluster.json %s\n", filepath.Join(c.cfg.Dir, devClusterJSON))
	fmt.Fprintln(out, "Ctrl-C stops every node.")

	<-ctx.Done()
	cfg.Logf("dev cluster: stopping %d nodes", len(c.procs))
	stopping := time.Now()
	stopped := make(chan struct{})
	go func() { c.Stop(); close(stopped) }()
	for done := false; !done; {
		select {
		case <-stopped:
			done = true
		case <-sigs:
			// A signal delivered twice at once (say by timeout(1) to
			// the process and to its group) is not a second Ctrl-C.
			if time.Since(stopping) < time.Second {
				continue
			}
			cfg.Logf("dev cluster: second signal: killing every node")
			c.KillAll()
			<-stopped
			done = true
		}
	}
	cfg.Logf("dev cluster: stopped in %s", time.Since(stopping).Round(time.Millisecond))
	return nil
}
