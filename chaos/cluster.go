package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strata-registry/strata/cluster"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/metastore"
)

// Roles of dev cluster nodes, as cluster.json names them.
const (
	RoleMeta    = cluster.RoleMeta
	RoleStorage = cluster.RoleStorage
	RoleAPI     = cluster.RoleAPI
)

// ClusterConfig configures a Cluster: the process backend for multi-node
// runs, which drives `strata dev cluster` as a child process.
type ClusterConfig struct {
	// Binary is the strata binary. Required.
	Binary string
	// Dir holds the dev cluster's data, logs and cluster.json. Required;
	// created if missing. It should be empty (a fresh cluster).
	Dir string
	// Nodes of each kind. Defaults 3, 6, 2.
	Meta, Storage, API int
	// DeadAfter is passed to every node (--dead-after). Default 3s.
	DeadAfter time.Duration
	// ExtraArgs are more flags for `strata dev cluster`.
	ExtraArgs []string
	// ReadyTimeout bounds the start of the cluster and of each restarted
	// node. Default 120s.
	ReadyTimeout time.Duration
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// NodeInfo is one node as cluster.json describes it.
type NodeInfo struct {
	ID    string   `json:"id"`
	Roles []string `json:"roles"`
	PID   int      `json:"pid"`
	HTTP  string   `json:"http,omitempty"`
	GRPC  string   `json:"grpc"`
	Raft  string   `json:"raft,omitempty"`
}

// Has reports whether the node has role.
func (n NodeInfo) Has(role string) bool { return slices.Contains(n.Roles, role) }

// NodeState is what the harness did to a node last.
type NodeState string

// Node states.
const (
	NodeRunning NodeState = "running"
	NodeKilled  NodeState = "killed"  // SIGKILLed or stopped, not restarted yet
	NodePaused  NodeState = "paused"  // SIGSTOPped
	NodeCrashed NodeState = "crashed" // exited without being told to
)

// clusterNode is one node and how to start it again.
type clusterNode struct {
	info  NodeInfo
	argv  []string // the command line the dev cluster started it with
	state NodeState
	// own is set when the harness (re)started the process itself; it is
	// then our child, reaped by a goroutine that closes ownDone.
	own     *exec.Cmd
	ownDone chan struct{}
	starts  int
}

// Cluster is a multi-process Strata cluster started by `strata dev cluster`
// and driven through its cluster.json: every node can be SIGKILLed,
// SIGSTOPped, SIGCONTed, stopped with SIGTERM and started again with the
// command line the dev cluster gave it (read back from the first line the dev
// cluster wrote into the node's log), on the same ports and data directory.
// A node the harness restarts becomes the harness's child; the dev cluster
// itself restarts nothing.
//
// Methods are safe for concurrent use.
type Cluster struct {
	cfg     ClusterConfig
	dev     *exec.Cmd
	devDone chan struct{}
	devLog  string

	mu    sync.Mutex
	nodes []*clusterNode // in cluster.json order: m*, s*, a*
	crash []string       // unexpected exits seen so far

	peers *cluster.Peers
	meta  *cluster.Meta
	net   *Net // nil until EnableNet
}

// StartCluster runs `strata dev cluster` in cfg.Dir and returns once its
// cluster.json is written (every frontend takes pushes by then).
func StartCluster(ctx context.Context, cfg ClusterConfig) (*Cluster, error) {
	if cfg.Binary == "" || cfg.Dir == "" {
		return nil, errors.New("chaos: ClusterConfig needs Binary and Dir")
	}
	if cfg.Meta == 0 {
		cfg.Meta = 3
	}
	if cfg.Storage == 0 {
		cfg.Storage = 6
	}
	if cfg.API == 0 {
		cfg.API = 2
	}
	if cfg.DeadAfter == 0 {
		cfg.DeadAfter = 3 * time.Second
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 120 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, devDone: make(chan struct{}), devLog: filepath.Join(cfg.Dir, "devcluster.log")}
	logf, err := os.OpenFile(c.devLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	args := []string{"dev", "cluster", "--dir", cfg.Dir,
		"--meta", fmt.Sprint(cfg.Meta), "--storage", fmt.Sprint(cfg.Storage), "--api", fmt.Sprint(cfg.API),
		"--dead-after", cfg.DeadAfter.String(), "--ready-timeout", cfg.ReadyTimeout.String()}
	args = append(args, cfg.ExtraArgs...)
	cmd := exec.Command(cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = nodeEnv()
	// If the harness dies, the dev cluster gets SIGTERM and stops its nodes.
	cmd.SysProcAttr = devClusterProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("chaos: starting %s %s: %w", cfg.Binary, strings.Join(args, " "), err)
	}
	logf.Close()
	c.dev = cmd
	go func() {
		_ = cmd.Wait()
		close(c.devDone)
	}()
	cfg.Logf("chaos: started strata %s (pid %d)", strings.Join(args, " "), cmd.Process.Pid)

	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	rctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	path := filepath.Join(cfg.Dir, "cluster.json")
	for {
		if b, err := os.ReadFile(path); err == nil {
			var f struct {
				Nodes []NodeInfo `json:"nodes"`
			}
			if err := json.Unmarshal(b, &f); err != nil {
				return nil, fmt.Errorf("chaos: %s: %w", path, err)
			}
			for _, n := range f.Nodes {
				c.nodes = append(c.nodes, &clusterNode{info: n, state: NodeRunning, starts: 1})
			}
			break
		}
		select {
		case <-c.devDone:
			return nil, fmt.Errorf("chaos: strata dev cluster exited before it was ready; end of %s:\n%s", c.devLog, tailFile(c.devLog, 8<<10))
		case <-rctx.Done():
			return nil, fmt.Errorf("chaos: the dev cluster was not ready after %v; end of %s:\n%s", cfg.ReadyTimeout, c.devLog, tailFile(c.devLog, 8<<10))
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, n := range c.nodes {
		argv, err := devCommandLine(c.LogPath(n.info.ID))
		if err != nil {
			return nil, err
		}
		n.argv = argv
	}
	c.peers = cluster.NewPeers(c.grpcOf(RoleMeta), nil)
	if c.meta, err = cluster.NewMeta(cluster.MetaConfig{Peers: c.peers}); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// devCommandLine reads the command line the dev cluster started a node
// with: the first line of the node's log, "=== <time> dev cluster: <binary>
// <args...>". The dev cluster's paths hold no spaces (the harness picks them).
func devCommandLine(logPath string) ([]string, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if argv, ok := parseDevCommandLine(sc.Text()); ok {
			return argv, nil
		}
	}
	return nil, fmt.Errorf("chaos: no dev cluster command line in %s", logPath)
}

const devLinePrefix = " dev cluster: "

// parseDevCommandLine parses one "=== <time> dev cluster: <argv>" line.
func parseDevCommandLine(line string) ([]string, bool) {
	if !strings.HasPrefix(line, "=== ") {
		return nil, false
	}
	i := strings.Index(line, devLinePrefix)
	if i < 0 {
		return nil, false
	}
	argv := strings.Fields(line[i+len(devLinePrefix):])
	if len(argv) < 2 || argv[1] != "serve" {
		return nil, false
	}
	return argv, true
}

// restartArgs is the command line to start a node again: the dev cluster's
// own, except that a meta node that bootstrapped (no --join) and has Raft
// state now joins through the other meta nodes, as the dev cluster itself
// does when it starts m1 again.
func restartArgs(argv []string, hasRaftState bool, otherMeta []string) []string {
	out := slices.Clone(argv)
	if !hasRaftState || slices.Contains(out, "--join") || len(otherMeta) == 0 {
		return out
	}
	i := slices.Index(out, "--roles")
	if i < 0 || i+1 >= len(out) || !slices.Contains(strings.Split(out[i+1], ","), RoleMeta) {
		return out
	}
	return append(out, "--join", strings.Join(otherMeta, ","))
}

// Dir is the dev cluster's directory.
func (c *Cluster) Dir() string { return c.cfg.Dir }

// LogPath is the log file of node id.
func (c *Cluster) LogPath(id string) string { return filepath.Join(c.cfg.Dir, id+".log") }

// DataDir is the data directory of node id.
func (c *Cluster) DataDir(id string) string { return filepath.Join(c.cfg.Dir, id) }

// ShardDir is the shard directory of storage node id (the default
// --shard-dir of a cluster storage node: <data-dir>/shards/0).
func (c *Cluster) ShardDir(id string) string { return filepath.Join(c.cfg.Dir, id, "shards", "0") }

// Meta reads the cluster's metadata over gRPC like a frontend does.
func (c *Cluster) Meta() *cluster.Meta { return c.meta }

// Peers is the harness's gRPC connection cache to the nodes.
func (c *Cluster) Peers() *cluster.Peers { return c.peers }

// Nodes describes every node (pids are current).
func (c *Cluster) Nodes() []NodeInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]NodeInfo, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.info
	}
	return out
}

// IDs are the ids of the nodes with role ("" for every node).
func (c *Cluster) IDs(role string) []string {
	var out []string
	for _, n := range c.Nodes() {
		if role == "" || n.Has(role) {
			out = append(out, n.ID)
		}
	}
	return out
}

// Frontends are the base URLs of the api nodes.
func (c *Cluster) Frontends() []string {
	var out []string
	for _, n := range c.Nodes() {
		if n.HTTP != "" {
			out = append(out, n.HTTP)
		}
	}
	return out
}

func (c *Cluster) grpcOf(role string) []string {
	var out []string
	for _, n := range c.Nodes() {
		if n.Has(role) {
			out = append(out, n.GRPC)
		}
	}
	return out
}

// Info describes node id.
func (c *Cluster) Info(id string) (NodeInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.nodeLocked(id)
	if err != nil {
		return NodeInfo{}, err
	}
	return n.info, nil
}

// State is what the harness last did to node id.
func (c *Cluster) State(id string) NodeState {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.nodeLocked(id)
	if err != nil {
		return ""
	}
	return n.state
}

// Starts is how many times node id has been started.
func (c *Cluster) Starts(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.nodeLocked(id)
	if err != nil {
		return 0
	}
	return n.starts
}

func (c *Cluster) nodeLocked(id string) (*clusterNode, error) {
	for _, n := range c.nodes {
		if n.info.ID == id {
			return n, nil
		}
	}
	return nil, fmt.Errorf("chaos: no node %q", id)
}

// Kill sends SIGKILL to node id and waits until its process is gone.
func (c *Cluster) Kill(id string) error {
	return c.stop(id, syscall.SIGKILL, 0)
}

// Terminate sends SIGTERM to node id and waits up to timeout for it to
// exit, then SIGKILLs it. It reports whether the node exited by itself.
func (c *Cluster) Terminate(id string, timeout time.Duration) (clean bool, err error) {
	err = c.stop(id, syscall.SIGTERM, timeout)
	if errors.Is(err, errStillRunning) {
		c.cfg.Logf("chaos: %s still running %v after SIGTERM: SIGKILL", id, timeout)
		return false, c.stop(id, syscall.SIGKILL, 0)
	}
	return err == nil, err
}

var errStillRunning = errors.New("still running")

func (c *Cluster) stop(id string, sig syscall.Signal, timeout time.Duration) error {
	c.mu.Lock()
	n, err := c.nodeLocked(id)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if n.state != NodeRunning && n.state != NodePaused {
		c.mu.Unlock()
		return fmt.Errorf("chaos: %s is %s, not running", id, n.state)
	}
	pid, paused := n.info.PID, n.state == NodePaused
	done := n.ownDone
	n.state = NodeKilled // from now on its exit is expected
	c.mu.Unlock()

	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("chaos: %v to %s (pid %d): %w", sig, id, pid, err)
	}
	if paused && sig != syscall.SIGKILL {
		_ = syscall.Kill(pid, syscall.SIGCONT) // a stopped process cannot act on SIGTERM
	}
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		gone := false
		if done != nil {
			select {
			case <-done:
				gone = true
			default:
			}
		} else {
			gone = !pidAlive(pid)
		}
		if gone {
			return nil
		}
		if time.Now().After(deadline) {
			if sig == syscall.SIGKILL {
				return fmt.Errorf("chaos: %s (pid %d) still there %v after SIGKILL", id, pid, timeout)
			}
			return errStillRunning
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Pause sends SIGSTOP to node id: it keeps its sockets but answers nothing.
func (c *Cluster) Pause(id string) error {
	return c.pauseResume(id, true)
}

// Resume sends SIGCONT to a paused node.
func (c *Cluster) Resume(id string) error {
	return c.pauseResume(id, false)
}

func (c *Cluster) pauseResume(id string, pause bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.nodeLocked(id)
	if err != nil {
		return err
	}
	want, sig, next := NodeRunning, syscall.SIGCONT, NodeRunning
	if pause {
		sig, next = syscall.SIGSTOP, NodePaused
	} else {
		want = NodePaused
	}
	if n.state != want {
		return fmt.Errorf("chaos: cannot %v %s: it is %s", sig, id, n.state)
	}
	if err := syscall.Kill(n.info.PID, sig); err != nil {
		return fmt.Errorf("chaos: %v to %s (pid %d): %w", sig, id, n.info.PID, err)
	}
	n.state = next
	return nil
}

// Restart starts a killed node again with the dev cluster's command line,
// on the same ports and data directory, appending to its log. It does not
// wait for the node to be back: see WaitUp.
func (c *Cluster) Restart(id string) error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Second)
		}
		if lastErr = c.startOnce(id); lastErr != nil {
			return lastErr
		}
		// A port of ours may linger for a moment after a SIGKILL: a start
		// that dies at once for that reason is tried again.
		time.Sleep(300 * time.Millisecond)
		c.mu.Lock()
		n, _ := c.nodeLocked(id)
		done := n.ownDone
		c.mu.Unlock()
		select {
		case <-done:
			tail := tailFile(c.LogPath(id), 4<<10)
			lastErr = fmt.Errorf("chaos: %s exited right after its restart; end of its log:\n%s", id, tail)
			if !strings.Contains(tail, "address already in use") {
				return lastErr
			}
			c.cfg.Logf("chaos: %s: address in use at restart; trying again", id)
		default:
			return nil
		}
	}
	return lastErr
}

