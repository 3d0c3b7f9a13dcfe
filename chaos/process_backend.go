package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strata-registry/strata/chaos/failpoint"
)

// ClusterConfig configures the process backend: a multi-node cluster that
// `strata dev cluster` starts on 127.0.0.1, as a child process.
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
	// Env is added to the environment of the dev cluster and of every
	// node (serve reads STRATA_<FLAG> for flags not given, and a binary
	// built with failpoints reads STRATA_FAILPOINTS and
	// STRATA_FAILPOINTS_ADDR).
	Env []string
	// ShardFS, when not zero, mounts a tmpfs of that many bytes on every
	// storage node's shard directory before the cluster starts, so that a
	// storage node's disk can really fill up (the full-disk fault). It
	// needs root (mount(2)); the mounts are undone by Close.
	ShardFS int64
	// ReadyTimeout bounds the start of the cluster and of each restarted
	// node. Default 120s.
	ReadyTimeout time.Duration
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// processBackend is the Backend of `strata dev cluster`: every node is a
// process on 127.0.0.1. The dev cluster restarts nothing itself: the
// backend kills nodes by pid and starts them again with the command line
// the dev cluster gave them (the first line it wrote into the node's log),
// on the same ports and data directory. A node the backend started becomes
// its child.
type processBackend struct {
	cfg     ClusterConfig
	dev     *exec.Cmd
	devDone chan struct{}
	devLog  string

	mu     sync.Mutex
	nodes  []*procNode // in cluster.json order
	net    *Net        // nil until Prepare puts proxies in
	mounts []string    // tmpfs mounted on shard directories
}

// procNode is one node's process and how to start it again.
type procNode struct {
	info NodeInfo
	argv []string // the command line the dev cluster started it with
	// own is set when the backend (re)started the process itself; it is
	// then our child, reaped by a goroutine that closes ownDone.
	own      *exec.Cmd
	ownDone  chan struct{}
	exitCode int
	starts   int
}

