package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-registry/strata/blobstore"
)

// gatedWriter holds every write of a response until gate is closed: a
// client that does not read.
type gatedWriter struct {
	http.ResponseWriter
	gate chan struct{}
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	<-g.gate
	return g.ResponseWriter.Write(p)
}

// A frontend's blob reads stay within its read memory. While the budget is
// held by a transfer whose client does not read, GETs of other blobs are
// refused with 429 TOOMANYREQUESTS (the OCI error body, Retry-After, nothing
// that describes the blob) instead of taking more memory or answering a
// 200 they cannot finish, and a herd pulling the blob being sent is not
// refused: its segments come from the segment cache or the fetch already
// under way. Once the transfer moves on, every GET (retrying its 429s) gets
// its exact bytes, and the budget is never exceeded.
func TestReadMemoryBudget(t *testing.T) {
	reg := prometheus.NewRegistry()
	// Two 1 MiB segments (k = 1, m = 0: one shard each, opened in place),
	// and a little room: a transfer and its next segment.
	budget := blobstore.NewReadBudget(2*(1<<20)+4096, reg)
	r := newTestRegistryWith(t, 1, 0, Config{Registry: reg}, func(c *blobstore.Config) {
		c.ReadBudget = budget
		c.SegmentCache = blobstore.NewSegmentCache(64<<20, reg)
	})
	rng := rand.New(rand.NewPCG(1, 2))
	blob := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	big := blob(4<<20 + 1000) // five segments
	bigD := r.pushBlob("mem", big)
	distinct := make([][]byte, 8)
	distinctD := make([]digest.Digest, len(distinct))
	for i := range distinct {
		distinct[i] = blob(1<<20 + 1000*i + 1)
		distinctD[i] = r.pushBlob("mem", distinct[i])
	}
	layout, err := r.srv.meta.RepoBlob(context.Background(), "mem", bigD.String())
	if err != nil {
		t.Fatal(err)
	}
	seg := layout.Segments[0]
	footprint := blobstore.ReadFootprint(seg)

	get := func(url string, d digest.Digest) (*http.Response, error) {
		return http.Get(url + "/v2/mem/blobs/" + d.String())
	}
	checkBody := func(what string, resp *http.Response, want []byte) error {
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		switch {
		case err != nil:
			return fmt.Errorf("%s: body after %d bytes: %v", what, len(got), err)
		case resp.StatusCode != http.StatusOK:
			return fmt.Errorf("%s: status %d: %s", what, resp.StatusCode, got)
		case !bytes.Equal(got, want):
			return fmt.Errorf("%s: %d bytes, not the blob's %d", what, len(got), len(want))
		}
		return nil
	}
	// check429 checks a refusal: a whole OCI error response, with nothing
	// that describes (or would cache) the blob.
	check429 := func(resp *http.Response) error {
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return fmt.Errorf("429 body: %v", err)
		}
		var eb errorBody
		if err := json.Unmarshal(b, &eb); err != nil || len(eb.Errors) != 1 || eb.Errors[0].Code != "TOOMANYREQUESTS" {
			return fmt.Errorf("429 body %q: %v", b, err)
		}
		h := resp.Header
		if h.Get("Retry-After") == "" || h.Get("Content-Type") != "application/json" ||
			h.Get("Cache-Control") != "" || h.Get("ETag") != "" || h.Get("Content-Range") != "" {
			return fmt.Errorf("429 headers %v", h)
		}
		return nil
	}

	// A client that does not read: its transfer holds the segment it is
	// sending and the next one, fetched ahead, which is the whole budget.
	gate := make(chan struct{})
	var openGate sync.Once
	handler := r.srv.Handler()
	gated := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		handler.ServeHTTP(&gatedWriter{ResponseWriter: w, gate: gate}, req)
	}))
	defer gated.Close()
	defer openGate.Do(func() { close(gate) }) // first, on failure too
	stalled := make(chan error, 1)
	go func() {
		resp, err := get(gated.URL, bigD)
		if err == nil {
			err = checkBody("the stalled transfer", resp, big)
		}
		stalled <- err
	}()
	for budget.Reserved()+footprint <= budget.Limit() {
		time.Sleep(time.Millisecond)
	}

	// A herd pulling the same blob is admitted (the first segments are
	// cached) and waits for the rest.
	const herd = 6
	herdStarted := make(chan int, herd)
	herdDone := make(chan error, herd)
	for range herd {
		go func() {
			resp, err := get(r.url, bigD)
			if err != nil {
				herdStarted <- 0
				herdDone <- err
				return
			}
			herdStarted <- resp.StatusCode
			herdDone <- checkBody("a herd pull", resp, big)
		}()
	}
	for range herd {
		if code := <-herdStarted; code != http.StatusOK {
			t.Fatalf("a herd pull of the blob being sent got %d", code)
		}
	}

	// Other blobs get no memory: 429, not a broken 200.
	metric := func(name string) float64 {
		for line := range strings.Lines(string(expect(t, r.do("GET", "/metrics", nil), http.StatusOK))) {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					t.Fatalf("%s: %v", line, err)
				}
				return f
			}
		}
		t.Fatalf("no %s in /metrics", name)
		return 0
	}
	throttled := metric("strata_http_requests_throttled_total")
	var wg sync.WaitGroup
	errs := make(chan error, len(distinct))
	for _, d := range distinctD {
		wg.Go(func() {
			resp, err := get(r.url, d)
			if err == nil && resp.StatusCode != http.StatusTooManyRequests {
				resp.Body.Close()
				err = fmt.Errorf("GET of another blob with the budget taken: %d", resp.StatusCode)
			} else if err == nil {
				err = check429(resp)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := metric("strata_http_requests_throttled_total") - throttled; got != float64(len(distinct)) {
		t.Fatalf("throttled counted %v refusals, want %d", got, len(distinct))
	}
	if got, want := metric("strata_read_memory_reserved_bytes"), float64(budget.Reserved()); got != want {
		t.Fatalf("strata_read_memory_reserved_bytes %v in /metrics, want %v", got, want)
	}
	if budget.Reserved() > budget.Limit() {
		t.Fatalf("%d bytes reserved, budget %d", budget.Reserved(), budget.Limit())
	}

	// The client reads again: its transfer and the herd finish.
	openGate.Do(func() { close(gate) })
	if err := <-stalled; err != nil {
		t.Fatal(err)
	}
	for range herd {
		if err := <-herdDone; err != nil {
			t.Fatal(err)
		}
	}

	// Many GETs of distinct blobs at once, each retrying its 429s: every
	// one gets its exact bytes.
	errs = make(chan error, 4*len(distinct))
	var refused sync.Map
	for i := range 4 * len(distinct) {
		wg.Go(func() {
			n := i % len(distinct)
			for attempt := 0; ; attempt++ {
				resp, err := get(r.url, distinctD[n])
				if err != nil {
					errs <- err
					return
				}
				if resp.StatusCode == http.StatusTooManyRequests {
					if err := check429(resp); err != nil {
						errs <- err
						return
					}
					refused.Store(i, attempt+1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				errs <- checkBody(fmt.Sprintf("GET %d of blob %d", i, n), resp, distinct[n])
				return
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	n429 := 0
	refused.Range(func(_, v any) bool { n429 += v.(int); return true })
	t.Logf("%d concurrent GETs: %d refusals retried; peak %d bytes reserved of %d", 4*len(distinct), n429, budget.Peak(), budget.Limit())

	if budget.Peak() > budget.Limit() {
		t.Fatalf("peak of %d bytes reserved, budget %d", budget.Peak(), budget.Limit())
	}
	// Every reservation is given back (the last ones just after the
	// bodies were sent).
	for budget.Reserved() != 0 {
		time.Sleep(time.Millisecond)
	}
}
