package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client speaks the push and pull side of the OCI Distribution API with
// plain net/http, so that the tests control exactly which requests are sent
// (upload style, chunk boundaries, headers).
type Client struct {
	Base string // e.g. http://127.0.0.1:5000
	HTTP *http.Client
}

// NewClient returns a client for the registry at base with its own
// connection pool.
func NewClient(base string) *Client {
	return &Client{Base: strings.TrimSuffix(base, "/"), HTTP: &http.Client{Transport: NewTransport()}}
}

// NewTransport returns an HTTP transport for talking to a registry under
// test: no proxies, bounded waits, a small pool per host.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
}

// StatusError is an unexpected HTTP answer.
type StatusError struct {
	Op     string // what the client was doing
	Method string
	URL    string
	Status int
	Code   string // the first OCI error code of the body, if any
	Body   string // the start of the body
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: %s %s: HTTP %d %s %s", e.Op, e.Method, e.URL, e.Status, e.Code, strings.TrimSpace(e.Body))
}

// ProtocolError is an answer that is well formed HTTP but breaks the
// protocol or the registry's promises: a wrong digest header, an upload
// Range that does not match what was sent. It always fails a test.
type ProtocolError struct {
	Op  string
	Msg string
}

func (e *ProtocolError) Error() string { return "PROTOCOL VIOLATION: " + e.Op + ": " + e.Msg }

// IsTransient reports whether err is what a client sees while the server
// is down, restarting or busy: a transport error (refused, reset,
// truncated), 503 or 429. Such operations may be retried; whether they took
// effect is unknown.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status == http.StatusServiceUnavailable || se.Status == http.StatusTooManyRequests
	}
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return false
	}
	// Everything else comes from the transport or from reading a body.
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// IsServerError reports whether err is an error answer of the server's
// own making other than 503: a 500 "internal error" and the like. A real
// client retries such answers; the design promises that a cluster short of
// a leader or a node answers 503 UNAVAILABLE instead (docs/OPERATIONS.md).
func IsServerError(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Status >= 500 && se.Status != http.StatusServiceUnavailable
}

// ErrorCode is the OCI error code of err, or "".
func ErrorCode(err error) string {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return ""
}

// HTTPStatus is the HTTP status of err, or 0.
func HTTPStatus(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}

// statusError reads the rest of resp (bounded) into a StatusError.
func statusError(op string, resp *http.Response) *StatusError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &StatusError{Op: op, Method: resp.Request.Method, URL: resp.Request.URL.String(), Status: resp.StatusCode, Body: string(b)}
	var body struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(b, &body) == nil && len(body.Errors) > 0 {
		e.Code = body.Errors[0].Code
	}
	if len(e.Body) > 512 {
		e.Body = e.Body[:512] + "..."
	}
	return e
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
}

// resolve turns a Location header into an absolute URL.
func (c *Client) resolve(loc string) (string, error) {
	base, err := url.Parse(c.Base + "/")
	if err != nil {
		return "", err
	}
	u, err := base.Parse(loc)
	if err != nil {
		return "", fmt.Errorf("bad Location %q: %w", loc, err)
	}
	return u.String(), nil
}

