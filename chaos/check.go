package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// CheckError is a broken promise found by a checker: acknowledged data
// missing, wrong bytes, wrong headers. Other errors returned by the checks
// (transport failures, 503) only mean the server could not be asked.
type CheckError struct {
	What string
	// Lost is set when the server answered 404 for something that must
	// exist (as opposed to wrong bytes or headers).
	Lost bool
}

func (e *CheckError) Error() string { return e.What }

func violationf(format string, args ...any) error {
	return &CheckError{What: fmt.Sprintf(format, args...)}
}

// lostf is violationf for something acknowledged that the server says it
// does not know.
func lostf(format string, args ...any) error {
	return &CheckError{What: fmt.Sprintf(format, args...), Lost: true}
}

// IsLost reports whether err is a CheckError for something missing.
func IsLost(err error) bool {
	var ce *CheckError
	return errors.As(err, &ce) && ce.Lost
}

// requireGone checks that an answer says "unknown" with the expected OCI
// code: the only acceptable answer about something that may or may not
// have been stored, other than the right bytes.
func requireGone(resp *http.Response, code, what string) error {
	se := statusError(what, resp)
	if resp.Request.Method == http.MethodHead || se.Code == code {
		return nil
	}
	return violationf("%s: 404 with error code %q, want %s", what, se.Code, code)
}

// CheckBlob checks blob b in repo with HEAD and GET: the right status, the
// Content-Length and Docker-Content-Digest headers, and every byte of the
// body. When mustExist is false (the push was never acknowledged) the blob
// may also be unknown (404 BLOB_UNKNOWN), but never wrong; it may appear
// between the two requests (a retried push finishing), but not vanish.
func CheckBlob(ctx context.Context, c *Client, repo string, b Blob, mustExist bool) error {
	u := c.blobURL(repo, b.Digest)
	present := false
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		what := fmt.Sprintf("%s %s in %s", method, b, repo)
		resp, err := c.do(ctx, method, u, nil, 0, nil)
		if err != nil {
			return err
		}
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusNotFound:
			if mustExist {
				se := statusError(what, resp)
				resp.Body.Close()
				return lostf("LOST ACKNOWLEDGED BLOB: %s: 404 %s %s", what, se.Code, se.Body)
			}
			if present {
				resp.Body.Close()
				return violationf("%s: 404 after HEAD said 200", what)
			}
			err := requireGone(resp, "BLOB_UNKNOWN", what)
			resp.Body.Close()
			if err != nil {
				return err
			}
			continue
		default:
			se := statusError(what, resp)
			resp.Body.Close()
			if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
				return se // the server could not answer; it said nothing wrong
			}
			return violationf("%s: %v", what, se)
		}
		// (200 after HEAD said 404 is fine: a retry of the push may have
		// finished in between.)
		present = true
		if err := checkBlobHeaders(what, resp, b); err != nil {
			resp.Body.Close()
			return err
		}
		if method == http.MethodGet {
			err := CompareContent(b, resp.Body)
			resp.Body.Close()
			var re *ReadError
			if errors.As(err, &re) {
				return err
			}
			if err != nil {
				return violationf("%s: %v", what, err)
			}
		} else {
			drain(resp)
		}
	}
	return nil
}

func checkBlobHeaders(what string, resp *http.Response, b Blob) error {
	if got := resp.Header.Get("Docker-Content-Digest"); got != b.Digest {
		return violationf("%s: Docker-Content-Digest %q", what, got)
	}
	if got := resp.Header.Get("Content-Length"); got != strconv.FormatInt(b.Size, 10) {
		return violationf("%s: Content-Length %q, want %d", what, got, b.Size)
	}
	return nil
}

// CheckBlobRange reads bytes [off, off+n) of an acknowledged blob with a
// Range request and compares them. A range reaching past the end is cut at
// the end, as the server must do (RFC 9110).
func CheckBlobRange(ctx context.Context, c *Client, repo string, b Blob, off, n int64) error {
	what := fmt.Sprintf("GET %s in %s, Range bytes=%d-%d", b, repo, off, off+n-1)
	resp, err := c.do(ctx, http.MethodGet, c.blobURL(repo, b.Digest), nil, 0,
		map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", off, off+n-1)})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return violationf("%s: %v", what, statusError(what, resp))
	}
	n = min(n, b.Size-off)
	if got, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, b.Size); got != want {
		return violationf("%s: Content-Range %q, want %q", what, got, want)
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if want := b.SectionOf(off, n); !bytes.Equal(got, want) {
		return violationf("WRONG CONTENT: %s: %d bytes differ from the pushed ones (first at +%d)", what, len(got), firstMismatch(got, want))
	}
	return nil
}

