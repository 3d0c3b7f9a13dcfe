package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// strataPackage is the command the Process backend builds and runs.
const strataPackage = "github.com/strata-registry/strata/cmd/strata"

// BinaryEnv names an environment variable that, when set, is the path of a
// prebuilt strata binary to run instead of building one.
const BinaryEnv = "STRATA_CHAOS_BINARY"

// FailpointBinaryEnv is BinaryEnv for FailpointBinary: a prebuilt
// bin/strata-failpoints (make build-failpoints).
const FailpointBinaryEnv = "STRATA_CHAOS_FAILPOINT_BINARY"

// builtBinary is one strata binary built by the test binary.
type builtBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

var (
	build   builtBinary // plain
	buildFP builtBinary // with -tags failpoints
)

// Binary returns the path of the strata binary under test. The first call
// builds it (into a temporary directory shared by the whole test binary;
// CleanupBinary removes it), later calls return the same path.
func Binary(t testing.TB) string {
	t.Helper()
	return build.get(t, BinaryEnv)
}

// FailpointBinary is Binary built with -tags failpoints: the server's code
// failpoints (package chaos/failpoint) are compiled in and can be armed
// through STRATA_FAILPOINTS and STRATA_FAILPOINTS_ADDR.
func FailpointBinary(t testing.TB) string {
	t.Helper()
	return buildFP.get(t, FailpointBinaryEnv, "-tags", "failpoints")
}

func (b *builtBinary) get(t testing.TB, env string, flags ...string) string {
	t.Helper()
	b.once.Do(func() {
		if p := os.Getenv(env); p != "" {
			b.path, b.err = filepath.Abs(p)
			return
		}
		b.dir, b.err = os.MkdirTemp("", "strata-chaos-bin-")
		if b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "strata")
		args := append([]string{"build", "-o", b.path}, flags...)
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, strataPackage)
		cmd := exec.Command("go", args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out.Bytes())
			return
		}
		t.Logf("built %s (go %s) in %v", b.path, strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	})
	if b.err != nil {
		t.Fatalf("strata binary: %v", b.err)
	}
	return b.path
}

// CleanupBinary removes the binaries Binary and FailpointBinary built, if
// any. Call it from TestMain after the tests have run.
func CleanupBinary() {
	for _, b := range []*builtBinary{&build, &buildFP} {
		if b.dir != "" {
			_ = os.RemoveAll(b.dir)
		}
	}
}

