package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
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

// clusterNode is what the harness knows of one node.
type clusterNode struct {
	id     string
	state  NodeState
	starts int
	// expectExit is set while the node is meant to end by itself (a
	// failpoint armed to exit): its exit is then not a crash.
	expectExit bool
	exitCode   int // of the last exit seen, -1 if unknown
}

// Cluster is a multi-node Strata cluster under the chaos harness: whatever
// runs the nodes (a Backend: processes on loopback, or containers), the
// harness kills, stops, pauses, cuts off and restarts them through Cluster,
// which keeps what it did to each node, notices nodes that exit on their
// own, and talks to the nodes over HTTP and gRPC (leader, status, layouts,
// shards) and through the strata command-line client.
//
// Methods are safe for concurrent use.
type Cluster struct {
	be           Backend
	binary       string // the strata binary the harness runs client commands with
	readyTimeout time.Duration
	logf         func(format string, args ...any)

	mu    sync.Mutex
	nodes []*clusterNode // in the backend's order: m*, s*, a*
	crash []string       // unexpected exits seen so far

	peers *cluster.Peers
	meta  *cluster.Meta
}

// NewCluster puts a Cluster over the nodes be runs, which must all be up.
// binary is the strata binary for client commands (strata storage status,
// strata gc run) run on this machine.
func NewCluster(be Backend, binary string, readyTimeout time.Duration, logf func(string, ...any)) (*Cluster, error) {
	if readyTimeout == 0 {
		readyTimeout = 120 * time.Second
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c := &Cluster{be: be, binary: binary, readyTimeout: readyTimeout, logf: logf}
	for _, n := range be.Nodes() {
		c.nodes = append(c.nodes, &clusterNode{id: n.ID, state: NodeRunning, starts: 1, exitCode: -1})
	}
	c.peers = cluster.NewPeers(c.grpcOf(RoleMeta), nil)
	var err error
	if c.meta, err = cluster.NewMeta(cluster.MetaConfig{Peers: c.peers}); err != nil {
		return nil, err
	}
	return c, nil
}

// Backend is what runs the nodes.
func (c *Cluster) Backend() Backend { return c.be }

// ShardDir is the shard directory of storage node id as the harness can
// reach it, or "".
func (c *Cluster) ShardDir(id string) string { return c.be.ShardDir(id) }

// LogPath is the log file of node id, when the backend keeps its logs in
// files (the process backend), else "".
func (c *Cluster) LogPath(id string) string {
	if pb, ok := c.be.(*processBackend); ok {
		return pb.LogPath(id)
	}
	return ""
}

// Meta reads the cluster's metadata over gRPC like a frontend does.
func (c *Cluster) Meta() *cluster.Meta { return c.meta }

// Peers is the harness's gRPC connection cache to the nodes.
func (c *Cluster) Peers() *cluster.Peers { return c.peers }

// Nodes describes every node (pids are current).
func (c *Cluster) Nodes() []NodeInfo { return c.be.Nodes() }

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
	for _, n := range c.Nodes() {
		if n.ID == id {
			return n, nil
		}
	}
	return NodeInfo{}, fmt.Errorf("chaos: no node %q", id)
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
		if n.id == id {
			return n, nil
		}
	}
	return nil, fmt.Errorf("chaos: no node %q", id)
}

// take moves node id from one of the states from to state to, and fails
// if it is in none of them.
func (c *Cluster) take(id string, to NodeState, from ...NodeState) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.nodeLocked(id)
	if err != nil {
		return err
	}
	if !slices.Contains(from, n.state) {
		return fmt.Errorf("chaos: %s is %s, not %v", id, n.state, from)
	}
	n.state = to
	return nil
}

// Kill sends SIGKILL to node id (docker kill for containers) and waits
// until it is gone.
func (c *Cluster) Kill(id string) error {
	if err := c.take(id, NodeKilled, NodeRunning, NodePaused); err != nil {
		return err
	}
	return c.be.Kill(id)
}

// Terminate stops node id with SIGTERM, waits up to timeout for it to exit,
// then kills it. It reports whether the node exited by itself.
func (c *Cluster) Terminate(id string, timeout time.Duration) (clean bool, err error) {
	if err := c.take(id, NodeKilled, NodeRunning, NodePaused); err != nil {
		return false, err
	}
	return c.be.Stop(id, timeout)
}

// Pause freezes node id (SIGSTOP): it keeps its sockets but answers nothing.
func (c *Cluster) Pause(id string) error {
	if err := c.take(id, NodePaused, NodeRunning); err != nil {
		return err
	}
	if err := c.be.Pause(id); err != nil {
		_ = c.take(id, NodeRunning, NodePaused)
		return err
	}
	return nil
}

// Resume thaws a paused node.
func (c *Cluster) Resume(id string) error {
	if err := c.take(id, NodeRunning, NodePaused); err != nil {
		return err
	}
	if err := c.be.Resume(id); err != nil {
		_ = c.take(id, NodePaused, NodeRunning)
		return err
	}
	return nil
}

