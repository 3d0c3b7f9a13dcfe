package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// benchClient speaks plain OCI Distribution HTTP to one registry: blob
// uploads (monolithic, chunked, streamed), blob and manifest reads, tag
// listing. It answers basic-auth and bearer-token challenges itself, the way
// docker and crane do, and caches tokens per repository and access.
type benchClient struct {
	base     *url.URL
	hc       *http.Client
	user     string
	password string

	mu     sync.Mutex
	tokens map[string]string // "<repo> pull|push" -> bearer token

	throttled atomic.Int64 // 429 answers retried after their Retry-After
}

// benchClientOptions configures the HTTP side of a benchClient.
type benchClientOptions struct {
	Username, Password string
	Insecure           bool // skip TLS verification (https with a self-signed certificate)
	H2C                bool // HTTP/2 over cleartext (prior knowledge) for http:// URLs
	Conns              int  // idle connections to keep per host
	Timeout            time.Duration
}

func newBenchClient(rawURL string, o benchClientOptions) (*benchClient, error) {
	u, err := url.Parse(strings.TrimRight(rawURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("--url %q: %w", rawURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--url %q: want http://host:port or https://host:port", rawURL)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 0
	tr.MaxIdleConnsPerHost = max(o.Conns, 16)
	tr.DisableCompression = true
	tr.WriteBufferSize = 256 << 10
	tr.ReadBufferSize = 256 << 10
	tr.ResponseHeaderTimeout = 0
	if o.Insecure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for with --insecure
	}
	if o.H2C {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		p.SetHTTP2(true)
		tr.Protocols = &p
	}
	return &benchClient{
		base: u, user: o.Username, password: o.Password,
		hc:     &http.Client{Transport: tr, Timeout: o.Timeout},
		tokens: map[string]string{},
	}, nil
}

func (c *benchClient) close() { c.hc.CloseIdleConnections() }

// benchRequest is one request; body, when set, is called once per attempt
// (an auth challenge replays the request).
type benchRequest struct {
	method string
	url    string // absolute, or a path resolved against the registry's base URL
	repo   string // for the token cache
	header http.Header
	body   func() io.Reader
	length int64 // Content-Length; -1 streams the body (chunked transfer encoding)
}

// do sends r, answering one auth challenge, and sending it again after the
// Retry-After of every 429 Too Many Requests (a registry shedding load) for
// as long as ctx lasts. The caller closes the body.
func (c *benchClient) do(ctx context.Context, r benchRequest) (*http.Response, error) {
	target, err := c.base.Parse(r.url)
	if err != nil {
		return nil, err
	}
	access := "pull"
	if r.method != http.MethodGet && r.method != http.MethodHead {
		access = "push"
	}
	key := r.repo + " " + access
	authed := false
	for {
		var body io.Reader
		if r.body != nil {
			body = r.body()
		}
		req, err := http.NewRequestWithContext(ctx, r.method, target.String(), body)
		if err != nil {
			return nil, err
		}
		if body != nil {
			req.ContentLength = r.length
			if r.length == 0 {
				req.Body = http.NoBody
			}
		}
		for k, v := range r.header {
			req.Header[k] = v
		}
		c.mu.Lock()
		tok := c.tokens[key]
		c.mu.Unlock()
		switch {
		case tok != "":
			req.Header.Set("Authorization", "Bearer "+tok)
		case c.user != "":
			req.SetBasicAuth(c.user, c.password)
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			wait := retryAfter(resp.Header.Get("Retry-After"), time.Now())
			drain(resp)
			c.throttled.Add(1)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("%s %s: 429, retrying: %w", r.method, target.Path, ctx.Err())
			case <-t.C:
			}
			continue
		}
		if resp.StatusCode != http.StatusUnauthorized || authed {
			return resp, nil
		}
		authed = true
		challenge := resp.Header.Get("WWW-Authenticate")
		drain(resp)
		scheme, params := parseChallenge(challenge)
		switch strings.ToLower(scheme) {
		case "bearer":
			tok, err := c.fetchToken(ctx, params)
			if err != nil {
				return nil, err
			}
			c.mu.Lock()
			c.tokens[key] = tok
			c.mu.Unlock()
		case "basic":
			if c.user == "" {
				return nil, fmt.Errorf("%s %s: 401, the registry wants basic auth (--username/--password)", r.method, target.Path)
			}
			return nil, fmt.Errorf("%s %s: 401 with the given --username/--password", r.method, target.Path)
		default:
			return nil, fmt.Errorf("%s %s: 401 with challenge %q", r.method, target.Path, challenge)
		}
	}
}

// retryAfter is how long to wait before sending a request refused with 429:
// its Retry-After (seconds or an HTTP date; 1s when absent or unreadable,
// at most a minute), plus up to a fifth more at random so that clients
// refused together do not all come back at once.
func retryAfter(h string, now time.Time) time.Duration {
	d := time.Second
	if secs, err := strconv.Atoi(strings.TrimSpace(h)); err == nil {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(h); err == nil {
		d = t.Sub(now)
	}
	d = min(max(d, 0), time.Minute)
	if j := d / 5; j > 0 {
		d += rand.N(j)
	}
	return d
}

// fetchToken asks the challenge's realm for a token (docker's token protocol:
// GET realm?service=&scope=, basic auth when credentials are given).
func (c *benchClient) fetchToken(ctx context.Context, params map[string]string) (string, error) {
	realm := params["realm"]
	if realm == "" {
		return "", errors.New("bearer challenge without a realm")
	}
	u, err := c.base.Parse(realm)
	if err != nil {
		return "", fmt.Errorf("token realm %q: %w", realm, err)
	}
	q := u.Query()
	if s := params["service"]; s != "" {
		q.Set("service", s)
	}
	for _, s := range strings.Fields(params["scope"]) {
		q.Add("scope", s)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.password)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token from %s: %s: %s", u.Redacted(), resp.Status, bytes.TrimSpace(b))
	}
	var tr struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(b, &tr); err != nil {
		return "", fmt.Errorf("token from %s: %w", u.Redacted(), err)
	}
	if tr.Token == "" {
		tr.Token = tr.AccessToken
	}
	if tr.Token == "" {
		return "", fmt.Errorf("token from %s: empty", u.Redacted())
	}
	return tr.Token, nil
}

// parseChallenge splits `Bearer realm="x",service="y",scope="a b"` into the
// scheme and its parameters.
func parseChallenge(h string) (scheme string, params map[string]string) {
	params = map[string]string{}
	h = strings.TrimSpace(h)
	scheme, rest, _ := strings.Cut(h, " ")
	for rest = strings.TrimSpace(rest); rest != ""; {
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		v = strings.TrimLeft(v, " ")
		if strings.HasPrefix(v, `"`) {
			// A quoted string; \" escapes a quote.
			var b strings.Builder
			i := 1
			for ; i < len(v) && v[i] != '"'; i++ {
				if v[i] == '\\' && i+1 < len(v) {
					i++
				}
				b.WriteByte(v[i])
			}
			params[k] = b.String()
			rest = v[min(i+1, len(v)):]
		} else {
			val, r, _ := strings.Cut(v, ",")
			params[k] = strings.TrimSpace(val)
			rest = "," + r
		}
		rest = strings.TrimLeft(rest, ", ")
	}
	return scheme, params
}

// drain reads what is left of a small response body and closes it, so the
// connection is reused.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// statusError describes an unexpected response, with the start of its body.
func statusError(resp *http.Response, want ...int) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	return fmt.Errorf("%s %s: %s (want %v): %s", resp.Request.Method, resp.Request.URL.Path, resp.Status, want,
		strings.TrimSpace(string(b)))
}

