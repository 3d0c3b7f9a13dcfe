package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strata-registry/strata/deploy"
)

// ComposeConfig configures the compose backend: the cluster of
// deploy/compose.yaml (3 meta, 6 storage, 2 api, strata-lb) run by Docker
// Compose from the images `make image` builds.
type ComposeConfig struct {
	// Dir holds the compose files and, once the cluster is stopped, the
	// containers' logs. Required.
	Dir string
	// Project is the compose project name (default: strata-chaos- and a
	// few random letters).
	Project string
	// Image and LBImage are the images (default strata:dev, strata-lb:dev).
	Image, LBImage string
	// DeadAfter is every node's --dead-after (default 3s).
	DeadAfter time.Duration
	// MetaEnv (KEY=VALUE) is added to the meta nodes' environment.
	MetaEnv []string
	// ReadyTimeout bounds the start of the cluster and of each restarted
	// node. Default 3m.
	ReadyTimeout time.Duration
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// composeBackend is the Backend of containers: the nodes of
// deploy/compose.yaml, each in a container on a fixed address of a private
// network that this machine routes to. Faults are docker's own: docker kill
// -s KILL, docker stop and start, docker pause and unpause, and docker
// network disconnect and connect (a node cut off the network altogether:
// from the other nodes and from the harness alike).
type composeBackend struct {
	cfg     ComposeConfig
	compose []string // docker compose, or docker-compose
	files   []string // -f arguments
	env     []string
	net     string // STRATA_NET: the first three octets
	network string // the docker network of the nodes
	lock    *os.File

	mu        sync.Mutex
	nodes     []NodeInfo
	container map[string]string // node id -> container id
	cut       map[string]bool
	inspected time.Time
	state     map[string]containerState
	shardDirs map[string]string
	saved     map[string][]byte // logs saved when the cluster stopped
	stopped   bool
	removed   bool
}

type containerState struct {
	running bool
	code    int
}

// composeNodes are the services of deploy/compose.yaml and the last octet
// of their address.
var composeNodes = []struct {
	id    string
	roles []string
	host  int
}{
	{"m1", []string{RoleMeta}, 11}, {"m2", []string{RoleMeta}, 12}, {"m3", []string{RoleMeta}, 13},
	{"s1", []string{RoleStorage}, 21}, {"s2", []string{RoleStorage}, 22}, {"s3", []string{RoleStorage}, 23},
	{"s4", []string{RoleStorage}, 24}, {"s5", []string{RoleStorage}, 25}, {"s6", []string{RoleStorage}, 26},
	{"a1", []string{RoleAPI}, 31}, {"a2", []string{RoleAPI}, 32},
}

// ComposeCommand finds a working Docker Compose: the docker plugin, else
// docker-compose; an error when neither (or docker itself) answers.
func ComposeCommand() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := exec.CommandContext(ctx, "docker", "info").Run(); err != nil {
		return nil, fmt.Errorf("docker is not reachable: %w", err)
	}
	for _, c := range [][]string{{"docker", "compose"}, {"docker-compose"}} {
		if _, err := exec.LookPath(c[0]); err != nil {
			continue
		}
		if err := exec.CommandContext(ctx, c[0], append(c[1:], "version")...).Run(); err == nil {
			return c, nil
		}
	}
	return nil, errors.New("neither `docker compose` nor `docker-compose` works")
}