// StartCluster runs `strata dev cluster` in cfg.Dir and returns a Cluster
// over it once cluster.json is written (every frontend takes pushes by then).
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
	b := &processBackend{cfg: cfg, devDone: make(chan struct{}), devLog: filepath.Join(cfg.Dir, "devcluster.log")}
	ok := false
	defer func() {
		if !ok {
			b.Close()
		}
	}()
	if cfg.ShardFS > 0 {
		for i := 1; i <= cfg.Storage; i++ {
			if err := b.mountShardFS(fmt.Sprintf("s%d", i), cfg.ShardFS); err != nil {
				return nil, err
			}
		}
	}
	logf, err := os.OpenFile(b.devLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	args := []string{"dev", "cluster", "--dir", cfg.Dir,
		"--meta", fmt.Sprint(cfg.Meta), "--storage", fmt.Sprint(cfg.Storage), "--api", fmt.Sprint(cfg.API),
		"--dead-after", cfg.DeadAfter.String(), "--ready-timeout", cfg.ReadyTimeout.String()}
	for _, kv := range b.nodeEnv() {
		args = append(args, "--node-env", kv)
	}
	args = append(args, cfg.ExtraArgs...)
	cmd := exec.Command(cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = b.env(nil)
	// If the harness dies, the dev cluster gets SIGTERM and stops its nodes.
	cmd.SysProcAttr = devClusterProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("chaos: starting %s %s: %w", cfg.Binary, strings.Join(args, " "), err)
	}
	logf.Close()
	b.dev = cmd
	go func() {
		_ = cmd.Wait()
		close(b.devDone)
	}()
	cfg.Logf("chaos: started strata %s (pid %d)", strings.Join(args, " "), cmd.Process.Pid)

	rctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	path := filepath.Join(cfg.Dir, "cluster.json")
	for {
		if raw, err := os.ReadFile(path); err == nil {
			var f struct {
				Nodes []NodeInfo `json:"nodes"`
			}
			if err := json.Unmarshal(raw, &f); err != nil {
				return nil, fmt.Errorf("chaos: %s: %w", path, err)
			}
			for _, n := range f.Nodes {
				b.nodes = append(b.nodes, &procNode{info: n, starts: 1, exitCode: -1})
			}
			break
		}
		select {
		case <-b.devDone:
			return nil, fmt.Errorf("chaos: strata dev cluster exited before it was ready; end of %s:\n%s", b.devLog, tailFile(b.devLog, 8<<10))
		case <-rctx.Done():
			return nil, fmt.Errorf("chaos: the dev cluster was not ready after %v; end of %s:\n%s", cfg.ReadyTimeout, b.devLog, tailFile(b.devLog, 8<<10))
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, n := range b.nodes {
		argv, err := devCommandLine(b.LogPath(n.info.ID))
		if err != nil {
			return nil, err
		}
		n.argv = argv
	}
	c, err := NewCluster(b, cfg.Binary, cfg.ReadyTimeout, cfg.Logf)
	if err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// mountShardFS mounts a tmpfs of size bytes on storage node id's shard
// directory (which the dev cluster will then use as it is).
func (b *processBackend) mountShardFS(id string, size int64) error {
	dir := b.ShardDir(id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0750", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("chaos: a full disk needs a small filesystem per storage node: mount -t tmpfs on %s: %v: %s (it needs root; see docs/CHAOS.md)",
			dir, err, strings.TrimSpace(string(out)))
	}
	b.mu.Lock()
	b.mounts = append(b.mounts, dir)
	b.mu.Unlock()
	return nil
}

// fillerName is the file Fill writes into a shard directory.
const fillerName = "chaos-filler"

// Fill fills storage node id's shard filesystem, leaving about leave
// bytes free, with a file the node knows nothing about; Unfill deletes it.
func (b *processBackend) Fill(id string, leave int64) (int64, error) {
	dir := b.ShardDir(id)
	b.mu.Lock()
	mounted := slices.Contains(b.mounts, dir)
	b.mu.Unlock()
	if !mounted {
		return 0, fmt.Errorf("chaos: %s has no filesystem of its own to fill (ClusterConfig.ShardFS)", id)
	}
	return fillDir(dir, leave)
}

// Unfill deletes the filler file of Fill.
func (b *processBackend) Unfill(id string) error {
	err := os.Remove(filepath.Join(b.ShardDir(id), fillerName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// fillDir writes a filler file into dir until the filesystem has about
// leave bytes free (or refuses more), and syncs it.
func fillDir(dir string, leave int64) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	want := free - leave
	if want <= 0 {
		return 0, nil
	}
	f, err := os.OpenFile(filepath.Join(dir, fillerName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for n < want {
		k, err := f.Write(buf[:min(int64(len(buf)), want-n)])
		n += int64(k)
		if err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			return n, err
		}
	}
	return n, f.Sync()
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

func (b *processBackend) Name() string { return "process" }

// Dir is the dev cluster's directory.
func (b *processBackend) Dir() string { return b.cfg.Dir }

// LogPath is the log file of node id.
func (b *processBackend) LogPath(id string) string { return filepath.Join(b.cfg.Dir, id+".log") }

// DataDir is the data directory of node id.
func (b *processBackend) DataDir(id string) string { return filepath.Join(b.cfg.Dir, id) }

// ShardDir is the shard directory of storage node id (the default
// --shard-dir of a cluster storage node: <data-dir>/shards/0).
func (b *processBackend) ShardDir(id string) string {
	return filepath.Join(b.cfg.Dir, id, "shards", "0")
}

func (b *processBackend) Log(id string) ([]byte, error) { return os.ReadFile(b.LogPath(id)) }

func (b *processBackend) Nodes() []NodeInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]NodeInfo, len(b.nodes))
	for i, n := range b.nodes {
		out[i] = n.info
	}
	return out
}

func (b *processBackend) node(id string) (*procNode, error) {
	for _, n := range b.nodes {
		if n.info.ID == id {
			return n, nil
		}
	}
	return nil, fmt.Errorf("chaos: no node %q", id)
}

// nodeEnv is what every node gets in its environment (the dev cluster
// passes it on with --node-env): an audit of the storage nodes every few
// seconds, so that shards deleted on disk are found within a run (serve
// reads STRATA_<FLAG> for flags not given), and ClusterConfig.Env.
func (b *processBackend) nodeEnv() []string {
	return append([]string{"STRATA_AUDIT_INTERVAL=5s"}, b.cfg.Env...)
}

// env is the environment of the dev cluster (extra nil) and of a node the
// backend starts: none of the caller's STRATA_* settings, then nodeEnv and
// extra.
func (b *processBackend) env(extra []string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "STRATA_") })
	if extra == nil {
		return env
	}
	env = append(env, b.nodeEnv()...)
	return append(env, extra...)
}

func (b *processBackend) Kill(id string) error {
	return b.signal(id, syscall.SIGKILL, 0)
}

func (b *processBackend) Stop(id string, timeout time.Duration) (bool, error) {
	err := b.signal(id, syscall.SIGTERM, timeout)
	if errors.Is(err, errStillRunning) {
		b.cfg.Logf("chaos: %s still running %v after SIGTERM: SIGKILL", id, timeout)
		return false, b.signal(id, syscall.SIGKILL, 0)
	}
	return err == nil, err
}

var errStillRunning = errors.New("still running")