func (c *Cluster) startOnce(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.nodeLocked(id)
	if err != nil {
		return err
	}
	if n.state != NodeKilled && n.state != NodeCrashed {
		return fmt.Errorf("chaos: restart of %s, which is %s", id, n.state)
	}
	var others []string
	for _, o := range c.nodes {
		if o != n && o.info.Has(RoleMeta) {
			others = append(others, c.dialAddrLocked(o.info.ID, o.info.GRPC))
		}
	}
	_, statErr := os.Stat(filepath.Join(c.DataDir(id), "meta", "raft", "raft.db"))
	argv := restartArgs(n.argv, statErr == nil, others)
	logf, err := os.OpenFile(c.LogPath(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== %s chaos: restart #%d: %s\n", time.Now().Format(time.RFC3339Nano), n.starts, strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = c.cfg.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = nodeEnv()
	cmd.SysProcAttr = nodeProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("chaos: restarting %s: %w", id, err)
	}
	logf.Close()
	done := make(chan struct{})
	n.own, n.ownDone, n.state = cmd, done, NodeRunning
	n.info.PID = cmd.Process.Pid
	n.starts++
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return nil
}

// dialAddrLocked is the address other nodes dial for a node's gRPC port:
// its proxy once the Net is on.
func (c *Cluster) dialAddrLocked(id, bound string) string {
	if c.net != nil {
		if a := c.net.Addr(id, "grpc"); a != "" {
			return a
		}
	}
	return bound
}

// Net is the proxy layer between the nodes, or nil.
func (c *Cluster) Net() *Net {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.net
}

// EnableNet puts a proxy (Net) in front of every node's gRPC and Raft
// ports and restarts every node so that it advertises the proxies and joins
// through them: from then on every connection between two nodes passes a
// proxy, and links can be cut. See Replumb.
func (c *Cluster) EnableNet(ctx context.Context) error {
	return c.Replumb(ctx, true, nil)
}

// Replumb changes the command lines of the nodes and restarts them with
// the new ones before the workload starts: with proxies, every node is put
// behind the proxy layer (Net); metaArgs are added to every meta node's
// flags (for example a shorter --audit-interval, as the dev cluster's
// --dead-after 3s shortens a timer so that it fires within a run). Storage
// and api nodes (when they change) are restarted all at once, then the meta
// nodes one at a time, the leader last, each waited for.
func (c *Cluster) Replumb(ctx context.Context, proxies bool, metaArgs []string) error {
	if !proxies && len(metaArgs) == 0 {
		return nil
	}
	var n *Net
	bound := map[string]string{} // node gRPC address -> its proxy
	if proxies {
		n = NewNet(func() map[int]string {
			c.mu.Lock()
			defer c.mu.Unlock()
			out := map[int]string{}
			for _, nd := range c.nodes {
				if nd.state == NodeRunning || nd.state == NodePaused {
					out[nd.info.PID] = nd.info.ID
				}
			}
			return out
		})
		for _, info := range c.Nodes() {
			a, err := n.Proxy(info.ID, "grpc", info.GRPC)
			if err != nil {
				n.Close()
				return err
			}
			bound[info.GRPC] = a
			if info.Raft != "" {
				if _, err := n.Proxy(info.ID, "raft", info.Raft); err != nil {
					n.Close()
					return err
				}
			}
		}
	}
	c.mu.Lock()
	if n != nil {
		c.net = n
	}
	for _, nd := range c.nodes {
		if n != nil {
			nd.argv = proxiedArgs(nd.argv, n.Addr(nd.info.ID, "grpc"), n.Addr(nd.info.ID, "raft"), bound)
		}
		if nd.info.Has(RoleMeta) {
			nd.argv = append(nd.argv, metaArgs...)
		}
	}
	c.mu.Unlock()

	restart := func(ids []string) error {
		for _, id := range ids {
			if _, err := c.Terminate(id, 20*time.Second); err != nil {
				return err
			}
		}
		for _, id := range ids {
			if err := c.Restart(id); err != nil {
				return err
			}
		}
		wctx, cancel := context.WithTimeout(ctx, c.cfg.ReadyTimeout)
		defer cancel()
		for _, id := range ids {
			if err := c.WaitUp(wctx, id); err != nil {
				return err
			}
		}
		return nil
	}
	if proxies {
		var rest []string
		rest = append(rest, c.IDs(RoleStorage)...)
		rest = append(rest, c.IDs(RoleAPI)...)
		if err := restart(rest); err != nil {
			return fmt.Errorf("chaos: moving storage and api nodes behind proxies: %w", err)
		}
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	leader, err := c.WaitLeader(lctx)
	cancel()
	if err != nil {
		return err
	}
	var metas []string
	for _, id := range c.IDs(RoleMeta) {
		if id != leader {
			metas = append(metas, id)
		}
	}
	for _, id := range append(metas, leader) {
		if err := restart([]string{id}); err != nil {
			return fmt.Errorf("chaos: restarting %s with its new command line: %w", id, err)
		}
	}
	if !proxies {
		return nil
	}
	// Every node must now be known by its proxies.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := c.checkAdvertised(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: nodes behind proxies: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // frontends refresh their storage view every second
	return nil
}

// checkAdvertised checks that the registry and the Raft configuration
// know every node by its proxies.
func (c *Cluster) checkAdvertised(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	leader, err := c.Leader(cctx)
	if err != nil {
		return err
	}
	st, err := c.status(cctx, leader, false)
	if err != nil {
		return err
	}
	n := c.Net()
	for _, m := range st.Members {
		id := m.Node.GetId()
		if want := n.Addr(id, "grpc"); want != "" && m.Node.GetGrpcAddr() != want {
			return fmt.Errorf("%s registered with gRPC %s, not its proxy %s", id, m.Node.GetGrpcAddr(), want)
		}
		if want := n.Addr(id, "raft"); want != "" && m.Node.GetRaftAddr() != want {
			return fmt.Errorf("%s registered with Raft %s, not its proxy %s", id, m.Node.GetRaftAddr(), want)
		}
	}
	return nil
}

// proxiedArgs rewrites a node's command line to advertise its proxies and
// to join through the meta nodes' proxies.
func proxiedArgs(argv []string, grpcProxy, raftProxy string, proxyOf map[string]string) []string {
	out := slices.Clone(argv)
	if i := slices.Index(out, "--join"); i >= 0 && i+1 < len(out) {
		var addrs []string
		for _, a := range strings.Split(out[i+1], ",") {
			if p, ok := proxyOf[a]; ok {
				a = p
			}
			addrs = append(addrs, a)
		}
		out[i+1] = strings.Join(addrs, ",")
	}
	out = append(out, "--advertise-grpc-addr", grpcProxy)
	if raftProxy != "" {
		out = append(out, "--advertise-raft-addr", raftProxy)
	}
	return out
}

// CheckAlive looks for nodes that should run but whose process is gone (a
// crash): each is marked crashed and reported once. It returns every crash
// seen so far.
func (c *Cluster) CheckAlive() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.state != NodeRunning && n.state != NodePaused {
			continue
		}
		alive := true
		if n.ownDone != nil {
			select {
			case <-n.ownDone:
				alive = false
			default:
			}
		} else {
			alive = pidAlive(n.info.PID)
		}
		if !alive {
			n.state = NodeCrashed
			c.crash = append(c.crash, fmt.Sprintf("node %s (pid %d) exited on its own at %s; end of its log:\n%s",
				n.info.ID, n.info.PID, time.Now().Format(time.RFC3339), tailFile(c.LogPath(n.info.ID), 3<<10)))
		}
	}
	return slices.Clone(c.crash)
}

