package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Upload styles of the workload.
const (
	StyleMonolithic = "monolithic POST+PUT"
	StyleChunked    = "chunked PATCH+PUT"
	StyleChunkedPut = "chunked PATCH, last chunk in PUT"
	StyleWhole      = "single POST ?digest="
	StyleGGCR       = "go-containerregistry remote.Write"
)

// Media types the workload pushes.
const (
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// WorkloadConfig configures a push workload.
type WorkloadConfig struct {
	// BaseURL of the registry.
	BaseURL string
	// Pushers is the number of concurrent pushers. Default 8.
	Pushers int
	// ReposPerPusher is how many repositories each pusher rotates over;
	// no two pushers share a repository. Default 2.
	ReposPerPusher int
	// Prefix of the repository names. Default "chaos".
	Prefix string
	// Seed makes the choices of the pushers (sizes, styles, contents)
	// repeatable; timing still varies.
	Seed uint64
	// PhaseBudget bounds the layer bytes the pushers start per History
	// phase, which bounds a run's size; a pusher that would go over waits
	// for the next phase. 0 means no bound.
	PhaseBudget int64
	// GGCRShare is the fraction of images pushed with go-containerregistry
	// instead of the hand-written protocol (0 to 1). Default 0.15; negative
	// for none.
	GGCRShare float64
	// UploadRate caps the bytes per second of all request bodies together
	// (a network link slower than the server's disks), so that uploads are
	// in flight long enough for a kill to land in them. 0: no cap.
	UploadRate float64
	// Readers is how many goroutines keep reading acknowledged blobs back
	// (and checking their bytes) while the pushes go on. Default 1;
	// negative for none.
	Readers int
	// History receives every operation. Required.
	History *History
	// Logf, if set, receives progress lines.
	Logf func(format string, args ...any)
}

// Workload is a running set of pushers (and readers). Each pusher pushes
// images in a loop: a few layers of varied sizes (from a few bytes to over
// two 8 MiB segments) and a config, each blob with a randomly chosen upload
// style, then an image manifest under a tag that is never reused. Blobs,
// manifests and tags are recorded in the History as attempted before they
// are sent and as acknowledged on 2xx.
//
// When the server goes away (a kill) a pusher keeps retrying the step it
// was on, as a real client would: an interrupted chunked upload asks the
// server how much of the session survived and resumes from there, and an
// image whose blobs were acknowledged before the kill is completed after
// the restart, so manifests also reference blobs pushed before a crash.
type Workload struct {
	cfg    WorkloadConfig
	h      *History
	cancel context.CancelFunc
	wg     sync.WaitGroup

	budgetMu   sync.Mutex
	phaseBytes map[int]int64
	images     atomic.Int64
	sentBytes  atomic.Int64 // request body bytes that went out
	reads      atomic.Int64

	shared []Blob // layers several pushers push (content stored once)
}

// StartWorkload starts the pushers and readers. Stop ends them.
func StartWorkload(cfg WorkloadConfig) *Workload {
	if cfg.Pushers == 0 {
		cfg.Pushers = 8
	}
	if cfg.ReposPerPusher == 0 {
		cfg.ReposPerPusher = 2
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "chaos"
	}
	if cfg.GGCRShare == 0 {
		cfg.GGCRShare = 0.15
	}
	if cfg.Readers == 0 {
		cfg.Readers = 1
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	w := &Workload{cfg: cfg, h: cfg.History, phaseBytes: map[int]int64{}}
	r := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	for i := 0; i < 4; i++ {
		w.shared = append(w.shared, GeneratedBlob(r.Uint64(), 300<<10+r.Int64N(3<<20)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	var lim *limiter
	if cfg.UploadRate > 0 {
		lim = &limiter{rate: cfg.UploadRate}
	}
	for i := 0; i < cfg.Pushers; i++ {
		c := NewClient(cfg.BaseURL)
		c.HTTP.Transport = &throttledTransport{base: c.HTTP.Transport, lim: lim, sent: &w.sentBytes}
		p := &pusher{w: w, id: i, c: c, r: rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1))}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			p.run(ctx)
		}()
	}
	for i := 0; i < cfg.Readers; i++ {
		rd := &reader{w: w, c: NewClient(cfg.BaseURL), r: rand.New(rand.NewPCG(cfg.Seed, 1000+uint64(i)))}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rd.run(ctx)
		}()
	}
	return w
}

// Stop cancels every operation in flight and waits for the goroutines.
// Operations cut short stay recorded as attempted.
func (w *Workload) Stop() {
	w.cancel()
	w.wg.Wait()
}

// PhaseBytes is how many layer bytes the pushers started in phase p.
func (w *Workload) PhaseBytes(p int) int64 {
	w.budgetMu.Lock()
	defer w.budgetMu.Unlock()
	return w.phaseBytes[p]
}

// Stats summarises the work done so far.
func (w *Workload) Stats() string {
	return fmt.Sprintf("%d images started, %.1f MiB of request bodies sent, %d concurrent reads checked",
		w.images.Load(), float64(w.sentBytes.Load())/(1<<20), w.reads.Load())
}

// reserve takes n bytes of the current phase's budget, waiting for a later
// phase if the current one is spent. It returns false when ctx ends.
func (w *Workload) reserve(ctx context.Context, n int64) bool {
	for {
		w.budgetMu.Lock()
		p := w.h.Phase()
		if w.cfg.PhaseBudget <= 0 || w.phaseBytes[p] == 0 || w.phaseBytes[p]+n <= w.cfg.PhaseBudget {
			w.phaseBytes[p] += n
			w.budgetMu.Unlock()
			return true
		}
		w.budgetMu.Unlock()
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pusher is one push client.
type pusher struct {
	w   *Workload
	id  int
	c   *Client
	r   *rand.Rand
	seq int
}

// image is one image push, planned up front.
type image struct {
	repo   string
	tag    string
	config Blob
	layers []Blob
	styles []string // per blob: config first, then layers
	ggcr   bool
}

const (
	kib = 1 << 10
	mib = 1 << 20
	// segment is the server's default segment size.
	segment = 8 * mib
)

// layerSize draws a layer size: mostly small, some of a few MiB, some over
// one or two segments, and edge sizes around the small-blob threshold and
// segment boundaries.
func (p *pusher) layerSize() int64 {
	r := p.r
	switch x := r.IntN(100); {
	case x < 6:
		edges := []int64{0, 1, 2, 256*kib - 1, 256 * kib, 256*kib + 1, segment - 1, segment, segment + 1, 2 * segment}
		return edges[r.IntN(len(edges))]
	case x < 46:
		return 2 + r.Int64N(256*kib-2) // tiny: under the small-blob threshold
	case x < 82:
		return 256*kib + r.Int64N(4*mib) // a few MiB: one segment
	default:
		return segment + 1 + r.Int64N(12*mib) // two or three segments
	}
}

func (p *pusher) plan() image {
	r := p.r
	p.seq++
	img := image{
		repo: fmt.Sprintf("%s/p%d/r%d", p.w.cfg.Prefix, p.id, p.seq%p.w.cfg.ReposPerPusher),
		tag:  fmt.Sprintf("p%d-i%d", p.id, p.seq),
		ggcr: r.Float64() < p.w.cfg.GGCRShare,
	}
	n := 1 + r.IntN(3)
	var diffIDs []string
	for i := 0; i < n; i++ {
		var b Blob
		if r.IntN(100) < 12 {
			b = p.w.shared[r.IntN(len(p.w.shared))]
		} else {
			b = GeneratedBlob(r.Uint64(), p.layerSize())
		}
		if slices.ContainsFunc(img.layers, func(l Blob) bool { return l.Digest == b.Digest }) {
			continue // the same layer twice in one image: keep it simple
		}
		img.layers = append(img.layers, b)
		diffIDs = append(diffIDs, b.Digest)
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
		"config":       map[string]any{"Labels": map[string]string{"chaos.image": img.repo + ":" + img.tag}},
	})
	img.config = LiteralBlob(cfg)
	styles := []string{StyleMonolithic, StyleChunked, StyleChunkedPut, StyleWhole}
	for range 1 + len(img.layers) {
		img.styles = append(img.styles, styles[r.IntN(len(styles))])
	}
	return img
}

func (img image) manifest() []byte {
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	m := struct {
		SchemaVersion int               `json:"schemaVersion"`
		MediaType     string            `json:"mediaType"`
		Config        desc              `json:"config"`
		Layers        []desc            `json:"layers"`
		Annotations   map[string]string `json:"annotations"`
	}{
		SchemaVersion: 2, MediaType: MediaTypeManifest,
		Config:      desc{MediaTypeConfig, img.config.Digest, img.config.Size},
		Layers:      []desc{},
		Annotations: map[string]string{"org.opencontainers.image.ref.name": img.tag},
	}
	for _, l := range img.layers {
		m.Layers = append(m.Layers, desc{MediaTypeLayer, l.Digest, l.Size})
	}
	b, _ := json.Marshal(m)
	return b
}

func (p *pusher) run(ctx context.Context) {
	for ctx.Err() == nil {
		img := p.plan()
		var total int64
		for _, l := range img.layers {
			total += l.Size
		}
		if !p.w.reserve(ctx, total) {
			return
		}
		p.w.images.Add(1)
		var err error
		if img.ggcr {
			err = p.pushGGCR(ctx, img)
		} else {
			err = p.pushImage(ctx, img)
		}
		if err != nil && ctx.Err() == nil {
			// Non-transient failures were recorded where they happened;
			// go on with the next image after a breath.
			p.w.cfg.Logf("pusher %d: image %s:%s abandoned: %v", p.id, img.repo, img.tag, err)
			sleepCtx(ctx, 200*time.Millisecond)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// maxRetryTime bounds how long a pusher retries one step while the server
// is away.
const maxRetryTime = 90 * time.Second

// retry runs op until it succeeds, fails for good, or ctx ends; transient
// failures (the server is down) are retried after a short pause.
func (p *pusher) retry(ctx context.Context, what string, op func() error) error {
	deadline := time.Now().Add(maxRetryTime)
	for {
		err := op()
		if err == nil || ctx.Err() != nil {
			if err != nil {
				return ctx.Err()
			}
			return nil
		}
		if !IsTransient(err) {
			p.record(what, err)
			return err
		}
		if time.Now().After(deadline) {
			p.w.h.Unexpected("pusher %d: %s: still failing after %v: %v", p.id, what, maxRetryTime, err)
			return err
		}
		sleepCtx(ctx, time.Duration(50+p.r.IntN(150))*time.Millisecond)
	}
}

// record files a non-transient failure in the history.
func (p *pusher) record(what string, err error) {
	var pe *ProtocolError
	switch {
	case errors.As(err, &pe):
		p.w.h.Violation("pusher %d: %s: %v", p.id, what, err)
	case ErrorCode(err) == "MANIFEST_BLOB_UNKNOWN":
		// Every blob of the manifest was acknowledged before the manifest
		// was sent: the server has lost one.
		p.w.h.Violation("pusher %d: %s: server no longer knows a blob it acknowledged: %v", p.id, what, err)
	default:
		p.w.h.Unexpected("pusher %d: %s: %v", p.id, what, err)
	}
}

func (p *pusher) pushImage(ctx context.Context, img image) error {
	blobs := append([]Blob{img.config}, img.layers...)
	for i, b := range blobs {
		if err := p.pushBlob(ctx, img.repo, b, img.styles[i]); err != nil {
			return err
		}
	}
	body := img.manifest()
	m := ManifestOp{Repo: img.repo, Tag: img.tag, Digest: LiteralBlob(body).Digest, MediaType: MediaTypeManifest, Body: body}
	p.w.h.AttemptManifest(m)
	err := p.retry(ctx, "PUT manifest "+img.repo+":"+img.tag, func() error {
		return p.c.PutManifest(ctx, img.repo, img.tag, MediaTypeManifest, body)
	})
	if err != nil {
		return err
	}
	p.w.h.AckManifest(m)
	return nil
}

// pushBlob pushes one blob in the given style, retrying through restarts.
func (p *pusher) pushBlob(ctx context.Context, repo string, b Blob, style string) error {
	p.w.h.AttemptBlob(repo, b, style)
	what := fmt.Sprintf("push %s to %s (%s)", b, repo, style)
	var err error
	switch style {
	case StyleMonolithic:
		err = p.retry(ctx, what, func() error {
			defer p.w.h.TrackInFlight()()
			return p.c.PushMonolithic(ctx, repo, b)
		})
	case StyleWhole:
		err = p.retry(ctx, what, func() error {
			defer p.w.h.TrackInFlight()()
			return p.c.PushWhole(ctx, repo, b)
		})
	case StyleChunked, StyleChunkedPut:
		err = p.pushChunked(ctx, repo, b, style == StyleChunkedPut, what)
	default:
		panic("unknown style " + style)
	}
	if err != nil {
		return err
	}
	p.w.h.AckBlob(repo, b, style)
	return nil
}

// chunkCuts splits size bytes into 2 or 3 chunks: the offsets where chunks
// end, ascending, the last being size. Sometimes a cut falls exactly on a
// segment boundary. No cut leaves a session at 1 byte (the upload Range
// header cannot tell 1 byte from 0).
func (p *pusher) chunkCuts(size int64) []int64 {
	if size < 6 {
		return []int64{size}
	}
	n := 2 + p.r.IntN(2)
	cuts := map[int64]bool{size: true}
	if size > segment+2 && p.r.IntN(4) == 0 {
		cuts[segment] = true
	}
	for len(cuts) < n {
		cuts[2+p.r.Int64N(size-2)] = true
	}
	var out []int64
	for c := range cuts {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// pushChunked pushes b as PATCH chunks with Content-Range and a closing PUT
// (empty, or carrying the last chunk when lastInPut). After a transient
// failure it asks the server where the session stands and resumes from
// there; a session the server no longer knows is started again.
func (p *pusher) pushChunked(ctx context.Context, repo string, b Blob, lastInPut bool, what string) error {
	data := b.Bytes()
	cuts := p.chunkCuts(b.Size)
	var up *Upload
	var pending int64  // bytes of the request that failed, which may have landed
	var finishing bool // the request that failed was the closing PUT
	return p.retry(ctx, what, func() error {
		if up != nil {
			off, err := up.Status(ctx)
			if err != nil {
				if ErrorCode(err) == "BLOB_UPLOAD_UNKNOWN" {
					if finishing {
						// The PUT may have committed, consuming the session.
						p.w.h.Note("chunked upload: closing PUT cut short and session gone: pushed again")
					} else {
						p.w.h.Note("chunked upload: session unknown after restart: pushed again")
					}
					up, pending, finishing = nil, 0, false
					return errRetryNow
				}
				return err
			}
			if off != up.Offset && (finishing || off != up.Offset+pending) {
				return &ProtocolError{"resume chunked upload", fmt.Sprintf(
					"%s: the server says the session holds %d bytes; the client had %d acknowledged and %d more in the %s that failed",
					b, off, up.Offset, pending, map[bool]string{true: "closing PUT", false: "PATCH"}[finishing])}
			}
			if off != up.Offset {
				p.w.h.Note("chunked upload: unacknowledged PATCH had landed")
			}
			p.w.h.Note("chunked upload: resumed")
			up.Offset, pending, finishing = off, 0, false
		}
		if up == nil {
			var err error
			if up, err = p.c.StartUpload(ctx, repo); err != nil {
				up = nil
				return err
			}
		}
		defer p.w.h.TrackInFlight()()
		for _, cut := range cuts {
			n := cut - up.Offset
			if n <= 0 {
				continue
			}
			if cut == b.Size && (lastInPut || b.Size < 6) {
				break // the last chunk goes in the PUT
			}
			pending = n
			if err := up.Patch(ctx, bytes.NewReader(data[up.Offset:cut]), n); err != nil {
				return err
			}
			pending = 0
		}
		rest := b.Size - up.Offset
		pending, finishing = rest, true
		return up.Finish(ctx, b, bytes.NewReader(data[up.Offset:]), rest)
	})
}

// errRetryNow makes retry go round again at once: it looks transient.
var errRetryNow = errors.New("retry now")

// reader keeps reading acknowledged blobs and manifests back while the
// workload runs, checking every byte. Transfers cut short by a kill are
// ignored; a 404 for something acknowledged, or a complete answer with
// wrong bytes, is a violation.
type reader struct {
	w *Workload
	c *Client
	r *rand.Rand
}

func (rd *reader) run(ctx context.Context) {
	var snap Snapshot
	for i := 0; ctx.Err() == nil; i++ {
		if i%10 == 0 {
			snap = rd.w.h.Snapshot()
		}
		if len(snap.AckedBlobs) == 0 {
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		op := snap.AckedBlobs[rd.r.IntN(len(snap.AckedBlobs))]
		if op.Blob.Size > 4*mib && rd.r.IntN(4) != 0 {
			continue // mostly small reads: the pushers own the bandwidth
		}
		err := CheckBlob(ctx, rd.c, op.Repo, op.Blob, true)
		switch {
		case err == nil:
			rd.w.reads.Add(1)
		case ctx.Err() != nil:
		case isViolation(err):
			rd.w.h.Violation("concurrent read of acknowledged blob %s in %s (pushed in phase %d, %s): %v",
				op.Blob, op.Repo, op.Phase, op.Style, err)
		}
		if len(snap.AckedManifests) > 0 {
			m := snap.AckedManifests[rd.r.IntN(len(snap.AckedManifests))]
			err := CheckManifest(ctx, rd.c, m, true)
			if err != nil && ctx.Err() == nil && isViolation(err) {
				rd.w.h.Violation("concurrent read of acknowledged manifest %s:%s: %v", m.Repo, m.Tag, err)
			}
		}
		sleepCtx(ctx, 20*time.Millisecond)
	}
}

// isViolation tells broken promises from the server being away.
func isViolation(err error) bool {
	var ce *CheckError
	return errors.As(err, &ce)
}

// blobURL is the URL of a blob.
func (c *Client) blobURL(repo, dgst string) string { return c.Base + "/v2/" + repo + "/blobs/" + dgst }

func (c *Client) manifestURL(repo, ref string) string {
	return c.Base + "/v2/" + repo + "/manifests/" + ref
}