// signal sends sig to node id (SIGCONT after it, so that a stopped process
// can act on it) and waits up to timeout (default 30s) for it to be gone.
func (b *processBackend) signal(id string, sig syscall.Signal, timeout time.Duration) error {
	b.mu.Lock()
	n, err := b.node(id)
	if err != nil {
		b.mu.Unlock()
		return err
	}
	pid, done := n.info.PID, n.ownDone
	b.mu.Unlock()

	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("chaos: %v to %s (pid %d): %w", sig, id, pid, err)
	}
	if sig != syscall.SIGKILL {
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

func (b *processBackend) Pause(id string) error  { return b.sendTo(id, syscall.SIGSTOP) }
func (b *processBackend) Resume(id string) error { return b.sendTo(id, syscall.SIGCONT) }

func (b *processBackend) sendTo(id string, sig syscall.Signal) error {
	b.mu.Lock()
	n, err := b.node(id)
	b.mu.Unlock()
	if err != nil {
		return err
	}
	if err := syscall.Kill(n.info.PID, sig); err != nil {
		return fmt.Errorf("chaos: %v to %s (pid %d): %w", sig, id, n.info.PID, err)
	}
	return nil
}

func (b *processBackend) Exited(id string) (bool, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.node(id)
	if err != nil {
		return true, -1
	}
	if n.ownDone != nil {
		select {
		case <-n.ownDone:
			return true, n.exitCode
		default:
			return false, -1
		}
	}
	return !pidAlive(n.info.PID), -1
}

// Start starts node id again with the dev cluster's command line, on the
// same ports and data directory, appending to its log; a start that dies
// at once because a port of ours lingers after a kill is tried again.
func (b *processBackend) Start(id string, env []string) error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Second)
		}
		done, err := b.startOnce(id, env)
		if err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond)
		select {
		case <-done:
			tail := tailFile(b.LogPath(id), 4<<10)
			if failpointExit(tail) {
				return nil // armed at start-up and fired at once: the caller expects it
			}
			lastErr = fmt.Errorf("chaos: %s exited right after its restart; end of its log:\n%s", id, tail)
			if !strings.Contains(tail, "address already in use") {
				return lastErr
			}
			b.cfg.Logf("chaos: %s: address in use at restart; trying again", id)
		default:
			return nil
		}
	}
	return lastErr
}

// failpointExit reports whether a node's log ends with its process ended by
// a failpoint (since its latest start).
func failpointExit(log string) bool {
	i := strings.LastIndex(log, "\n=== ")
	if i < 0 {
		i = 0
	}
	for _, line := range strings.Split(log[i:], "\n") {
		if strings.HasPrefix(line, "failpoint ") && strings.HasSuffix(line, ": exit") {
			return true
		}
	}
	return false
}