func expectStatus(resp *http.Response, want ...int) error {
	for _, w := range want {
		if resp.StatusCode == w {
			return nil
		}
	}
	return statusError(resp, want...)
}

// Upload modes.
const (
	uploadMonolithic = "monolithic" // POST, then PUT ?digest= with the whole blob
	uploadChunked    = "chunked"    // POST, PATCH with Content-Range per chunk, PUT ?digest=
	uploadStreamed   = "streamed"   // POST, one PATCH without a length (chunked encoding), PUT ?digest=
)

// benchBlob is blob content the client can send without holding it: parts
// are read in order (they are shared, read-only buffers).
type benchBlob struct {
	parts  [][]byte
	size   int64
	digest digest.Digest
}

func (b *benchBlob) reader() io.Reader {
	rs := make([]io.Reader, len(b.parts))
	for i, p := range b.parts {
		rs[i] = bytes.NewReader(p)
	}
	return io.MultiReader(rs...)
}

// section returns a reader over bytes [off, off+n) of the blob.
func (b *benchBlob) section(off, n int64) io.Reader {
	var rs []io.Reader
	for _, p := range b.parts {
		pl := int64(len(p))
		if off >= pl {
			off -= pl
			continue
		}
		take := min(pl-off, n)
		rs = append(rs, bytes.NewReader(p[off:off+take]))
		n -= take
		off = 0
		if n == 0 {
			break
		}
	}
	return io.MultiReader(rs...)
}

