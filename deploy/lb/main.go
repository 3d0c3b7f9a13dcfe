// Command strata-lb is a small HTTP round-robin reverse proxy for the Strata
// frontends (api role). It exists so that a Docker Compose deployment needs
// no image other than our own: it is the standard library's
// httputil.ReverseProxy plus active health checks.
//
//   - Requests go round-robin to the backends whose last health checks
//     (GET --health-path, default /readyz) succeeded. A backend is taken out
//     after --fall failures in a row and put back after --rise successes.
//   - When no backend is healthy (for example every frontend answers /readyz
//     with 503 while the meta nodes elect a leader) every backend is tried
//     anyway: the frontends retry through an election themselves, so
//     refusing the request here would only make it fail sooner.
//   - A request that could not be sent at all (the dial failed and no byte of
//     its body was read) is retried on the next backend, and the backend is
//     marked down until its next successful check.
//   - Bodies are streamed both ways and responses are flushed as they come.
//   - The client's Host header is passed to the backend unchanged and
//     response headers such as Location are passed back untouched, so the
//     relative Locations of the OCI Distribution API keep working.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "strata-lb:", err)
		os.Exit(1)
	}
}

type config struct {
	listen         string
	backends       []string
	healthPath     string
	healthInterval time.Duration
	healthTimeout  time.Duration
	fall, rise     int
	dialTimeout    time.Duration
	headerTimeout  time.Duration
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("strata-lb", flag.ContinueOnError)
	backends := fs.String("backends", os.Getenv("STRATA_LB_BACKENDS"), "comma-separated host:port of the frontends (env STRATA_LB_BACKENDS)")
	fs.StringVar(&c.listen, "listen", envOr("STRATA_LB_LISTEN", ":5080"), "address to serve on (env STRATA_LB_LISTEN)")
	fs.StringVar(&c.healthPath, "health-path", "/readyz", "path probed on every backend")
	fs.DurationVar(&c.healthInterval, "health-interval", time.Second, "time between two probes of a backend")
	fs.DurationVar(&c.healthTimeout, "health-timeout", 2*time.Second, "timeout of one probe")
	fs.IntVar(&c.fall, "fall", 3, "failed probes in a row that take a backend out")
	fs.IntVar(&c.rise, "rise", 1, "successful probes in a row that put a backend back")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", 3*time.Second, "timeout to connect to a backend")
	fs.DurationVar(&c.headerTimeout, "response-header-timeout", 5*time.Minute, "time a backend may take to answer once the request is sent")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	for _, b := range strings.Split(*backends, ",") {
		if b = strings.TrimSpace(b); b != "" {
			if _, _, err := net.SplitHostPort(b); err != nil {
				return c, fmt.Errorf("--backends: %q is not host:port", b)
			}
			c.backends = append(c.backends, b)
		}
	}
	if len(c.backends) == 0 {
		return c, errors.New("--backends: at least one host:port is needed")
	}
	if c.fall < 1 || c.rise < 1 {
		return c, errors.New("--fall and --rise must be at least 1")
	}
	return c, nil
}

func envOr(k, def string) string {
	if v, ok := os.LookupEnv(k); ok {
		return v
	}
	return def
}

func run(args []string) error {
	c, err := parseFlags(args)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	lb := newBalancer(c, log)
	go lb.checkLoop(ctx)
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           lb,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("strata-lb serving", "listen", ln.Addr().String(), "backends", strings.Join(c.backends, ","))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// backend is one frontend.
type backend struct {
	addr    string
	healthy atomic.Bool

	mu         sync.Mutex // guards the counters below
	fails, oks int
}

// observe records one probe (or a failed request when passive is set) and
// reports a change of state.
func (b *backend) observe(ok bool, c *config) (changed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ok {
		b.fails = 0
		b.oks++
		if !b.healthy.Load() && b.oks >= c.rise {
			b.healthy.Store(true)
			return true
		}
		return false
	}
	b.oks = 0
	b.fails++
	if b.healthy.Load() && b.fails >= c.fall {
		b.healthy.Store(false)
		return true
	}
	return false
}

// markDown takes a backend out at once (a request could not reach it).
func (b *backend) markDown() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.oks = 0
	return b.healthy.Swap(false)
}

type balancer struct {
	cfg      config
	log      *slog.Logger
	backends []*backend
	next     atomic.Uint64
	proxy    *httputil.ReverseProxy
	probe    *http.Client
}