// CheckManifest checks a manifest by digest (GET and HEAD: bytes, digest
// and media type) and by tag (it must resolve to the same bytes). When
// mustExist is false (the push was never acknowledged) both may be unknown
// (404 MANIFEST_UNKNOWN), but never different; the workloads never reuse a
// tag, so a tag that exists must point at this manifest.
func CheckManifest(ctx context.Context, c *Client, m ManifestOp, mustExist bool) error {
	present := map[string]bool{}
	for _, ref := range []string{m.Digest, m.Tag} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			what := fmt.Sprintf("%s manifest %s:%s (%s)", method, m.Repo, ref, m.Digest)
			resp, err := c.do(ctx, method, c.manifestURL(m.Repo, ref), nil, 0,
				map[string]string{"Accept": m.MediaType})
			if err != nil {
				return err
			}
			switch resp.StatusCode {
			case http.StatusOK:
			case http.StatusNotFound:
				if mustExist {
					se := statusError(what, resp)
					resp.Body.Close()
					return lostf("LOST ACKNOWLEDGED MANIFEST: %s: 404 %s %s", what, se.Code, se.Body)
				}
				err := requireGone(resp, "MANIFEST_UNKNOWN", what)
				resp.Body.Close()
				if err != nil {
					return err
				}
				if present[ref] {
					return violationf("%s: 404 after GET said 200", what)
				}
				continue
			default:
				se := statusError(what, resp)
				resp.Body.Close()
				if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
					return se // the server could not answer; it said nothing wrong
				}
				return violationf("%s: %v", what, se)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			present[ref] = true
			if got := resp.Header.Get("Docker-Content-Digest"); got != m.Digest {
				return violationf("%s: Docker-Content-Digest %q", what, got)
			}
			if got := resp.Header.Get("Content-Type"); got != m.MediaType {
				return violationf("%s: Content-Type %q, want %q", what, got, m.MediaType)
			}
			if got := resp.Header.Get("Content-Length"); got != strconv.Itoa(len(m.Body)) {
				return violationf("%s: Content-Length %q, want %d", what, got, len(m.Body))
			}
			if method == http.MethodGet && !bytes.Equal(body, m.Body) {
				return violationf("WRONG CONTENT: %s: %d bytes differ from the %d pushed", what, len(body), len(m.Body))
			}
		}
	}
	if mustExist && present[m.Tag] && !present[m.Digest] {
		return violationf("manifest %s:%s resolves by tag but %s is unknown by digest", m.Repo, m.Tag, m.Digest)
	}
	return nil
}

// CheckTags checks that the tag listing of repo holds every tag in want.
func CheckTags(ctx context.Context, c *Client, repo string, want []string) error {
	what := "GET tags of " + repo
	resp, err := c.do(ctx, http.MethodGet, c.Base+"/v2/"+repo+"/tags/list?n=10000", nil, 0, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return violationf("%s: %v", what, statusError(what, resp))
	}
	var list struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return violationf("%s: %v", what, err)
	}
	var missing []string
	for _, t := range want {
		if !slices.Contains(list.Tags, t) {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return lostf("LOST ACKNOWLEDGED TAGS: %s: %d of %d acknowledged tags missing from the listing: %v",
			what, len(missing), len(want), missing)
	}
	return nil
}

// VerifyOptions tunes Verify.
type VerifyOptions struct {
	// Quick checks acknowledged blobs with HEAD only, not their bytes:
	// cheap enough after every restart. (Unacknowledged blobs, few, are
	// always read in full.)
	Quick bool
	// Parallel is how many checks run at once. Default 4.
	Parallel int
	// LiveOnly holds the server only to the acknowledged blobs that a live
	// acknowledged manifest references (LiveBlobs): garbage collection at
	// zero grace may take any other blob at once.
	LiveOnly bool
	// Retries is how many times a check that could not run (the server
	// did not answer, 503) is tried again, a second apart, before it
	// counts as a failure. Broken promises are never retried.
	Retries int
}

// VerifyReport is the outcome of Verify.
type VerifyReport struct {
	Failures []string // every broken promise, and every check that could not run
	// Counts of what was checked.
	AckedBlobs, AckedManifests, Repos int
	BlobBytes                         int64
	// Deleted manifests checked (gone, or for unacknowledged deletions
	// gone or intact).
	DeletedManifests int
	// Unacknowledged operations found stored (correctly) and found absent.
	UnackedPresent, UnackedAbsent int
}