// pushBlob uploads b to repo the given way. chunk is the PATCH size for
// chunked uploads.
func (c *benchClient) pushBlob(ctx context.Context, repo string, b *benchBlob, mode string, chunk int64) error {
	loc, err := c.startUpload(ctx, repo)
	if err != nil {
		return err
	}
	switch mode {
	case uploadMonolithic:
		return c.finishUpload(ctx, repo, loc, b.digest, b.reader, b.size)
	case uploadStreamed:
		resp, err := c.do(ctx, benchRequest{method: http.MethodPatch, url: loc, repo: repo, length: -1,
			header: http.Header{"Content-Type": {"application/octet-stream"}},
			body: func() io.Reader {
				// Hide the length, so the body goes out chunked as a
				// stream of unknown length would.
				return struct{ io.Reader }{b.reader()}
			}})
		if err != nil {
			return err
		}
		if err := expectStatus(resp, http.StatusAccepted, http.StatusNoContent); err != nil {
			return err
		}
		if loc, err = nextLocation(resp, loc); err != nil {
			return err
		}
		return c.finishUpload(ctx, repo, loc, b.digest, nil, 0)
	case uploadChunked:
		if chunk <= 0 {
			return errors.New("chunked upload with a chunk size of 0")
		}
		for off := int64(0); off < b.size; off += chunk {
			n := min(chunk, b.size-off)
			resp, err := c.do(ctx, benchRequest{method: http.MethodPatch, url: loc, repo: repo, length: n,
				header: http.Header{
					"Content-Type":  {"application/octet-stream"},
					"Content-Range": {fmt.Sprintf("%d-%d", off, off+n-1)},
				},
				body: func() io.Reader { return b.section(off, n) }})
			if err != nil {
				return err
			}
			if err := expectStatus(resp, http.StatusAccepted, http.StatusNoContent); err != nil {
				return err
			}
			if loc, err = nextLocation(resp, loc); err != nil {
				return err
			}
		}
		return c.finishUpload(ctx, repo, loc, b.digest, nil, 0)
	default:
		return fmt.Errorf("unknown upload mode %q (monolithic, chunked, streamed)", mode)
	}
}

// startUpload opens an upload session and returns its location.
func (c *benchClient) startUpload(ctx context.Context, repo string) (string, error) {
	resp, err := c.do(ctx, benchRequest{method: http.MethodPost, url: "/v2/" + repo + "/blobs/uploads/", repo: repo,
		body: func() io.Reader { return http.NoBody }, length: 0})
	if err != nil {
		return "", err
	}
	if err := expectStatus(resp, http.StatusAccepted); err != nil {
		return "", err
	}
	return nextLocation(resp, "")
}

// finishUpload sends PUT <loc>?digest=, with body when given.
func (c *benchClient) finishUpload(ctx context.Context, repo, loc string, d digest.Digest, body func() io.Reader, n int64) error {
	u, err := c.base.Parse(loc)
	if err != nil {
		return err
	}
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	if body == nil {
		body, n = func() io.Reader { return http.NoBody }, 0
	}
	resp, err := c.do(ctx, benchRequest{method: http.MethodPut, url: u.String(), repo: repo, body: body, length: n,
		header: http.Header{"Content-Type": {"application/octet-stream"}}})
	if err != nil {
		return err
	}
	if err := expectStatus(resp, http.StatusCreated); err != nil {
		return err
	}
	drain(resp)
	return nil
}

// nextLocation is the upload's Location after resp (resolved against the
// request's URL); the body is drained.
func nextLocation(resp *http.Response, prev string) (string, error) {
	loc := resp.Header.Get("Location")
	drain(resp)
	if loc == "" {
		if prev != "" {
			return prev, nil
		}
		return "", fmt.Errorf("%s %s: no Location", resp.Request.Method, resp.Request.URL.Path)
	}
	u, err := resp.Request.URL.Parse(loc)
	if err != nil {
		return "", err
	}
	return u.String(), nil
}