// StartCompose brings up the compose cluster and returns a Cluster over it
// once every node serves and a push through every frontend went through.
// binary is the strata binary the harness runs client commands with (on
// this machine; it must speak to the image's version).
func StartCompose(ctx context.Context, cfg ComposeConfig, binary string) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("chaos: ComposeConfig needs Dir")
	}
	if cfg.Project == "" {
		cfg.Project = fmt.Sprintf("strata-chaos-%x", rand.Uint32()&0xffffff)
	}
	if cfg.Image == "" {
		cfg.Image = "strata:dev"
	}
	if cfg.LBImage == "" {
		cfg.LBImage = "strata-lb:dev"
	}
	if cfg.DeadAfter == 0 {
		cfg.DeadAfter = 3 * time.Second
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 3 * time.Minute
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	compose, err := ComposeCommand()
	if err != nil {
		return nil, fmt.Errorf("chaos: the compose backend: %w", err)
	}
	for _, img := range []string{cfg.Image, cfg.LBImage} {
		if out, err := exec.Command("docker", "image", "inspect", img).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("chaos: image %s: %v: %s (make image builds it)", img, err, bytes.TrimSpace(out))
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, err
	}
	b := &composeBackend{cfg: cfg, compose: compose, container: map[string]string{}, cut: map[string]bool{},
		shardDirs: map[string]string{}}
	if b.lock, err = lockCompose(cfg.Logf); err != nil {
		return nil, err
	}
	base := filepath.Join(cfg.Dir, "compose.yaml")
	override := filepath.Join(cfg.Dir, "chaos.override.yaml")
	if err := os.WriteFile(base, deploy.ComposeFile, 0o640); err != nil {
		return nil, err
	}
	if err := os.WriteFile(override, []byte(composeOverride(cfg.MetaEnv)), 0o640); err != nil {
		return nil, err
	}
	b.files = []string{"-f", base, "-f", override}
	ok := false
	defer func() {
		if !ok {
			b.Close()
			b.Remove()
		}
	}()

	// Up, on a private /24 no other network holds.
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	for attempt, i := range rand.Perm(150)[:5] {
		b.net = fmt.Sprintf("10.77.%d", 100+i)
		b.env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "STRATA_") }),
			"STRATA_NET="+b.net, fmt.Sprintf("STRATA_LB_PORT=%d", port), "STRATA_DEAD_AFTER="+cfg.DeadAfter.String(),
			"STRATA_IMAGE="+cfg.Image, "STRATA_LB_IMAGE="+cfg.LBImage)
		out, err := b.run(5*time.Minute, "up", "-d")
		if err == nil {
			break
		}
		if strings.Contains(out, "overlaps") && attempt < 4 {
			cfg.Logf("chaos: subnet %s.0/24 is taken, trying another", b.net)
			_, _ = b.run(2*time.Minute, "down", "-v", "--remove-orphans", "-t", "5")
			continue
		}
		return nil, err
	}
	b.network = cfg.Project + "_strata"
	for _, n := range composeNodes {
		out, err := b.run(time.Minute, "ps", "-q", n.id)
		if err != nil {
			return nil, err
		}
		id := strings.TrimSpace(out)
		if id == "" {
			return nil, fmt.Errorf("chaos: no container for %s", n.id)
		}
		b.container[n.id] = id
		info := NodeInfo{ID: n.id, Roles: n.roles, GRPC: fmt.Sprintf("%s.%d:7000", b.net, n.host)}
		if slices.Contains(n.roles, RoleMeta) {
			info.Raft = fmt.Sprintf("%s.%d:7001", b.net, n.host)
		}
		if slices.Contains(n.roles, RoleAPI) {
			info.HTTP = fmt.Sprintf("http://%s.%d:5000", b.net, n.host)
		}
		b.nodes = append(b.nodes, info)
	}
	cfg.Logf("chaos: compose project %s up on %s.0/24 (lb on 127.0.0.1:%d)", cfg.Project, b.net, port)

	c, err := NewCluster(b, binary, cfg.ReadyTimeout, cfg.Logf)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	for _, id := range c.IDs("") {
		if err := c.WaitUp(rctx, id); err != nil {
			return nil, fmt.Errorf("chaos: compose cluster not ready: %w", err)
		}
	}
	// Every frontend takes a push (they learn the storage nodes within a
	// second or so).
	for i, fe := range c.Frontends() {
		cl := NewClient(fe)
		for {
			err := cl.PushWhole(rctx, "chaos/ready", LiteralBlob([]byte(fmt.Sprintf("ready %d %s", i, fe))))
			if err == nil {
				break
			}
			if rctx.Err() != nil {
				return nil, fmt.Errorf("chaos: no push through %s: %w", fe, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	ok = true
	return c, nil
}

// composeOverride is the compose file laid over deploy/compose.yaml: no
// restart policy (the harness restarts what it stops, and a container that
// exits on its own is a crash to report, not to hide) and the meta nodes'
// extra environment.
func composeOverride(metaEnv []string) string {
	var b strings.Builder
	b.WriteString("# Written by the chaos harness (chaos/compose_backend.go) over deploy/compose.yaml.\nservices:\n")
	for _, n := range composeNodes {
		fmt.Fprintf(&b, "  %s:\n    restart: \"no\"\n", n.id)
		if slices.Contains(n.roles, RoleMeta) && len(metaEnv) > 0 {
			b.WriteString("    environment:\n")
			for _, kv := range metaEnv {
				k, v, _ := strings.Cut(kv, "=")
				fmt.Fprintf(&b, "      %s: %q\n", k, v)
			}
		}
	}
	b.WriteString("  lb:\n    restart: \"no\"\n")
	return b.String()
}

// lockCompose makes compose runs on one host take turns (the deploy
// package's TestCompose takes the same lock): a dozen containers each on a
// small machine are enough.
func lockCompose(logf func(string, ...any)) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "strata-compose-test.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		logf("chaos: another compose cluster runs on this host; waiting for it")
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// run runs docker compose with the project's files and environment.
func (b *composeBackend) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append(append(slices.Clone(b.compose[1:]), b.files...), append([]string{"-p", b.cfg.Project}, args...)...)
	cmd := exec.CommandContext(ctx, b.compose[0], full...)
	cmd.Env = b.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", b.compose[0], strings.Join(full, " "), err, out.String())
	}
	return out.String(), nil
}

// docker runs a docker command.
func docker(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func (b *composeBackend) Name() string { return "compose" }

func (b *composeBackend) Nodes() []NodeInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.nodes)
}