// KeepOnFailureDir makes a new directory for t that is removed when t ends,
// unless t failed: then it is kept, and its path logged, for the post-mortem.
func KeepOnFailureDir(t testing.TB, what string) string {
	t.Helper()
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	dir, err := os.MkdirTemp("", "strata-chaos-"+name+"-"+what+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept %s for the post-mortem: %s", what, dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	return dir
}

// ProcessConfig configures a Process.
type ProcessConfig struct {
	// DataDir is the server's --data-dir. Required; it outlives restarts.
	DataDir string
	// Args are extra flags for `strata serve --dev`.
	Args []string
	// LogPath is where the server's stdout and stderr go (appended across
	// restarts). Default: server.log in a directory kept when the test fails.
	LogPath string
	// ReadyTimeout bounds each start. Default 60s.
	ReadyTimeout time.Duration
	// Binary is the strata binary to run (default: Binary's).
	Binary string
	// Env is added to the server's environment (SetEnv changes it for
	// the next starts).
	Env []string
}

// Process is a strata server running as a child process: the single-node
// backend of the chaos suite. Its methods fail the test on errors they
// cannot recover from; they must be called from the test's goroutine.
type Process struct {
	t    testing.TB
	bin  string
	cfg  ProcessConfig
	addr string // 127.0.0.1:port, kept across restarts

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current process has exited
	state   *os.ProcessState
	waitErr error
	starts  int
	killed  bool // the current process was killed or stopped on purpose
}

// StartProcess builds (once) and starts a strata server on a free loopback
// port and waits until it is ready. The server is killed when the test ends;
// if the test failed, its log path, data directory and the tail of its log
// are printed.
func StartProcess(t testing.TB, cfg ProcessConfig) *Process {
	t.Helper()
	if cfg.DataDir == "" {
		t.Fatal("chaos.StartProcess: DataDir is required")
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	if cfg.LogPath == "" {
		cfg.LogPath = filepath.Join(KeepOnFailureDir(t, "log"), "server.log")
	}
	bin := cfg.Binary
	if bin == "" {
		bin = Binary(t)
	}
	p := &Process{t: t, bin: bin, cfg: cfg}
	t.Cleanup(func() {
		p.mu.Lock()
		running := p.cmd != nil && !p.exitedLocked()
		p.mu.Unlock()
		if running {
			p.signal(syscall.SIGKILL)
			p.wait(10 * time.Second)
		}
		if t.Failed() {
			t.Logf("server data dir: %s", p.cfg.DataDir)
			t.Logf("server log: %s", p.cfg.LogPath)
			t.Logf("tail of the server log:\n%s", tailFile(p.cfg.LogPath, 16<<10))
		}
	})
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if p.addr, err = freeLoopbackAddr(); err != nil {
			t.Fatal(err)
		}
		if err = p.start(); err == nil {
			return p
		}
		// Another process may have taken the port between our probe and
		// the server's bind: try another one.
		if !strings.Contains(tailFile(p.cfg.LogPath, 4<<10), "address already in use") {
			break
		}
	}
	t.Fatalf("starting strata: %v", err)
	return nil
}

// URL is the server's base URL, e.g. http://127.0.0.1:34567.
func (p *Process) URL() string { return "http://" + p.addr }

// Addr is the server's HOST:PORT.
func (p *Process) Addr() string { return p.addr }

// DataDir is the server's data directory.
func (p *Process) DataDir() string { return p.cfg.DataDir }

// LogPath is the file holding the server's output.
func (p *Process) LogPath() string { return p.cfg.LogPath }

// Starts is how many times the server has been started.
func (p *Process) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (p *Process) start() error {
	p.mu.Lock()
	if p.cmd != nil && !p.exitedLocked() {
		p.mu.Unlock()
		return errors.New("already running")
	}
	p.starts++
	n := p.starts
	p.mu.Unlock()

	logf, err := os.OpenFile(p.cfg.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "===== chaos: start #%d of strata on %s at %s =====\n", n, p.addr, time.Now().Format(time.RFC3339Nano))
	args := append([]string{"serve", "--dev", "--data-dir", p.cfg.DataDir, "--http-addr", p.addr}, p.cfg.Args...)
	cmd := exec.Command(p.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	p.mu.Lock()
	cmd.Env = append(append(os.Environ(), "GOTRACEBACK=all"), p.cfg.Env...)
	p.mu.Unlock()
	// Where the OS allows, the server dies with the test process even if
	// the test is killed before its cleanup runs.
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.state, p.waitErr, p.killed = cmd, done, nil, nil, false
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.state, p.waitErr = cmd.ProcessState, err
		p.mu.Unlock()
		close(done)
	}()
	return p.waitReady(done)
}

func (p *Process) waitReady(done chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ReadyTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/v2/", nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.t.Logf("strata start #%d ready on %s after %v", p.Starts(), p.addr, time.Since(start).Round(time.Millisecond))
				return nil
			}
		}
		select {
		case <-done:
			return fmt.Errorf("strata exited before it was ready (%v); see %s", p.exitStatus(), p.cfg.LogPath)
		case <-ctx.Done():
			return fmt.Errorf("strata not ready on %s after %v; see %s", p.addr, p.cfg.ReadyTimeout, p.cfg.LogPath)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func (p *Process) exitedLocked() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *Process) exitStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return "running"
	}
	return p.state.String()
}

func (p *Process) signal(sig syscall.Signal) {
	p.mu.Lock()
	cmd := p.cmd
	p.killed = true
	p.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Signal(sig)
	}
}