func withQuery(rawURL, key, value string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func (c *Client) do(ctx context.Context, method, rawURL string, body io.Reader, n int64, hdr map[string]string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, rawURL, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = n
		if n == 0 {
			req.Body = http.NoBody
		}
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return c.HTTP.Do(req)
}

// checkBlobCreated checks a 201 answer to a blob push.
func checkBlobCreated(op string, resp *http.Response, b Blob) error {
	defer drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return statusError(op, resp)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != b.Digest {
		return &ProtocolError{op, fmt.Sprintf("201 Created with Docker-Content-Digest %q, pushed %s", got, b.Digest)}
	}
	if resp.Header.Get("Location") == "" {
		return &ProtocolError{op, "201 Created without a Location"}
	}
	return nil
}

// PushWhole pushes b in a single POST ?digest= request.
func (c *Client) PushWhole(ctx context.Context, repo string, b Blob) error {
	u, err := withQuery(c.Base+"/v2/"+repo+"/blobs/uploads/", "digest", b.Digest)
	if err != nil {
		return err
	}
	resp, err := c.do(ctx, http.MethodPost, u, b.Reader(), b.Size,
		map[string]string{"Content-Type": "application/octet-stream"})
	if err != nil {
		return err
	}
	return checkBlobCreated("single POST ?digest=", resp, b)
}

// PushMonolithic pushes b with POST (open a session) and one PUT ?digest=
// carrying all of it.
func (c *Client) PushMonolithic(ctx context.Context, repo string, b Blob) error {
	up, err := c.StartUpload(ctx, repo)
	if err != nil {
		return err
	}
	return up.Finish(ctx, b, b.Reader(), b.Size)
}

// Upload is a blob upload session as the client sees it.
type Upload struct {
	c        *Client
	Repo     string
	Location string // absolute URL of the session, from the last answer
	Offset   int64  // bytes the server has acknowledged
}

// StartUpload opens an upload session (POST).
func (c *Client) StartUpload(ctx context.Context, repo string) (*Upload, error) {
	resp, err := c.do(ctx, http.MethodPost, c.Base+"/v2/"+repo+"/blobs/uploads/", nil, 0, nil)
	if err != nil {
		return nil, err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusAccepted {
		return nil, statusError("open upload", resp)
	}
	u := &Upload{c: c, Repo: repo}
	if err := u.takeLocation("open upload", resp); err != nil {
		return nil, err
	}
	if off, err := parseUploadRange(resp.Header.Get("Range")); err != nil || off != 0 {
		return nil, &ProtocolError{"open upload", fmt.Sprintf("new session with Range %q", resp.Header.Get("Range"))}
	}
	return u, nil
}

func (u *Upload) takeLocation(op string, resp *http.Response) error {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return &ProtocolError{op, fmt.Sprintf("HTTP %d without a Location", resp.StatusCode)}
	}
	abs, err := u.c.resolve(loc)
	if err != nil {
		return &ProtocolError{op, err.Error()}
	}
	u.Location = abs
	return nil
}

// parseUploadRange turns an upload's Range header ("0-<last>") into the
// number of bytes received. "0-0" is read as 0: the protocol cannot tell 0
// from 1 byte, so callers never leave a session at 1 byte.
func parseUploadRange(h string) (int64, error) {
	h = strings.TrimPrefix(strings.TrimSpace(h), "bytes=")
	a, b, ok := strings.Cut(h, "-")
	if !ok || a != "0" {
		return 0, fmt.Errorf("bad upload Range %q", h)
	}
	last, err := strconv.ParseInt(b, 10, 64)
	if err != nil || last < 0 {
		return 0, fmt.Errorf("bad upload Range %q", h)
	}
	if last == 0 {
		return 0, nil
	}
	return last + 1, nil
}

// Rebase moves the session to the frontend of c (any frontend of a
// cluster serves any session): later requests go to c's host.
func (u *Upload) Rebase(c *Client) {
	if c == u.c {
		return
	}
	loc, err := url.Parse(u.Location)
	base, berr := url.Parse(c.Base)
	if err != nil || berr != nil {
		return
	}
	loc.Scheme, loc.Host = base.Scheme, base.Host
	u.Location, u.c = loc.String(), c
}

// Patch sends n bytes from body as the next chunk, with Content-Range. On
// 202 it checks that the server's Range moved exactly by n.
func (u *Upload) Patch(ctx context.Context, body io.Reader, n int64) error {
	hdr := map[string]string{
		"Content-Type":  "application/octet-stream",
		"Content-Range": fmt.Sprintf("%d-%d", u.Offset, u.Offset+n-1),
	}
	resp, err := u.c.do(ctx, http.MethodPatch, u.Location, body, n, hdr)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusAccepted {
		return statusError("PATCH chunk", resp)
	}
	off, err := parseUploadRange(resp.Header.Get("Range"))
	if err != nil || off != u.Offset+n {
		return &ProtocolError{"PATCH chunk", fmt.Sprintf("sent bytes %d..%d, server answered Range %q",
			u.Offset, u.Offset+n-1, resp.Header.Get("Range"))}
	}
	if err := u.takeLocation("PATCH chunk", resp); err != nil {
		return err
	}
	u.Offset += n
	return nil
}

// Status asks the server how many bytes the session holds (GET). It does
// not change u.Offset.
func (u *Upload) Status(ctx context.Context) (int64, error) {
	resp, err := u.c.do(ctx, http.MethodGet, u.Location, nil, 0, nil)
	if err != nil {
		return 0, err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusNoContent {
		return 0, statusError("upload status", resp)
	}
	off, err := parseUploadRange(resp.Header.Get("Range"))
	if err != nil {
		return 0, &ProtocolError{"upload status", err.Error()}
	}
	if loc := resp.Header.Get("Location"); loc != "" {
		if err := u.takeLocation("upload status", resp); err != nil {
			return 0, err
		}
	}
	return off, nil
}

// Finish closes the session with PUT ?digest=, sending n more bytes from
// body (n may be 0).
func (u *Upload) Finish(ctx context.Context, b Blob, body io.Reader, n int64) error {
	target, err := withQuery(u.Location, "digest", b.Digest)
	if err != nil {
		return err
	}
	hdr := map[string]string{"Content-Type": "application/octet-stream"}
	if n > 0 {
		hdr["Content-Range"] = fmt.Sprintf("%d-%d", u.Offset, u.Offset+n-1)
	} else {
		body = nil
	}
	resp, err := u.c.do(ctx, http.MethodPut, target, body, n, hdr)
	if err != nil {
		return err
	}
	if err := checkBlobCreated("PUT ?digest=", resp, b); err != nil {
		return err
	}
	u.Offset += n
	return nil
}

// PutManifest pushes a manifest under ref (a tag or digest) and checks the
// digest the server reports.
func (c *Client) PutManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error {
	sum := sha256.Sum256(body)
	want := "sha256:" + hex.EncodeToString(sum[:])
	resp, err := c.do(ctx, http.MethodPut, c.Base+"/v2/"+repo+"/manifests/"+ref, strings.NewReader(string(body)),
		int64(len(body)), map[string]string{"Content-Type": mediaType})
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return statusError("PUT manifest", resp)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != want {
		return &ProtocolError{"PUT manifest", fmt.Sprintf("201 Created with Docker-Content-Digest %q, pushed %s", got, want)}
	}
	return nil
}

// DeleteManifest deletes a manifest by digest (202 Accepted), or a tag.
func (c *Client) DeleteManifest(ctx context.Context, repo, ref string) error {
	resp, err := c.do(ctx, http.MethodDelete, c.Base+"/v2/"+repo+"/manifests/"+ref, nil, 0, nil)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusAccepted {
		return statusError("DELETE manifest", resp)
	}
	return nil
}