func (b *composeBackend) id(node string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.container[node]
	if !ok {
		return "", fmt.Errorf("chaos: no node %q", node)
	}
	return c, nil
}

// inspect returns the state of every container, asking docker at most
// twice a second (unless fresh).
func (b *composeBackend) inspect(fresh bool) map[string]containerState {
	b.mu.Lock()
	if !fresh && time.Since(b.inspected) < 500*time.Millisecond && b.state != nil {
		st := b.state
		b.mu.Unlock()
		return st
	}
	var ids []string
	byID := map[string]string{}
	for n, c := range b.container {
		ids = append(ids, c)
		byID[c] = n
	}
	b.mu.Unlock()
	out, err := docker(30*time.Second, append([]string{"inspect", "-f", "{{.Id}} {{.State.Running}} {{.State.ExitCode}}"}, ids...)...)
	st := map[string]containerState{}
	if err != nil {
		return st
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		var code int
		fmt.Sscan(f[2], &code)
		for c, n := range byID {
			if strings.HasPrefix(f[0], c) || strings.HasPrefix(c, f[0]) {
				st[n] = containerState{running: f[1] == "true", code: code}
			}
		}
	}
	b.mu.Lock()
	b.state, b.inspected = st, time.Now()
	b.mu.Unlock()
	return st
}