// Verify holds the server at c to everything in snap: every acknowledged
// blob and manifest is there with its exact bytes, every acknowledged tag
// resolves and is listed, and every unacknowledged blob or manifest is
// either unknown or exactly right. Every error counts as a failure: the
// server is expected to be up. Pushes may go on meanwhile (they may turn
// unacknowledged operations into stored ones, which the checks allow).
func Verify(ctx context.Context, c *Client, snap Snapshot, opts VerifyOptions) VerifyReport {
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	var (
		mu  sync.Mutex
		rep VerifyReport
		wg  sync.WaitGroup
	)
	jobs := make(chan func() error)
	fail := func(err error) {
		mu.Lock()
		rep.Failures = append(rep.Failures, err.Error())
		mu.Unlock()
	}
	for i := 0; i < opts.Parallel; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for job := range jobs {
				err := job()
				for i := 0; i < opts.Retries && err != nil && !isViolation(err) && ctx.Err() == nil; i++ {
					sleepCtx(ctx, time.Second)
					err = job()
				}
				if err != nil {
					fail(err)
				}
			}
		}()
	}
	unacked := func(present bool) {
		mu.Lock()
		defer mu.Unlock()
		if present {
			rep.UnackedPresent++
		} else {
			rep.UnackedAbsent++
		}
	}
	tags := map[string][]string{}
	blobs := snap.AckedBlobs
	if opts.LiveOnly {
		blobs = snap.LiveBlobs()
	}
	for _, op := range blobs {
		rep.AckedBlobs++
		rep.BlobBytes += op.Blob.Size
		jobs <- func() error {
			if opts.Quick {
				return headBlob(ctx, c, op)
			}
			if err := CheckBlob(ctx, c, op.Repo, op.Blob, true); err != nil {
				return fmt.Errorf("%w [acknowledged in phase %d, %s]", err, op.Phase, op.Style)
			}
			if op.Blob.Size > segment {
				// A range across the first segment boundary.
				if err := CheckBlobRange(ctx, c, op.Repo, op.Blob, segment-1000, 2000); err != nil {
					return fmt.Errorf("%w [acknowledged in phase %d, %s]", err, op.Phase, op.Style)
				}
			}
			return nil
		}
	}
	for _, m := range snap.AckedManifests {
		rep.AckedManifests++
		tags[m.Repo] = append(tags[m.Repo], m.Tag)
		jobs <- func() error {
			if err := CheckManifest(ctx, c, m, true); err != nil {
				return fmt.Errorf("%w [acknowledged in phase %d]", err, m.Phase)
			}
			return nil
		}
	}
	for _, m := range snap.DeletedMans {
		rep.DeletedManifests++
		jobs <- func() error { return CheckManifestGone(ctx, c, m) }
	}
	for _, m := range snap.DeletingMans {
		rep.DeletedManifests++
		jobs <- func() error {
			if err := CheckManifest(ctx, c, m, false); err != nil {
				return fmt.Errorf("manifest whose deletion was not acknowledged: %w", err)
			}
			return nil
		}
	}
	rep.Repos = len(tags)
	for repo, want := range tags {
		jobs <- func() error { return CheckTags(ctx, c, repo, want) }
	}
	{
		for _, op := range snap.AttemptedBlobs {
			jobs <- func() error {
				err := CheckBlob(ctx, c, op.Repo, op.Blob, false)
				if err != nil {
					return fmt.Errorf("unacknowledged push: %w [sent in phase %d, %s]", err, op.Phase, op.Style)
				}
				unacked(blobPresent(ctx, c, op))
				return nil
			}
		}
		for _, m := range snap.AttemptedMans {
			jobs <- func() error {
				if err := CheckManifest(ctx, c, m, false); err != nil {
					return fmt.Errorf("unacknowledged push: %w [sent in phase %d]", err, m.Phase)
				}
				return nil
			}
		}
	}
	close(jobs)
	wg.Wait()
	slices.Sort(rep.Failures)
	return rep
}

func headBlob(ctx context.Context, c *Client, op BlobOp) error {
	what := fmt.Sprintf("HEAD %s in %s [acknowledged in phase %d, %s]", op.Blob, op.Repo, op.Phase, op.Style)
	resp, err := c.do(ctx, http.MethodHead, c.blobURL(op.Repo, op.Blob.Digest), nil, 0, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	drain(resp)
	if resp.StatusCode == http.StatusNotFound {
		return lostf("LOST ACKNOWLEDGED BLOB: %s: 404", what)
	}
	if resp.StatusCode != http.StatusOK {
		return violationf("%s: HTTP %d", what, resp.StatusCode)
	}
	return checkBlobHeaders(what, resp, op.Blob)
}

func blobPresent(ctx context.Context, c *Client, op BlobOp) bool {
	resp, err := c.do(ctx, http.MethodHead, c.blobURL(op.Repo, op.Blob.Digest), nil, 0, nil)
	if err != nil {
		return false
	}
	drain(resp)
	return resp.StatusCode == http.StatusOK
}

// CheckManifestGone checks that a manifest whose deletion was acknowledged
// is unknown by digest and by tag (the workloads never reuse a tag).
func CheckManifestGone(ctx context.Context, c *Client, m ManifestOp) error {
	for _, ref := range []string{m.Digest, m.Tag} {
		what := fmt.Sprintf("GET deleted manifest %s:%s (%s)", m.Repo, ref, m.Digest)
		resp, err := c.do(ctx, http.MethodGet, c.manifestURL(m.Repo, ref), nil, 0,
			map[string]string{"Accept": m.MediaType})
		if err != nil {
			return err
		}
		switch resp.StatusCode {
		case http.StatusNotFound:
			err := requireGone(resp, "MANIFEST_UNKNOWN", what)
			resp.Body.Close()
			if err != nil {
				return err
			}
		default:
			se := statusError(what, resp)
			resp.Body.Close()
			if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
				return se
			}
			return violationf("DELETED MANIFEST SERVED: %s: acknowledged deletion, yet HTTP %d", what, se.Status)
		}
	}
	return nil
}