func (p *Process) wait(d time.Duration) bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
	}
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// CheckAlive returns an error if the server exited without being told to:
// a crash, a panic or a fatal error.
func (p *Process) CheckAlive() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.killed || !p.exitedLocked() {
		return nil
	}
	return fmt.Errorf("strata (start #%d) exited on its own: %v; see %s", p.starts, p.state, p.cfg.LogPath)
}

// Kill sends SIGKILL and waits for the process to be gone: no shutdown code
// runs, like a power cut of the process (the kernel's page cache survives).
func (p *Process) Kill() {
	p.t.Helper()
	if err := p.CheckAlive(); err != nil {
		p.t.Fatal(err)
	}
	p.signal(syscall.SIGKILL)
	if !p.wait(30 * time.Second) {
		p.t.Fatal("strata did not die within 30s of SIGKILL")
	}
}

// Stop sends SIGTERM and waits for a clean exit, failing the test if the
// server does not exit within 30s or exits with an error.
func (p *Process) Stop() {
	p.t.Helper()
	if err := p.CheckAlive(); err != nil {
		p.t.Fatal(err)
	}
	p.signal(syscall.SIGTERM)
	if !p.wait(30 * time.Second) {
		p.signal(syscall.SIGKILL)
		p.wait(10 * time.Second)
		p.t.Fatal("strata did not exit within 30s of SIGTERM; killed it")
	}
	p.mu.Lock()
	err, state := p.waitErr, p.state
	p.mu.Unlock()
	if err != nil {
		p.t.Errorf("strata exited with %v after SIGTERM (want a clean exit); see %s", state, p.cfg.LogPath)
	}
}

// SetEnv replaces the environment ProcessConfig.Env added, for the next
// starts.
func (p *Process) SetEnv(env ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg.Env = env
}

// WaitExit waits up to d for the server to exit on its own (a failpoint
// that ends the process, say) and returns its exit code; the exit is then
// expected, not a crash. It fails the test if the server is still running.
func (p *Process) WaitExit(d time.Duration) int {
	p.t.Helper()
	if !p.wait(d) {
		p.t.Fatalf("strata still running %v later; it was expected to exit", d)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.killed = true
	if p.state == nil {
		return -1
	}
	return p.state.ExitCode()
}

// Restart starts the server again on the same data directory and port (it
// must have been killed or stopped) and waits until it is ready.
func (p *Process) Restart() {
	p.t.Helper()
	if !p.wait(0) {
		p.t.Fatal("chaos: Restart of a running strata; Kill or Stop it first")
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = p.start(); err == nil {
			return
		}
		if !strings.Contains(tailFile(p.cfg.LogPath, 4<<10), "address already in use") {
			break
		}
		time.Sleep(time.Second) // the port is ours; wait for it to be free
	}
	p.t.Fatalf("restarting strata: %v", err)
}

// LogProblems returns the lines of the server log that show a crash of the
// server's own making: panics, fatal errors, data races.
func (p *Process) LogProblems() []string {
	b, err := os.ReadFile(p.cfg.LogPath)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		for _, bad := range []string{"panic:", "fatal error:", "WARNING: DATA RACE", "SIGSEGV"} {
			if strings.Contains(line, bad) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// tailFile returns the last n bytes of a file, or why it cannot.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return err.Error()
	}
	if off > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
		return "[...]\n" + string(b)
	}
	return string(b)
}

// SeedEnv names an environment variable that fixes the seed of a run's
// random choices, to replay a failure.
const SeedEnv = "STRATA_CHAOS_SEED"

// Seed returns the seed of t's random choices: STRATA_CHAOS_SEED if set,
// else a fresh one. It is logged so that a failing run can be replayed
// (the choices repeat; the timing of a concurrent run cannot).
func Seed(t testing.TB) uint64 {
	t.Helper()
	if s := os.Getenv(SeedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", SeedEnv, s, err)
		}
		t.Logf("seed %d (from %s)", v, SeedEnv)
		return v
	}
	v := uint64(time.Now().UnixNano())
	t.Logf("seed %d (replay the choices with %s=%d)", v, SeedEnv, v)
	return v
}