// waitGone waits until node's container is not running.
func (b *composeBackend) waitGone(node string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if st, ok := b.inspect(true)[node]; ok && !st.running {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: container of %s still running %v later", node, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *composeBackend) Kill(node string) error {
	c, err := b.id(node)
	if err != nil {
		return err
	}
	if _, err := docker(30*time.Second, "kill", "-s", "KILL", c); err != nil {
		return err
	}
	return b.waitGone(node, 30*time.Second)
}

func (b *composeBackend) Stop(node string, timeout time.Duration) (bool, error) {
	c, err := b.id(node)
	if err != nil {
		return false, err
	}
	secs := max(int(timeout.Seconds()), 1)
	if _, err := docker(timeout+time.Minute, "stop", "-t", fmt.Sprint(secs), c); err != nil {
		return false, err
	}
	st := b.inspect(true)[node]
	return st.code == 0, nil
}

func (b *composeBackend) Start(node string, env []string) error {
	if len(env) > 0 {
		return fmt.Errorf("chaos: the compose backend cannot give %s an environment of its own for one start", node)
	}
	c, err := b.id(node)
	if err != nil {
		return err
	}
	_, err = docker(time.Minute, "start", c)
	b.inspect(true)
	return err
}

func (b *composeBackend) Pause(node string) error {
	c, err := b.id(node)
	if err != nil {
		return err
	}
	_, err = docker(30*time.Second, "pause", c)
	return err
}

func (b *composeBackend) Resume(node string) error {
	c, err := b.id(node)
	if err != nil {
		return err
	}
	_, err = docker(30*time.Second, "unpause", c)
	return err
}

func (b *composeBackend) Exited(node string) (bool, int) {
	st, ok := b.inspect(false)[node]
	if !ok {
		return false, -1 // docker did not answer: no news
	}
	return !st.running, st.code
}

func (b *composeBackend) CanCut() bool { return true }

// Cut disconnects node's container from the cluster's network: it is cut
// off from every other node (and from the harness), not only from others.
func (b *composeBackend) Cut(node string, others []string) error {
	c, err := b.id(node)
	if err != nil {
		return err
	}
	if _, err := docker(30*time.Second, "network", "disconnect", b.network, c); err != nil {
		return err
	}
	b.mu.Lock()
	b.cut[node] = true
	b.mu.Unlock()
	return nil
}

// Heal connects every node cut off again, with its address and its
// service's name.
func (b *composeBackend) Heal() error {
	b.mu.Lock()
	var cut []string
	for n := range b.cut {
		cut = append(cut, n)
	}
	b.mu.Unlock()
	var errs []error
	for _, n := range cut {
		c, err := b.id(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ip := ""
		for _, cn := range composeNodes {
			if cn.id == n {
				ip = fmt.Sprintf("%s.%d", b.net, cn.host)
			}
		}
		if _, err := docker(30*time.Second, "network", "connect", "--ip", ip, "--alias", n, b.network, c); err != nil {
			errs = append(errs, err)
			continue
		}
		b.mu.Lock()
		delete(b.cut, n)
		b.mu.Unlock()
	}
	return errors.Join(errs...)
}

// volumeDir is where volume <project>_<node>-data is on this machine, or "".
func (b *composeBackend) volumeDir(node string) string {
	b.mu.Lock()
	if d, ok := b.shardDirs[node]; ok {
		b.mu.Unlock()
		return d
	}
	b.mu.Unlock()
	out, err := docker(30*time.Second, "volume", "inspect", "-f", "{{.Mountpoint}}", b.cfg.Project+"_"+node+"-data")
	d := strings.TrimSpace(out)
	if err != nil {
		d = ""
	} else if _, err := os.Stat(d); err != nil {
		d = "" // the docker host is another machine, or we may not look
	}
	b.mu.Lock()
	b.shardDirs[node] = d
	b.mu.Unlock()
	return d
}

// ShardDir is the storage node's shard directory in its volume, when this
// machine is the docker host and may read it (root).
func (b *composeBackend) ShardDir(node string) string {
	d := b.volumeDir(node)
	if d == "" {
		return ""
	}
	return filepath.Join(d, "shards", "0")
}

// MetaStoreDir is meta node id's Pebble directory in its volume (the
// volumes outlive Close, until Remove).
func (b *composeBackend) MetaStoreDir(node string) string {
	d := b.volumeDir(node)
	if d == "" {
		return ""
	}
	return filepath.Join(d, "meta", "pebble")
}

func (b *composeBackend) Log(node string) ([]byte, error) {
	b.mu.Lock()
	if l, ok := b.saved[node]; ok {
		b.mu.Unlock()
		return l, nil
	}
	b.mu.Unlock()
	c, err := b.id(node)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, "docker", "logs", "--timestamps", c).CombinedOutput()
}

// CopyLogs writes every node's log, the compose files and the containers'
// states into dst.
func (b *composeBackend) CopyLogs(dst string) error {
	if err := os.MkdirAll(dst, 0o750); err != nil {
		return err
	}
	var errs []error
	for _, n := range composeNodes {
		l, err := b.Log(n.id)
		if err != nil {
			errs = append(errs, err)
		}
		if err := os.WriteFile(filepath.Join(dst, n.id+".log"), l, 0o640); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range []string{"compose.yaml", "chaos.override.yaml"} {
		if err := copyFile(filepath.Join(b.cfg.Dir, name), filepath.Join(dst, name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close saves every node's log and stops the containers (their volumes
// stay, for the replica check, until Remove).
func (b *composeBackend) Close() {
	b.mu.Lock()
	if b.stopped || len(b.container) == 0 {
		b.stopped = true
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	_ = b.Heal()
	for _, n := range b.Nodes() {
		_ = b.Resume(n.ID) // a paused container cannot stop
	}
	if _, err := b.run(3*time.Minute, "stop", "-t", "15"); err != nil {
		b.cfg.Logf("chaos: compose stop: %v", err)
	}
	saved := map[string][]byte{}
	for _, n := range b.Nodes() {
		if l, err := b.Log(n.ID); err == nil {
			saved[n.ID] = l
		}
	}
	b.mu.Lock()
	b.saved, b.stopped = saved, true
	b.mu.Unlock()
}

// Remove deletes the containers, networks and volumes, and lets the next
// compose run on this host go.
func (b *composeBackend) Remove() {
	b.mu.Lock()
	removed := b.removed
	b.removed = true
	b.mu.Unlock()
	if !removed && len(b.files) > 0 && b.env != nil {
		if out, err := b.run(3*time.Minute, "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			b.cfg.Logf("chaos: compose down: %v: %s", err, out)
		}
	}
	if b.lock != nil {
		b.lock.Close()
		b.lock = nil
	}
}

// freePort picks a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	a, err := freeLoopbackAddr()
	if err != nil {
		return 0, err
	}
	var port int
	_, err = fmt.Sscanf(a[strings.LastIndexByte(a, ':')+1:], "%d", &port)
	return port, err
}