func newBalancer(c config, log *slog.Logger) *balancer {
	lb := &balancer{cfg: c, log: log}
	for _, a := range c.backends {
		lb.backends = append(lb.backends, &backend{addr: a})
	}
	dialer := &net.Dialer{Timeout: c.dialTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext:           dialer.DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: c.headerTimeout,
		ExpectContinueTimeout: time.Second,
		// Pass Accept-Encoding and bodies through as they are: a transparent
		// gzip would change Content-Length and digests of what clients see.
		DisableCompression: true,
	}
	lb.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "backend" // replaced per attempt by roundTrip
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:     &retryTransport{lb: lb, next: tr},
		FlushInterval: -1,
		ErrorHandler:  lb.proxyError,
	}
	lb.probe = &http.Client{
		Timeout: c.healthTimeout,
		Transport: &http.Transport{
			DialContext:        dialer.DialContext,
			DisableKeepAlives:  true,
			DisableCompression: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return lb
}

func (lb *balancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	lb.proxy.ServeHTTP(w, r)
}

// pick returns the next backend in round-robin order that is not in tried:
// a healthy one if there is one, else any (see the package comment).
func (lb *balancer) pick(tried map[*backend]bool) *backend {
	n := len(lb.backends)
	start := int(lb.next.Add(1) - 1)
	var fallback *backend
	for i := range n {
		b := lb.backends[(start+i)%n]
		if tried[b] {
			continue
		}
		if b.healthy.Load() {
			return b
		}
		if fallback == nil {
			fallback = b
		}
	}
	return fallback
}

// checkLoop probes every backend each interval until ctx ends.
func (lb *balancer) checkLoop(ctx context.Context) {
	t := time.NewTicker(lb.cfg.healthInterval)
	defer t.Stop()
	for {
		var wg sync.WaitGroup
		for _, b := range lb.backends {
			wg.Go(func() { lb.check(ctx, b) })
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (lb *balancer) check(ctx context.Context, b *backend) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.addr+lb.cfg.healthPath, nil)
	if err != nil {
		return
	}
	ok := false
	why := ""
	resp, err := lb.probe.Do(req)
	if err != nil {
		why = err.Error()
	} else {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		ok = resp.StatusCode == http.StatusOK
		why = resp.Status
	}
	if ctx.Err() != nil {
		return
	}
	if b.observe(ok, &lb.cfg) {
		if ok {
			lb.log.Info("backend up", "backend", b.addr)
		} else {
			lb.log.Warn("backend down", "backend", b.addr, "probe", why)
		}
	}
}

var errNoBackend = errors.New("no backend available")

// retryTransport sends a request to the backend pick chooses, and to the
// next one when it could not be sent at all.
type retryTransport struct {
	lb   *balancer
	next http.RoundTripper
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body *trackedBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &trackedBody{rc: req.Body}
	}
	tried := map[*backend]bool{}
	var lastErr error
	for {
		b := t.lb.pick(tried)
		if b == nil {
			if body != nil {
				body.rc.Close()
			}
			if lastErr != nil {
				return nil, lastErr
			}
			return nil, errNoBackend
		}
		tried[b] = true
		out := req.Clone(req.Context())
		out.URL.Host = b.addr
		if body != nil {
			out.Body = body
		}
		resp, err := t.next.RoundTrip(out)
		if err == nil {
			return resp, nil
		}
		lastErr = err
		if req.Context().Err() != nil || !isDialError(err) || (body != nil && body.started()) {
			if body != nil {
				body.rc.Close()
			}
			return nil, err
		}
		if b.markDown() {
			t.lb.log.Warn("backend down", "backend", b.addr, "err", err)
		}
	}
}

// trackedBody is a request body that can be offered to a second backend if
// the first attempt read none of it. Close is left to the server, which
// closes the inbound body when the handler returns, or to RoundTrip.
type trackedBody struct {
	rc   io.ReadCloser
	read atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.rc.Read(p)
}

func (b *trackedBody) Close() error  { return nil }
func (b *trackedBody) started() bool { return b.read.Load() }

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// proxyError answers a request that reached no backend with an OCI error body.
func (lb *balancer) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client went away
	}
	code, status := "UNAVAILABLE", http.StatusBadGateway
	if errors.Is(err, errNoBackend) || isDialError(err) {
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "1")
	}
	lb.log.Warn("proxy error", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{
		"code": code, "message": "load balancer: " + err.Error(),
	}}})
}
