package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/strata-registry/strata/chaos"
)

// TestCrashDuringChunkedUpload drives one large chunked upload (about 29 MiB:
// chunks of 12, 12 and 5 MiB that do not line up with the 8 MiB segments)
// and SIGKILLs the server at each interesting point: right after the POST,
// in the middle of a PATCH, right after a PATCH was acknowledged, in the
// middle of the closing PUT, and right after it. After every restart the
// session must either report exactly the bytes acknowledged so far (and
// then resume to the right blob) or be unknown; the blob must stay unknown
// until the closing PUT is acknowledged and then be served byte-identical.
func TestCrashDuringChunkedUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test: builds the server and kills it repeatedly")
	}
	began := time.Now()
	seed := chaos.Seed(t)
	srv := chaos.StartProcess(t, chaos.ProcessConfig{DataDir: chaos.KeepOnFailureDir(t, "data")})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const (
		mib    = 1 << 20
		chunk1 = 12 * mib
		chunk2 = 12 * mib
	)
	blob := chaos.GeneratedBlob(seed, chunk1+chunk2+5*mib+12345)
	data := blob.Bytes()
	repo := fmt.Sprintf("chaos/chunked-%x", seed&0xffffff)
	c := chaos.NewClient(srv.URL())
	t.Logf("pushing %s to %s in chunks of %d, %d and %d bytes", blob, repo, chunk1, chunk2, blob.Size-chunk1-chunk2)

	restart := func(why string) {
		t.Helper()
		srv.Kill()
		srv.Restart()
		c.HTTP.CloseIdleConnections()
		t.Logf("killed and restarted %s", why)
	}
	sessionsLost := 0
	// resume asks the restarted server where the session stands: exactly
	// acked bytes, or unknown (then a new session is brought to acked).
	resume := func(up *chaos.Upload, acked int64, when string) *chaos.Upload {
		t.Helper()
		off, err := up.Status(ctx)
		switch {
		case err == nil && off == acked:
			up.Offset = off
			return up
		case err == nil:
			t.Fatalf("%s: the upload session holds %d bytes; the server had acknowledged %d", when, off, acked)
		case chaos.ErrorCode(err) == "BLOB_UPLOAD_UNKNOWN":
			sessionsLost++
			t.Logf("%s: the server no longer knows the upload session (allowed); starting a new one", when)
			nu, err := c.StartUpload(ctx, repo)
			if err != nil {
				t.Fatalf("%s: new session: %v", when, err)
			}
			if acked > 0 {
				if err := nu.Patch(ctx, bytesReader(data[:acked]), acked); err != nil {
					t.Fatalf("%s: re-sending %d bytes: %v", when, acked, err)
				}
			}
			return nu
		default:
			t.Fatalf("%s: upload status: %v", when, err)
		}
		return nil
	}
	// requireBlobUnknown checks that the unfinished blob is not served.
	requireBlobUnknown := func(when string) {
		t.Helper()
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			req, _ := http.NewRequestWithContext(ctx, method, srv.URL()+"/v2/"+repo+"/blobs/"+blob.Digest, nil)
			resp, err := c.HTTP.Do(req)
			if err != nil {
				t.Fatalf("%s: %s blob: %v", when, method, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s: %s of a blob whose upload was never finished: HTTP %d (%d bytes), want 404",
					when, method, resp.StatusCode, len(body))
			} else if method == http.MethodGet && !bytesContains(body, "BLOB_UNKNOWN") {
				t.Errorf("%s: GET of an unfinished blob: 404 without BLOB_UNKNOWN: %s", when, body)
			}
		}
	}
	// killDuring starts a request whose body is fed through a pipe, sends
	// the first sent bytes of it, lets the server work on them, and kills
	// the server with the request still open. The request must fail.
	killDuring := func(what string, send func(body io.Reader) error, body []byte, sent int) {
		t.Helper()
		pr, pw := io.Pipe()
		errc := make(chan error, 1)
		go func() { errc <- send(pr) }()
		if _, err := pw.Write(body[:sent]); err != nil {
			t.Fatalf("%s: the request ended before %d of its %d bytes were sent: %v (%v)", what, sent, len(body), err, <-errc)
		}
		time.Sleep(300 * time.Millisecond) // let the server cut and store segments
		srv.Kill()
		// net/http waits for the body writer to finish before it reports a
		// failed request: end the body (as an error, so that it is not
		// taken for a complete one).
		pw.CloseWithError(errors.New("server killed"))
		var err error
		select {
		case err = <-errc:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the request did not end after the server was killed", what)
		}
		if err == nil {
			t.Fatalf("%s: acknowledged although only %d of %d bytes were sent", what, sent, len(body))
		}
		if !chaos.IsTransient(err) {
			t.Fatalf("%s: %v", what, err)
		}
		srv.Restart()
		c.HTTP.CloseIdleConnections()
		t.Logf("killed and restarted %d bytes into %s", sent, what)
	}

	// 1. Kill right after the session was opened.
	up, err := c.StartUpload(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	restart("right after the POST that opened the session")
	up = resume(up, 0, "after a kill right after POST")

	// 2. First chunk acknowledged, then a kill 9 MiB into the second one.
	if err := up.Patch(ctx, bytesReader(data[:chunk1]), chunk1); err != nil {
		t.Fatalf("PATCH chunk 1: %v", err)
	}
	killDuring("PATCH of chunk 2", func(body io.Reader) error { return up.Patch(ctx, body, chunk2) },
		data[chunk1:chunk1+chunk2], 9*mib)
	up = resume(up, chunk1, "after a kill during PATCH of chunk 2")
	requireBlobUnknown("after a kill during PATCH of chunk 2")

	// A chunk that starts where the client's own bytes had got to, not
	// where the server is, must be refused with 416 and change nothing.
	wrong := *up
	wrong.Offset = chunk1 + 9*mib
	err = wrong.Patch(ctx, bytesReader(data[wrong.Offset:chunk1+chunk2]), chunk1+chunk2-wrong.Offset)
	if chaos.HTTPStatus(err) != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("PATCH at offset %d of a session at %d: %v, want 416 BLOB_UPLOAD_INVALID", wrong.Offset, up.Offset, err)
	}
	if off, err := up.Status(ctx); err != nil || off != chunk1 {
		t.Errorf("after a refused out-of-order PATCH the session holds %d bytes (%v), want %d", off, err, chunk1)
	}

	// 3. Resume chunk 2 from where the server is; kill right after its ack.
	if err := up.Patch(ctx, bytesReader(data[chunk1:chunk1+chunk2]), chunk2); err != nil {
		t.Fatalf("PATCH chunk 2 (resumed): %v", err)
	}
	restart("right after PATCH of chunk 2 was acknowledged")
	up = resume(up, chunk1+chunk2, "after a kill right after PATCH of chunk 2")
	requireBlobUnknown("after a kill right after PATCH of chunk 2")

	// 4. Kill in the middle of the closing PUT that carries the last chunk.
	last := data[chunk1+chunk2:]
	killDuring("closing PUT with the last chunk", func(body io.Reader) error {
		return up.Finish(ctx, blob, body, int64(len(last)))
	}, last, 3*mib)
	up = resume(up, chunk1+chunk2, "after a kill during the closing PUT")
	requireBlobUnknown("after a kill during the closing PUT")

	// 5. Finish; the blob must be right, and stay right after a kill.
	if err := up.Finish(ctx, blob, bytesReader(last), int64(len(last))); err != nil {
		t.Fatalf("closing PUT: %v", err)
	}
	if err := chaos.CheckBlob(ctx, c, repo, blob, true); err != nil {
		t.Errorf("after the closing PUT: %v", err)
	}
	restart("right after the closing PUT was acknowledged")
	if err := chaos.CheckBlob(ctx, c, repo, blob, true); err != nil {
		t.Errorf("after a kill right after the closing PUT: %v", err)
	}
	for _, r := range [][2]int64{{chunk1 - 100, 200}, {8*mib - 1, 2}, {blob.Size - 10, 10}} {
		if err := chaos.CheckBlobRange(ctx, c, repo, blob, r[0], r[1]); err != nil {
			t.Errorf("after a kill right after the closing PUT: %v", err)
		}
	}
	if _, err := up.Status(ctx); chaos.ErrorCode(err) != "BLOB_UPLOAD_UNKNOWN" {
		t.Errorf("status of a finished upload session: %v, want 404 BLOB_UPLOAD_UNKNOWN", err)
	}
	if p := srv.LogProblems(); len(p) > 0 {
		t.Errorf("the server log shows crashes of its own:\n%v", p)
	}
	t.Logf("done in %v (%d upload sessions lost in restarts)", time.Since(began).Round(time.Millisecond), sessionsLost)
}