// pidAlive reports whether a process exists and is not a zombie.
func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false
		}
		return syscall.Kill(pid, 0) == nil
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		switch s[i+2] {
		case 'Z', 'X', 'x':
			return false
		}
	}
	return true
}

// status asks meta node id for the cluster status (a follower forwards the
// parts only the leader knows).
func (c *Cluster) status(ctx context.Context, id string, shards bool) (*cpb.StatusResponse, error) {
	info, err := c.Info(id)
	if err != nil {
		return nil, err
	}
	cl, err := c.peers.Client(info.GRPC)
	if err != nil {
		return nil, err
	}
	return cl.Status(ctx, &cpb.StatusRequest{ShardCounts: shards})
}

// Leader returns the id of the Raft leader as the leader itself reports it
// (a node that says it leads), asking the running meta nodes.
func (c *Cluster) Leader(ctx context.Context) (string, error) {
	var errs []error
	for _, id := range c.IDs(RoleMeta) {
		if c.State(id) != NodeRunning {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := c.status(cctx, id, false)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
			continue
		}
		if st.State == "Leader" && st.NodeId == st.Leader {
			return st.Leader, nil
		}
	}
	if len(errs) == 0 {
		return "", errors.New("chaos: no meta node says it leads")
	}
	return "", fmt.Errorf("chaos: no leader: %w", errors.Join(errs...))
}