// Restart starts a stopped node again on the same data and addresses. It
// does not wait for the node to be back: see WaitUp.
func (c *Cluster) Restart(id string) error { return c.RestartWith(id, nil, false) }

// RestartWith is Restart with env added to the node's environment for this
// start (the process backend: a failpoint armed at start-up); expectExit
// marks the node as meant to exit by itself (see ExpectExit).
func (c *Cluster) RestartWith(id string, env []string, expectExit bool) error {
	c.mu.Lock()
	n, err := c.nodeLocked(id)
	if err == nil && n.state != NodeKilled && n.state != NodeCrashed {
		err = fmt.Errorf("chaos: restart of %s, which is %s", id, n.state)
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if expectExit {
		c.ExpectExit(id, true) // it may exit before Start returns
	}
	if err := c.be.Start(id, env); err != nil {
		return err
	}
	c.mu.Lock()
	n.state, n.expectExit = NodeRunning, expectExit
	n.starts++
	c.mu.Unlock()
	return nil
}

// ExpectExit marks node id as meant to exit by itself (a failpoint armed
// to end it): when it does, CheckAlive counts it stopped, not crashed.
func (c *Cluster) ExpectExit(id string, expect bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, err := c.nodeLocked(id); err == nil {
		n.expectExit = expect
	}
}

// WaitExit waits until node id, marked with ExpectExit, has exited, and
// returns its exit code (-1 when the backend cannot tell).
func (c *Cluster) WaitExit(ctx context.Context, id string) (int, error) {
	for {
		c.CheckAlive()
		c.mu.Lock()
		n, err := c.nodeLocked(id)
		if err != nil {
			c.mu.Unlock()
			return -1, err
		}
		st, code := n.state, n.exitCode
		c.mu.Unlock()
		switch st {
		case NodeKilled:
			return code, nil
		case NodeCrashed:
			return code, fmt.Errorf("chaos: %s exited, but it was not expected to", id)
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("chaos: %s still running: %w", id, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// CanCut reports whether links between nodes can be cut (a partition);
// without, partitions stop the side cut off instead.
func (c *Cluster) CanCut() bool { return c.be.CanCut() }

// Cut cuts node off from others, both ways.
func (c *Cluster) Cut(node string, others []string) error { return c.be.Cut(node, others) }

// Heal restores every link cut.
func (c *Cluster) Heal() error { return c.be.Heal() }

// Net is the process backend's proxy layer between the nodes, or nil.
func (c *Cluster) Net() *Net {
	if pb, ok := c.be.(*processBackend); ok {
		return pb.Net()
	}
	return nil
}

// Prepare changes the nodes' command lines before the workload starts,
// when the backend needs to: the proxy layer (process backend) and flags
// for the meta nodes. The compose backend needs no proxies to cut links
// and gives the meta nodes their flags when it starts them.
func (c *Cluster) Prepare(ctx context.Context, proxies bool, metaArgs []string) error {
	if p, ok := c.be.(prepper); ok {
		return p.Prepare(ctx, c, proxies, metaArgs)
	}
	return nil
}

// CheckAlive looks for nodes that should run but whose process or
// container is gone: a node marked with ExpectExit is then stopped, any
// other has crashed and is reported once. It returns every crash seen so
// far.
func (c *Cluster) CheckAlive() []string {
	c.mu.Lock()
	var check []*clusterNode
	for _, n := range c.nodes {
		if n.state == NodeRunning || n.state == NodePaused {
			check = append(check, n)
		}
	}
	c.mu.Unlock()
	for _, n := range check {
		exited, code := c.be.Exited(n.id)
		if !exited {
			continue
		}
		var tail string
		c.mu.Lock()
		if n.state != NodeRunning && n.state != NodePaused {
			c.mu.Unlock()
			continue
		}
		n.exitCode = code
		if n.expectExit {
			n.state, n.expectExit = NodeKilled, false
			c.mu.Unlock()
			continue
		}
		n.state = NodeCrashed
		c.mu.Unlock()
		if b, err := c.be.Log(n.id); err == nil {
			tail = string(b[max(0, len(b)-3<<10):])
		}
		c.mu.Lock()
		c.crash = append(c.crash, fmt.Sprintf("node %s exited on its own (code %d) at %s; end of its log:\n%s",
			n.id, code, time.Now().Format(time.RFC3339), tail))
		c.mu.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.crash)
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
	cmd := exec.CommandContext(ctx, c.binary, args...)
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
		b, err := c.be.Log(id)
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

// CopyLogs copies every node's log, and the backend's own, into dst.
func (c *Cluster) CopyLogs(dst string) error { return c.be.CopyLogs(dst) }

// Remove deletes what the backend created and Close left for the checks
// (the compose backend's containers, networks and volumes).
func (c *Cluster) Remove() {
	if r, ok := c.be.(interface{ Remove() }); ok {
		r.Remove()
	}
}

// Close stops every node and the backend.
func (c *Cluster) Close() {
	c.be.Close()
	if c.peers != nil {
		c.peers.Close()
	}
}