func (b *processBackend) startOnce(id string, env []string) (<-chan struct{}, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.node(id)
	if err != nil {
		return nil, err
	}
	var others []string
	for _, o := range b.nodes {
		if o != n && o.info.Has(RoleMeta) {
			others = append(others, b.dialAddrLocked(o.info.ID, o.info.GRPC))
		}
	}
	_, statErr := os.Stat(filepath.Join(b.DataDir(id), "meta", "raft", "raft.db"))
	argv := restartArgs(n.argv, statErr == nil, others)
	logf, err := os.OpenFile(b.LogPath(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	line := fmt.Sprintf("=== %s chaos: restart #%d: %s", time.Now().Format(time.RFC3339Nano), n.starts, strings.Join(argv, " "))
	if len(env) > 0 {
		line += "   (environment: " + strings.Join(env, " ") + ")"
	}
	fmt.Fprintln(logf, line)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = b.cfg.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = b.env(append([]string{}, env...))
	cmd.SysProcAttr = nodeProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("chaos: restarting %s: %w", id, err)
	}
	logf.Close()
	done := make(chan struct{})
	n.own, n.ownDone, n.exitCode = cmd, done, -1
	n.info.PID = cmd.Process.Pid
	n.starts++
	go func() {
		_ = cmd.Wait()
		b.mu.Lock()
		n.exitCode = cmd.ProcessState.ExitCode()
		b.mu.Unlock()
		close(done)
	}()
	return done, nil
}

// dialAddrLocked is the address other nodes dial for a node's gRPC port:
// its proxy once the Net is on.
func (b *processBackend) dialAddrLocked(id, bound string) string {
	if b.net != nil {
		if a := b.net.Addr(id, "grpc"); a != "" {
			return a
		}
	}
	return bound
}

// Net is the proxy layer between the nodes, or nil.
func (b *processBackend) Net() *Net {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.net
}

func (b *processBackend) CanCut() bool { return b.Net() != nil }

func (b *processBackend) Cut(node string, others []string) error {
	n := b.Net()
	if n == nil {
		return errors.New("chaos: no proxy layer to cut links with")
	}
	for _, o := range others {
		n.Cut(node, o)
	}
	return nil
}

func (b *processBackend) Heal() error {
	if n := b.Net(); n != nil {
		n.Heal()
	}
	return nil
}

// Prepare changes the command lines of the nodes and restarts them with
// the new ones before the workload starts: with proxies, every node is put
// behind the proxy layer (Net); metaArgs are added to every meta node's
// flags (for example a shorter --audit-interval, as the dev cluster's
// --dead-after 3s shortens a timer so that it fires within a run). Storage
// and api nodes (when they change) are restarted all at once, then the meta
// nodes one at a time, the leader last, each waited for.
func (b *processBackend) Prepare(ctx context.Context, c *Cluster, proxies bool, metaArgs []string) error {
	if !proxies && len(metaArgs) == 0 {
		return nil
	}
	var n *Net
	bound := map[string]string{} // node gRPC address -> its proxy
	if proxies {
		n = NewNet(func() map[int]string {
			out := map[int]string{}
			for _, info := range b.Nodes() {
				if st := c.State(info.ID); st == NodeRunning || st == NodePaused {
					out[info.PID] = info.ID
				}
			}
			return out
		})
		for _, info := range b.Nodes() {
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
	b.mu.Lock()
	if n != nil {
		b.net = n
	}
	for _, nd := range b.nodes {
		if n != nil {
			nd.argv = proxiedArgs(nd.argv, n.Addr(nd.info.ID, "grpc"), n.Addr(nd.info.ID, "raft"), bound)
		}
		if nd.info.Has(RoleMeta) {
			nd.argv = append(nd.argv, metaArgs...)
		}
	}
	b.mu.Unlock()

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
		wctx, cancel := context.WithTimeout(ctx, b.cfg.ReadyTimeout)
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
		err := b.checkAdvertised(ctx, c)
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
func (b *processBackend) checkAdvertised(ctx context.Context, c *Cluster) error {
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
	n := b.Net()
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

// FailpointURL finds the URL of node id's failpoint endpoint in its log:
// the line the node printed at start-up (with STRATA_FAILPOINTS_ADDR set
// and a binary built with failpoints) after its latest start, waiting for
// it up to ctx.
func (b *processBackend) FailpointURL(ctx context.Context, id string) (string, error) {
	for {
		raw, err := b.Log(id)
		if err != nil {
			return "", err
		}
		url := ""
		for _, line := range strings.Split(string(raw), "\n") {
			switch {
			case strings.HasPrefix(line, "=== "): // a (re)start: what came before is an older process's
				url = ""
			case strings.HasPrefix(line, failpoint.ListeningPrefix):
				url = strings.TrimSpace(strings.TrimPrefix(line, failpoint.ListeningPrefix))
			}
		}
		if url != "" {
			return url, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("chaos: %s has no failpoint endpoint (is %s built with -tags failpoints? make build-failpoints): %w",
				id, b.cfg.Binary, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
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

// CopyLogs copies every node's log, the dev cluster's own log and
// cluster.json into dst.
func (b *processBackend) CopyLogs(dst string) error {
	if err := os.MkdirAll(dst, 0o750); err != nil {
		return err
	}
	names := []string{"cluster.json", "devcluster.log"}
	for _, n := range b.Nodes() {
		names = append(names, n.ID+".log")
	}
	var errs []error
	for _, name := range names {
		if err := copyFile(filepath.Join(b.cfg.Dir, name), filepath.Join(dst, name)); err != nil {
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

// Close stops everything: every node is resumed (a stopped process cannot
// act on SIGTERM), nodes the backend restarted get SIGTERM, the dev cluster
// gets SIGTERM (and stops the nodes it started), whatever still runs after
// 30s is SIGKILLed, and the tmpfs mounts are undone.
func (b *processBackend) Close() {
	b.mu.Lock()
	var own []*procNode
	for _, n := range b.nodes {
		if n.info.PID > 0 {
			_ = syscall.Kill(n.info.PID, syscall.SIGCONT)
		}
		if n.own != nil {
			select {
			case <-n.ownDone:
			default:
				own = append(own, n)
				_ = n.own.Process.Signal(syscall.SIGTERM)
			}
		}
	}
	b.mu.Unlock()
	if b.dev != nil {
		_ = b.dev.Process.Signal(syscall.SIGTERM)
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
	if b.dev != nil {
		select {
		case <-b.devDone:
		case <-deadline:
			_ = b.dev.Process.Kill()
			<-b.devDone
		}
	}
	// Anything left (a dev cluster killed before it could stop a node).
	b.mu.Lock()
	for _, n := range b.nodes {
		if n.own == nil && pidAlive(n.info.PID) {
			_ = syscall.Kill(n.info.PID, syscall.SIGKILL)
		}
	}
	mounts := b.mounts
	b.mounts = nil
	net := b.net
	b.mu.Unlock()
	if net != nil {
		net.Close()
	}
	for _, dir := range mounts {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			b.cfg.Logf("chaos: umount %s: %v: %s", dir, err, strings.TrimSpace(string(out)))
		}
	}
}
