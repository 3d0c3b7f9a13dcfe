package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// reg is the registry under test, set by TestMain.
var reg *registry

// runID keeps the repositories of one run apart from those of earlier runs.
var runID = randomHex(4)

// strataBin is the strata binary the server runs (empty when the tests
// target a registry given by STRATA_E2E_URL); tests drive its CLI with it.
var strataBin string

// raceBuild is set by race_test.go when the tests are built with -race; the
// server is then built with -race too.
var raceBuild bool

type registry struct {
	host  string // HOST:PORT as used in image references
	url   string // scheme://HOST:PORT
	plain bool   // plain HTTP (no TLS)
}

// ref returns HOST:PORT/repo.
func (r *registry) ref(repo string) string { return r.host + "/" + repo }

const (
	readyTimeout = 90 * time.Second
	stopTimeout  = 30 * time.Second
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	if u := os.Getenv("STRATA_E2E_URL"); u != "" {
		r, err := parseRegistryURL(u)
		if err == nil {
			err = waitReady(context.Background(), r.url, nil)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: STRATA_E2E_URL=%s: %v\n", u, err)
			return 1
		}
		reg = r
		fmt.Fprintf(os.Stderr, "e2e: testing the registry at %s\n", r.url)
		return m.Run()
	}

	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	work, err := os.MkdirTemp("", "strata-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(work)

	bin := os.Getenv("STRATA_E2E_BIN")
	if bin == "" {
		bin = filepath.Join(work, "strata")
		if err := buildStrata(root, bin); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building ./cmd/strata: %v\n", err)
			return 1
		}
	}
	strataBin = bin
	srv, err := startServer(bin, work)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: starting strata: %v\n", err)
		if srv != nil {
			srv.dumpLog(os.Stderr)
		}
		return 1
	}
	reg = &registry{host: srv.addr, url: "http://" + srv.addr, plain: true}
	fmt.Fprintf(os.Stderr, "e2e: strata serve --dev on %s (data %s)\n", srv.addr, srv.dataDir)

	code := m.Run()

	if err := srv.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: stopping strata: %v\n", err)
		code = 1
	}
	if code != 0 || os.Getenv("STRATA_E2E_VERBOSE") != "" {
		srv.dumpLog(os.Stderr)
	}
	return code
}

func parseRegistryURL(s string) (*registry, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("want http://HOST:PORT or https://HOST:PORT")
	}
	return &registry{host: u.Host, url: u.Scheme + "://" + u.Host, plain: u.Scheme == "http"}, nil
}

// moduleRoot finds the directory holding go.mod, walking up from the test's
// working directory (the package directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

var trackOnce sync.Once

// trackInputs makes go test's result cache see what the e2e tests depend on
// beyond their own binary: the environment that picks the registry, and the
// server's sources, which the test binary does not link. The go command keys a
// cached result on the environment variables read and the files looked at
// while the tests run (inside m.Run, not before), so newCLI calls this once.
func trackInputs() {
	trackOnce.Do(func() {
		for _, k := range []string{"STRATA_E2E_URL", "STRATA_E2E_BIN", "STRATA_E2E_SKIP_REFERRERS_API",
			"STRATA_E2E_REQUIRE_TOOLS", "CI", "PATH", "DOCKER_HOST"} {
			os.Getenv(k)
		}
		if bin := os.Getenv("STRATA_E2E_BIN"); bin != "" {
			_, _ = os.Stat(bin)
		}
		if os.Getenv("STRATA_E2E_URL") == "" && os.Getenv("STRATA_E2E_BIN") == "" {
			if root, err := moduleRoot(); err == nil {
				trackSources(root)
			}
		}
	})
}

// trackSources stats every Go source file of the module.
func trackSources(root string) {
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "bin" || name == "testdata" ||
				name == "conformance-results" || name == "strata-data" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") || name == "go.mod" || name == "go.sum" {
			_, _ = os.Stat(path)
		}
		return nil
	})
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

func buildStrata(root, out string) error {
	args := []string{"build", "-o", out}
	env := os.Environ()
	if raceBuild {
		args = append(args, "-race")
	} else {
		env = append(env, "CGO_ENABLED=0")
	}
	cmd := exec.Command(goTool(), append(args, "./cmd/strata")...)
	cmd.Dir = root
	cmd.Env = env
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v\n%s", err, b)
	}
	return nil
}

// server is a strata serve --dev child process.
type server struct {
	cmd     *exec.Cmd
	addr    string
	dataDir string
	logPath string
	exited  chan struct{} // closed when the process has exited
	waitErr error         // valid after exited is closed
}

// startServer starts strata on a free port and waits until it is ready. It
// retries with another port when the one picked was taken meanwhile.
func startServer(bin, work string) (*server, error) {
	var lastErr error
	var s *server
	for attempt := 0; attempt < 3; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		s = &server{
			addr:    addr,
			dataDir: filepath.Join(work, fmt.Sprintf("data-%d", attempt)),
			logPath: filepath.Join(work, fmt.Sprintf("strata-%d.log", attempt)),
			exited:  make(chan struct{}),
		}
		logFile, err := os.Create(s.logPath)
		if err != nil {
			return nil, err
		}
		s.cmd = exec.Command(bin, "serve", "--dev", "--data-dir", s.dataDir, "--http-addr", addr)
		s.cmd.Stdout = logFile
		s.cmd.Stderr = logFile
		if err := s.cmd.Start(); err != nil {
			logFile.Close()
			return nil, err
		}
		go func() {
			s.waitErr = s.cmd.Wait()
			logFile.Close()
			close(s.exited)
		}()
		lastErr = waitReady(context.Background(), "http://"+addr, s.exited)
		if lastErr == nil {
			return s, nil
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(s.logPath)
			if bytes.Contains(bytes.ToLower(log), []byte("address already in use")) {
				continue
			}
			return s, fmt.Errorf("%v (exit: %v)", lastErr, s.waitErr)
		default:
			_ = s.stop()
			return s, lastErr
		}
	}
	return s, lastErr
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitReady polls GET /v2/ until it answers 200, the process exits (when
// exited is not nil) or readyTimeout passes.
func waitReady(ctx context.Context, base string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/", nil)
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-exited:
			return errors.New("server exited before it was ready")
		case <-ctx.Done():
			return fmt.Errorf("GET %s/v2/ not 200 within %v (last: %s)", base, readyTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits for a clean exit, escalating to SIGKILL.
func (s *server) stop() error {
	select {
	case <-s.exited:
		return fmt.Errorf("strata had already exited: %v", s.waitErr)
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		if s.waitErr != nil {
			return fmt.Errorf("strata exited uncleanly after SIGTERM: %v", s.waitErr)
		}
		return nil
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("strata still running %v after SIGTERM; killed", stopTimeout)
	}
}

// dumpLog writes the tail of the server's stderr.
func (s *server) dumpLog(w io.Writer) {
	const max = 64 << 10
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		fmt.Fprintf(w, "e2e: reading strata log: %v\n", err)
		return
	}
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
		fmt.Fprintf(w, "---- strata stderr (last %d KiB) ----\n", max>>10)
	} else {
		fmt.Fprintln(w, "---- strata stderr ----")
	}
	w.Write(b)
	fmt.Fprintln(w, "---- end of strata stderr ----")
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