// benchBufPool holds read buffers for blob bodies.
var benchBufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// pullBlob reads repo's blob d to the end and returns the bytes read; with
// verify it checks them against d.
func (c *benchClient) pullBlob(ctx context.Context, repo string, d digest.Digest, size int64, verify bool) (int64, error) {
	resp, err := c.do(ctx, benchRequest{method: http.MethodGet, url: "/v2/" + repo + "/blobs/" + d.String(), repo: repo})
	if err != nil {
		return 0, err
	}
	if err := expectStatus(resp, http.StatusOK); err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var h hash.Hash
	if verify {
		h = sha256.New()
	}
	n, err := readBody(resp.Body, h)
	if err != nil {
		return n, fmt.Errorf("GET blob %s after %d bytes: %w", d, n, err)
	}
	if size >= 0 && n != size {
		return n, fmt.Errorf("GET blob %s: %d bytes, want %d", d, n, size)
	}
	if h != nil {
		if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got != d {
			return n, fmt.Errorf("GET blob %s: content has digest %s", d, got)
		}
	}
	return n, nil
}

// readBody reads r to EOF into a pooled buffer, feeding h when non-nil.
func readBody(r io.Reader, h hash.Hash) (int64, error) {
	bp := benchBufPool.Get().(*[]byte)
	defer benchBufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			n += int64(k)
			if h != nil {
				h.Write(buf[:k])
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// Media types.
const (
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtConfig   = "application/vnd.oci.image.config.v1+json"
	mtLayer    = "application/vnd.oci.image.layer.v1.tar"
	mtAccept   = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, " +
		"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"
)

type benchDescriptor struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
}

type benchManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Config        benchDescriptor   `json:"config"`
	Layers        []benchDescriptor `json:"layers"`
}

// putManifest stores body under ref (a tag or its digest).
func (c *benchClient) putManifest(ctx context.Context, repo, ref string, body []byte) error {
	resp, err := c.do(ctx, benchRequest{method: http.MethodPut, url: "/v2/" + repo + "/manifests/" + ref, repo: repo,
		header: http.Header{"Content-Type": {mtManifest}},
		body:   func() io.Reader { return bytes.NewReader(body) }, length: int64(len(body))})
	if err != nil {
		return err
	}
	if err := expectStatus(resp, http.StatusCreated); err != nil {
		return err
	}
	drain(resp)
	return nil
}

// getManifest fetches a manifest (GET or HEAD) and returns its body (nil
// for HEAD) and the digest the registry reports. With want set it checks
// the body's digest (GET) or the reported digest (HEAD) against it.
func (c *benchClient) getManifest(ctx context.Context, method, repo, ref string, want digest.Digest) ([]byte, error) {
	resp, err := c.do(ctx, benchRequest{method: method, url: "/v2/" + repo + "/manifests/" + ref, repo: repo,
		header: http.Header{"Accept": {mtAccept}}})
	if err != nil {
		return nil, err
	}
	if err := expectStatus(resp, http.StatusOK); err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if method == http.MethodHead {
		if want != "" {
			if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != want.String() {
				return nil, fmt.Errorf("HEAD manifest %s: digest %s, want %s", ref, got, want)
			}
		}
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if want != "" {
		if got := digest.FromBytes(b); got != want {
			return nil, fmt.Errorf("GET manifest %s: body has digest %s, want %s", ref, got, want)
		}
	}
	return b, nil
}

// listTags fetches one page of tags (n, after last) and returns them.
func (c *benchClient) listTags(ctx context.Context, repo string, n int, last string) ([]string, error) {
	q := url.Values{"n": {strconv.Itoa(n)}}
	if last != "" {
		q.Set("last", last)
	}
	resp, err := c.do(ctx, benchRequest{method: http.MethodGet, url: "/v2/" + repo + "/tags/list?" + q.Encode(), repo: repo})
	if err != nil {
		return nil, err
	}
	if err := expectStatus(resp, http.StatusOK); err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var tl struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&tl); err != nil {
		return nil, fmt.Errorf("tag list: %w", err)
	}
	return tl.Tags, nil
}

// ping checks GET /v2/ (after auth).
func (c *benchClient) ping(ctx context.Context) error {
	resp, err := c.do(ctx, benchRequest{method: http.MethodGet, url: "/v2/"})
	if err != nil {
		return err
	}
	if err := expectStatus(resp, http.StatusOK); err != nil {
		return err
	}
	drain(resp)
	return nil
}
