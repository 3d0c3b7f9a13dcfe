package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeFrontend answers /readyz with ready and echoes what it saw on any
// other path.
type fakeFrontend struct {
	name  string
	ready atomic.Bool
	hits  atomic.Int64
	srv   *httptest.Server
}

func newFrontend(t *testing.T, name string) *fakeFrontend {
	f := &fakeFrontend{name: name}
	f.ready.Store(true)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			if !f.ready.Load() {
				http.Error(w, "not ready", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
			return
		}
		f.hits.Add(1)
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		w.Header().Set("X-Backend", f.name)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-Path", r.URL.EscapedPath())
		w.Header().Set("X-Seen-XFF", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Body-Sha256", fmt.Sprintf("%x", h.Sum(nil)))
		w.Header().Set("X-Body-Len", fmt.Sprint(n))
		w.Header().Set("Location", "/v2/foo/blobs/uploads/abc")
		w.WriteHeader(http.StatusAccepted)
		if r.URL.Query().Get("big") != "" {
			_, _ = io.Copy(w, io.LimitReader(zeros{}, 16<<20))
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func (f *fakeFrontend) addr() string { return strings.TrimPrefix(f.srv.URL, "http://") }

func newTestLB(t *testing.T, addrs ...string) (*balancer, *httptest.Server) {
	c, err := parseFlags([]string{"--backends", strings.Join(addrs, ","), "--fall", "1", "--dial-timeout", "1s"})
	if err != nil {
		t.Fatal(err)
	}
	lb := newBalancer(c, slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(lb)
	t.Cleanup(srv.Close)
	return lb, srv
}

func (lb *balancer) checkAll() {
	for _, b := range lb.backends {
		lb.check(context.Background(), b)
	}
}

func do(t *testing.T, method, url string, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "registry.example:5080"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestRoundRobinHostLocationPath(t *testing.T) {
	a, b := newFrontend(t, "a"), newFrontend(t, "b")
	lb, srv := newTestLB(t, a.addr(), b.addr())
	lb.checkAll()
	seen := map[string]int{}
	for range 10 {
		resp := do(t, "GET", srv.URL+"/v2/foo//bar/blobs/uploads/", nil)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("status %d", resp.StatusCode)
		}
		seen[resp.Header.Get("X-Backend")]++
		if h := resp.Header.Get("X-Seen-Host"); h != "registry.example:5080" {
			t.Errorf("backend saw Host %q, want the client's", h)
		}
		if p := resp.Header.Get("X-Seen-Path"); p != "/v2/foo//bar/blobs/uploads/" {
			t.Errorf("backend saw path %q: the proxy must not clean paths", p)
		}
		if l := resp.Header.Get("Location"); l != "/v2/foo/blobs/uploads/abc" {
			t.Errorf("Location %q, want the relative one untouched", l)
		}
		if resp.Header.Get("X-Seen-XFF") == "" {
			t.Error("no X-Forwarded-For")
		}
	}
	if seen["a"] != 5 || seen["b"] != 5 {
		t.Errorf("round robin gave %v, want 5 each", seen)
	}
}

func TestSkipsUnhealthyAndComesBack(t *testing.T) {
	a, b := newFrontend(t, "a"), newFrontend(t, "b")
	lb, srv := newTestLB(t, a.addr(), b.addr())
	b.ready.Store(false)
	lb.checkAll()
	for range 6 {
		if got := do(t, "GET", srv.URL+"/v2/", nil).Header.Get("X-Backend"); got != "a" {
			t.Fatalf("request went to %q while b is not ready", got)
		}
	}
	b.ready.Store(true)
	lb.checkAll()
	seen := map[string]bool{}
	for range 4 {
		seen[do(t, "GET", srv.URL+"/v2/", nil).Header.Get("X-Backend")] = true
	}
	if !seen["b"] {
		t.Error("b did not come back after a good probe")
	}
}

func TestNoHealthyBackendStillTries(t *testing.T) {
	a := newFrontend(t, "a")
	lb, srv := newTestLB(t, a.addr())
	a.ready.Store(false)
	lb.checkAll()
	if resp := do(t, "GET", srv.URL+"/v2/", nil); resp.Header.Get("X-Backend") != "a" {
		t.Fatalf("status %d: with no healthy backend the request should still be tried", resp.StatusCode)
	}
}

func TestRetriesDeadBackend(t *testing.T) {
	a := newFrontend(t, "a")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	lb, srv := newTestLB(t, dead, a.addr())
	for _, b := range lb.backends { // both believed healthy: the dead one is found by a request
		b.healthy.Store(true)
	}
	for range 4 {
		resp := do(t, "GET", srv.URL+"/v2/", nil)
		if resp.Header.Get("X-Backend") != "a" {
			t.Fatalf("status %d, want a GET retried on the live backend", resp.StatusCode)
		}
	}
	// A body not yet read is retried too.
	lb.backends[0].healthy.Store(true)
	lb.next.Store(0)
	body := bytes.Repeat([]byte("x"), 1000)
	resp := do(t, "PUT", srv.URL+"/v2/foo/blobs/uploads/abc", bytes.NewReader(body))
	if resp.Header.Get("X-Body-Len") != "1000" {
		t.Fatalf("status %d, body len %q: want the PUT retried whole", resp.StatusCode, resp.Header.Get("X-Body-Len"))
	}
	if lb.backends[0].healthy.Load() {
		t.Error("the dead backend is still marked healthy")
	}
}

func TestNoBackendAtAll(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	_, srv := newTestLB(t, dead)
	resp, err := http.Get(srv.URL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), `"UNAVAILABLE"`) {
		t.Fatalf("got %d %s, want 503 with an OCI error body", resp.StatusCode, b)
	}
}

func TestStreamsBodies(t *testing.T) {
	a := newFrontend(t, "a")
	lb, srv := newTestLB(t, a.addr())
	lb.checkAll()
	// 32 MiB up, through a pipe so that nothing knows the length in advance.
	pr, pw := io.Pipe()
	h := sha256.New()
	go func() {
		buf := make([]byte, 1<<20)
		for i := range 32 {
			for j := range buf {
				buf[j] = byte(i + j)
			}
			h.Write(buf)
			if _, err := pw.Write(buf); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("PATCH", srv.URL+"/v2/foo/blobs/uploads/abc", pr)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := resp.Header.Get("X-Body-Sha256"), fmt.Sprintf("%x", h.Sum(nil)); got != want {
		t.Fatalf("backend got body %s, sent %s", got, want)
	}
	// 16 MiB down.
	start := time.Now()
	resp, err = http.Get(srv.URL + "/v2/foo/blobs/x?big=1")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n != 16<<20 {
		t.Fatalf("got %d bytes, want %d", n, 16<<20)
	}
	t.Logf("16 MiB through the proxy in %s", time.Since(start))
}

func TestParseFlags(t *testing.T) {
	if _, err := parseFlags([]string{"--backends", ""}); err == nil {
		t.Error("no backends accepted")
	}
	if _, err := parseFlags([]string{"--backends", "a1"}); err == nil {
		t.Error("a backend without a port accepted")
	}
	c, err := parseFlags([]string{"--backends", "a1:5000, a2:5000"})
	if err != nil || len(c.backends) != 2 || c.backends[1] != "a2:5000" {
		t.Errorf("got %v, %v", c.backends, err)
	}
}