// WaitLeader polls Leader until one is known or ctx ends.
func (c *Cluster) WaitLeader(ctx context.Context) (string, error) {
	var last error
	for {
		id, err := c.Leader(ctx)
		if err == nil {
			return id, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitUp waits until node id serves again: a frontend answers GET /v2/; a
// meta node knows a leader and has applied what the leader had committed
// when the wait began; a storage node is alive in the registry with a
// heartbeat newer than the start of the wait.
func (c *Cluster) WaitUp(ctx context.Context, id string) error {
	info, err := c.Info(id)
	if err != nil {
		return err
	}
	began := time.Now()
	var commit uint64
	var last error
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	for {
		if st := c.State(id); st != NodeRunning {
			return fmt.Errorf("chaos: waiting for %s: it is %s", id, st)
		}
		last = func() error {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			if info.Has(RoleAPI) {
				req, _ := http.NewRequestWithContext(cctx, http.MethodGet, info.HTTP+"/v2/", nil)
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("GET /v2/: %s", resp.Status)
				}
			}
			if info.Has(RoleMeta) {
				if commit == 0 {
					leader, err := c.Leader(cctx)
					if err != nil {
						return err
					}
					st, err := c.status(cctx, leader, false)
					if err != nil {
						return err
					}
					commit = st.CommitIndex
				}
				st, err := c.status(cctx, id, false)
				if err != nil {
					return err
				}
				if st.Leader == "" {
					return errors.New("knows no leader")
				}
				if st.AppliedIndex < commit {
					return fmt.Errorf("applied %d of %d", st.AppliedIndex, commit)
				}
			}
			if info.Has(RoleStorage) {
				m, err := c.member(cctx, id)
				if err != nil {
					return err
				}
				if m.Node.GetState() != metastore.NodeAlive {
					return fmt.Errorf("registry says %s", m.Node.GetState())
				}
				if m.LastHeartbeatUnixNano < began.UnixNano() {
					return errors.New("no heartbeat since the restart")
				}
			}
			return nil
		}()
		if last == nil {
			return nil
		}
		if tail := c.CheckAlive(); len(tail) > 0 && c.State(id) == NodeCrashed {
			return fmt.Errorf("chaos: %s crashed while coming back: %s", id, tail[len(tail)-1])
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("chaos: %s not back: %w (last: %v)", id, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// member returns the registry's view of node id, from the leader.
func (c *Cluster) member(ctx context.Context, id string) (*cpb.Member, error) {
	leader, err := c.Leader(ctx)
	if err != nil {
		return nil, err
	}
	st, err := c.status(ctx, leader, false)
	if err != nil {
		return nil, err
	}
	for _, m := range st.Members {
		if m.Node.GetId() == id {
			return m, nil
		}
	}
	return nil, fmt.Errorf("%s is not in the registry", id)
}

// Strata runs the strata binary with args (a client command such as
// `storage status --json`) and returns its standard output.
func (c *Cluster) Strata(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.cfg.Binary, args...)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "STRATA_") })
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("strata %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// RunningMetaGRPC is the gRPC address of a running meta node, preferring
// the leader.
func (c *Cluster) RunningMetaGRPC(ctx context.Context) (string, error) {
	if id, err := c.Leader(ctx); err == nil {
		info, _ := c.Info(id)
		return info.GRPC, nil
	}
	for _, n := range c.Nodes() {
		if n.Has(RoleMeta) && c.State(n.ID) == NodeRunning {
			return n.GRPC, nil
		}
	}
	return "", errors.New("chaos: no meta node running")
}

// LogProblems returns, per node, the log lines that show a crash of the
// server's own making: panics, fatal errors, data races.
func (c *Cluster) LogProblems() map[string][]string {
	out := map[string][]string{}
	for _, id := range c.IDs("") {
		b, err := os.ReadFile(c.LogPath(id))
		if err != nil {
			out[id] = []string{err.Error()}
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			for _, bad := range []string{"panic:", "fatal error:", "WARNING: DATA RACE", "SIGSEGV"} {
				if strings.Contains(line, bad) {
					out[id] = append(out[id], line)
					break
				}
			}
		}
	}
	return out
}

// CopyLogs copies every node's log, the dev cluster's own log and
// cluster.json into dst.
func (c *Cluster) CopyLogs(dst string) error {
	if err := os.MkdirAll(dst, 0o750); err != nil {
		return err
	}
	names := []string{"cluster.json", "devcluster.log"}
	for _, id := range c.IDs("") {
		names = append(names, id+".log")
	}
	var errs []error
	for _, name := range names {
		if err := copyFile(filepath.Join(c.cfg.Dir, name), filepath.Join(dst, name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Close stops everything: paused nodes are resumed, nodes the harness
// restarted get SIGTERM, the dev cluster gets SIGTERM (and stops the nodes
// it started), and whatever still runs after 30s is SIGKILLed.
func (c *Cluster) Close() {
	c.mu.Lock()
	var own []*clusterNode
	for _, n := range c.nodes {
		if n.state == NodePaused {
			_ = syscall.Kill(n.info.PID, syscall.SIGCONT)
			n.state = NodeRunning
		}
		if n.state == NodeRunning {
			n.state = NodeKilled
			if n.own != nil {
				own = append(own, n)
				_ = n.own.Process.Signal(syscall.SIGTERM)
			}
		}
	}
	c.mu.Unlock()
	if c.dev != nil {
		_ = c.dev.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(30 * time.Second)
	for _, n := range own {
		select {
		case <-n.ownDone:
		case <-deadline:
			_ = n.own.Process.Kill()
			<-n.ownDone
		}
	}
	if c.dev != nil {
		select {
		case <-c.devDone:
		case <-deadline:
			_ = c.dev.Process.Kill()
			<-c.devDone
		}
	}
	// Anything left (a dev cluster killed before it could stop a node).
	c.mu.Lock()
	for _, n := range c.nodes {
		if n.own == nil && pidAlive(n.info.PID) {
			_ = syscall.Kill(n.info.PID, syscall.SIGKILL)
		}
	}
	c.mu.Unlock()
	if c.peers != nil {
		c.peers.Close()
	}
	if c.net != nil {
		c.net.Close()
	}
}

// nodeEnv is the environment of the dev cluster and its nodes: none of the
// caller's STRATA_* settings, and an audit of the storage nodes every few
// seconds, so that shards deleted on disk are found within a run (serve
// reads STRATA_<FLAG> for flags not given).
func nodeEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "STRATA_") })
	return append(env, "STRATA_AUDIT_INTERVAL=5s")
}
