package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
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
	StyleProbe      = "probe: single POST ?digest="
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
	// Frontends, when set, are the base URLs of several frontends of one
	// registry (BaseURL is then ignored): every pusher and reader spreads
	// its requests over them, moves to another after a transient failure,
	// and resumes chunked uploads through whichever frontend answers.
	Frontends []string
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
	// MaxLayerSize caps the size of generated layers (0: up to about 20
	// MiB, three segments).
	MaxLayerSize int64
	// TotalBudget bounds the layer bytes of a whole run: past it, layers
	// are tiny (under 64 KiB), so that a long run keeps pushing without
	// filling the disks. 0: no bound.
	TotalBudget int64
	// Collecting says garbage collection at zero grace may run during the
	// workload: a blob no manifest references yet may vanish at any moment,
	// and a manifest push refused with MANIFEST_BLOB_UNKNOWN is met by
	// uploading the image's blobs again (up to 5 times) instead of being a
	// violation.
	Collecting bool
	// DeleteEvery, when set, runs a deleter that deletes one acknowledged
	// image (by digest, through any frontend) this often.
	DeleteEvery time.Duration
	// ProbeEvery, when set, runs a prober that pushes a tiny new blob in
	// one request this often, through the frontends in turn: its
	// acknowledgements time the windows of unavailability.
	ProbeEvery time.Duration
	// RetryServerErrors makes the clients retry 5xx answers other than 503
	// (as real clients do) and record them with History.ServerError,
	// instead of giving up on the image and calling them unexpected.
	RetryServerErrors bool
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
	pulls      atomic.Int64 // whole images pulled and checked
	totalBytes atomic.Int64 // layer bytes planned so far
	deletes    atomic.Int64 // deletions acknowledged
	probes     atomic.Int64 // probe pushes acknowledged

	shared []Blob // layers several pushers push (content stored once)
}

// StartWorkload starts the pushers and readers (and the deleter and the
// prober when configured). Stop ends them.
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
	if len(cfg.Frontends) == 0 {
		cfg.Frontends = []string{cfg.BaseURL}
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
	clients := func(throttled bool) []*Client {
		var out []*Client
		for _, fe := range cfg.Frontends {
			c := NewClient(fe)
			if throttled {
				c.HTTP.Transport = &throttledTransport{base: c.HTTP.Transport, lim: lim, sent: &w.sentBytes}
			}
			out = append(out, c)
		}
		return out
	}
	for i := 0; i < cfg.Pushers; i++ {
		p := &pusher{w: w, id: i, clients: clients(true), r: rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1))}
		p.cur = i % len(p.clients)
		p.c = p.clients[p.cur]
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			p.run(ctx)
		}()
	}
	for i := 0; i < cfg.Readers; i++ {
		rd := &reader{w: w, clients: clients(false), r: rand.New(rand.NewPCG(cfg.Seed, 1000+uint64(i)))}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rd.run(ctx)
		}()
	}
	if cfg.DeleteEvery > 0 {
		d := &deleter{w: w, clients: clients(false), r: rand.New(rand.NewPCG(cfg.Seed, 2000))}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			d.run(ctx)
		}()
	}
	if cfg.ProbeEvery > 0 {
		pr := &prober{w: w, clients: clients(false), seed: cfg.Seed}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			pr.run(ctx)
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
	s := fmt.Sprintf("%d images started, %.1f MiB of request bodies sent, %d concurrent reads checked",
		w.images.Load(), float64(w.sentBytes.Load())/(1<<20), w.reads.Load())
	if n := w.pulls.Load(); n > 0 {
		s += fmt.Sprintf(", %d images pulled", n)
	}
	if w.cfg.DeleteEvery > 0 {
		s += fmt.Sprintf(", %d images deleted", w.deletes.Load())
	}
	if w.cfg.ProbeEvery > 0 {
		s += fmt.Sprintf(", %d probes acknowledged", w.probes.Load())
	}
	return s
}

// Counters are the workload's own counts (the History has the rest).
type Counters struct {
	Images      int64   `json:"images_started"`
	SentMiB     float64 `json:"request_mib_sent"`
	Reads       int64   `json:"concurrent_reads_checked"`
	Pulls       int64   `json:"images_pulled_checked"`
	Deletes     int64   `json:"deletes_acknowledged"`
	ProbesAcked int64   `json:"probes_acknowledged"`
}

// Counters returns the workload's counts so far.
func (w *Workload) Counters() Counters {
	return Counters{Images: w.images.Load(), SentMiB: float64(w.sentBytes.Load()) / (1 << 20), Reads: w.reads.Load(),
		Pulls: w.pulls.Load(), Deletes: w.deletes.Load(), ProbesAcked: w.probes.Load()}
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
	w       *Workload
	id      int
	clients []*Client // one per frontend
	cur     int
	c       *Client // clients[cur]
	r       *rand.Rand
	seq     int
}

// rotate moves the pusher to the next frontend (after a transient failure).
func (p *pusher) rotate() {
	p.cur = (p.cur + 1) % len(p.clients)
	p.c = p.clients[p.cur]
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
	n := p.drawLayerSize()
	if m := p.w.cfg.MaxLayerSize; m > 0 && n > m {
		n = m - p.r.Int64N(m/2+1)
	}
	if b := p.w.cfg.TotalBudget; b > 0 && p.w.totalBytes.Load() > b {
		n = min(n, 1+p.r.Int64N(64*kib))
	}
	p.w.totalBytes.Add(n)
	return n
}

func (p *pusher) drawLayerSize() int64 {
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
		if b.Size > 64*kib && p.w.cfg.TotalBudget > 0 && p.w.totalBytes.Load() > p.w.cfg.TotalBudget {
			continue // a shared layer is big; past the budget only tiny ones
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
		if p.w.cfg.RetryServerErrors && IsServerError(err) {
			p.w.h.ServerError("pusher %d: %s: %v", p.id, what, err)
		} else if !IsTransient(err) {
			p.record(what, err)
			return err
		}
		if time.Now().After(deadline) {
			p.w.h.Unexpected("pusher %d: %s: still failing after %v: %v", p.id, what, maxRetryTime, err)
			return err
		}
		if err != errRetryNow {
			p.rotate()
		}
		sleepCtx(ctx, time.Duration(50+rand.IntN(150))*time.Millisecond) // not p.r: timing must not shift the seeded choices
	}
}

// record files a non-transient failure in the history.
func (p *pusher) record(what string, err error) {
	var pe *ProtocolError
	switch {
	case errors.As(err, &pe):
		p.w.h.Violation("pusher %d: %s: %v", p.id, what, err)
	case ErrorCode(err) == "MANIFEST_BLOB_UNKNOWN" && p.w.cfg.Collecting:
		// Garbage collection at zero grace took a blob that no manifest
		// referenced yet: the client uploads again.
		p.w.h.Note("manifest refused after the collector took one of its blobs: blobs pushed again")
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
	body := img.manifest()
	m := ManifestOp{Repo: img.repo, Tag: img.tag, Digest: LiteralBlob(body).Digest, MediaType: MediaTypeManifest, Body: body,
		Blobs: digests(blobs)}
	for round := 1; ; round++ {
		for i, b := range blobs {
			if round > 1 && blobPresent(ctx, p.c, BlobOp{Repo: img.repo, Blob: b}) {
				continue // as clients do: upload only what the registry lacks
			}
			if err := p.pushBlob(ctx, img.repo, b, img.styles[i]); err != nil {
				return err
			}
		}
		p.w.h.AttemptManifest(m)
		err := p.retry(ctx, "PUT manifest "+img.repo+":"+img.tag, func() error {
			return p.c.PutManifest(ctx, img.repo, img.tag, MediaTypeManifest, body)
		})
		if err == nil {
			p.w.h.AckManifest(m)
			return nil
		}
		if !p.collected(err, round) {
			return err
		}
	}
}

// collected reports whether a push that failed with err should be tried
// again from its blobs: garbage collection took one of them (round is the
// attempt that failed).
func (p *pusher) collected(err error, round int) bool {
	return p.w.cfg.Collecting && ErrorCode(err) == "MANIFEST_BLOB_UNKNOWN" && round < 5
}

func digests(blobs []Blob) []string {
	out := make([]string, len(blobs))
	for i, b := range blobs {
		out[i] = b.Digest
	}
	return out
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
			up.Rebase(p.c) // the frontend may have changed since the failure
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
// workload runs, checking every byte, through a random frontend each time.
// Every fourth round pulls a whole image as a client does: the manifest by
// tag, then each blob it references. Transfers cut short by a kill are
// ignored; a 404 for something acknowledged (and not since deleted or, when
// collecting, unreferenced), or a complete answer with wrong bytes, is a
// violation.
type reader struct {
	w       *Workload
	clients []*Client
	r       *rand.Rand
}

func (rd *reader) client() *Client { return rd.clients[rd.r.IntN(len(rd.clients))] }

func (rd *reader) run(ctx context.Context) {
	var snap Snapshot
	var blobIndex map[blobKey]BlobOp
	for i := 0; ctx.Err() == nil; i++ {
		if i%10 == 0 {
			snap = rd.w.h.Snapshot()
			blobIndex = map[blobKey]BlobOp{}
			for _, b := range snap.AckedBlobs {
				blobIndex[blobKey{b.Repo, b.Blob.Digest}] = b
			}
		}
		if len(snap.AckedBlobs) == 0 {
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		if i%4 == 3 && len(snap.AckedManifests) > 0 {
			rd.pull(ctx, snap.AckedManifests[rd.r.IntN(len(snap.AckedManifests))], blobIndex)
			sleepCtx(ctx, 20*time.Millisecond)
			continue
		}
		op := snap.AckedBlobs[rd.r.IntN(len(snap.AckedBlobs))]
		if op.Blob.Size > 4*mib && rd.r.IntN(4) != 0 {
			continue // mostly small reads: the pushers own the bandwidth
		}
		rd.readBlob(ctx, op, "concurrent read")
		if len(snap.AckedManifests) > 0 {
			m := snap.AckedManifests[rd.r.IntN(len(snap.AckedManifests))]
			start := time.Now()
			err := CheckManifest(ctx, rd.client(), m, true)
			switch {
			case err == nil || ctx.Err() != nil:
			case isViolation(err) && !rd.excused(err, m.Repo, m.Tag, "", start):
				rd.w.h.Violation("concurrent read of acknowledged manifest %s:%s: %v", m.Repo, m.Tag, err)
			case IsServerError(err):
				rd.w.h.ServerError("concurrent read of manifest %s:%s: %v", m.Repo, m.Tag, err)
			}
		}
		sleepCtx(ctx, 20*time.Millisecond)
	}
}

// readBlob reads op back and files a violation if it is wrong or lost.
func (rd *reader) readBlob(ctx context.Context, op BlobOp, what string) bool {
	start := time.Now()
	err := CheckBlob(ctx, rd.client(), op.Repo, op.Blob, true)
	switch {
	case err == nil:
		rd.w.reads.Add(1)
		return true
	case ctx.Err() != nil:
	case isViolation(err) && !rd.excused(err, op.Repo, "", op.Blob.Digest, start):
		rd.w.h.Violation("%s of acknowledged blob %s in %s (pushed in phase %d, %s): %v",
			what, op.Blob, op.Repo, op.Phase, op.Style, err)
	case IsServerError(err):
		rd.w.h.ServerError("%s of %s in %s: %v", what, op.Blob, op.Repo, err)
	}
	return false
}

// pull reads image m as a client pulls it: the manifest by tag (its bytes
// must be those pushed, their digest the one announced), then every blob.
func (rd *reader) pull(ctx context.Context, m ManifestOp, blobs map[blobKey]BlobOp) {
	c := rd.client()
	start := time.Now()
	if err := CheckManifest(ctx, c, m, true); err != nil {
		switch {
		case ctx.Err() != nil:
		case isViolation(err) && !rd.excused(err, m.Repo, m.Tag, "", start):
			rd.w.h.Violation("pull of %s:%s: %v", m.Repo, m.Tag, err)
		case IsServerError(err):
			rd.w.h.ServerError("pull of %s:%s: %v", m.Repo, m.Tag, err)
		}
		return
	}
	for _, d := range m.Blobs {
		b, ok := blobs[blobKey{m.Repo, d}]
		if !ok {
			continue
		}
		if !rd.readBlob(ctx, b, "pull of "+m.Repo+":"+m.Tag+": read") {
			return
		}
	}
	rd.w.pulls.Add(1)
}

// excused reports whether a violation seen by a concurrent read is none: a
// 404 for a manifest whose deletion was sent, or (when collecting) for a
// blob no live manifest acknowledged before the read referenced.
func (rd *reader) excused(err error, repo, tag, dgst string, start time.Time) bool {
	if !IsLost(err) {
		return false
	}
	if tag != "" {
		return rd.w.h.Deleting(repo, tag)
	}
	return (rd.w.cfg.Collecting || rd.w.cfg.DeleteEvery > 0) && !rd.w.h.BlobRequired(repo, dgst, start)
}

// deleter deletes acknowledged images (by manifest digest) now and then.
type deleter struct {
	w       *Workload
	clients []*Client
	r       *rand.Rand
}

func (d *deleter) run(ctx context.Context) {
	t := time.NewTicker(d.w.cfg.DeleteEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		snap := d.w.h.Snapshot()
		var cands []ManifestOp
		for _, m := range snap.AckedManifests {
			if time.Since(m.At) > time.Second {
				cands = append(cands, m)
			}
		}
		if len(cands) < 4 {
			continue // keep a few images around
		}
		slices.SortFunc(cands, func(a, b ManifestOp) int { return strings.Compare(a.Repo+":"+a.Tag, b.Repo+":"+b.Tag) })
		d.delete(ctx, cands[d.r.IntN(len(cands))])
	}
}

// delete deletes m by digest, retrying transient failures through other
// frontends for up to a minute. A 404 is the expected answer only after a
// failed attempt (which may have landed).
func (d *deleter) delete(ctx context.Context, m ManifestOp) {
	d.w.h.AttemptDelete(m)
	deadline := time.Now().Add(time.Minute)
	tried := false
	for i := d.r.IntN(len(d.clients)); ctx.Err() == nil; i++ {
		c := d.clients[i%len(d.clients)]
		err := c.DeleteManifest(ctx, m.Repo, m.Digest)
		switch {
		case err == nil:
			d.w.h.AckDelete(m)
			d.w.deletes.Add(1)
			return
		case ctx.Err() != nil:
			return
		case HTTPStatus(err) == http.StatusNotFound && tried:
			d.w.h.Note("delete: manifest already gone after a failed attempt")
			d.w.h.AckDelete(m)
			d.w.deletes.Add(1)
			return
		case HTTPStatus(err) == http.StatusNotFound:
			d.w.h.Violation("LOST ACKNOWLEDGED MANIFEST: deleting %s:%s (%s): %v", m.Repo, m.Tag, m.Digest, err)
			return
		case IsServerError(err):
			d.w.h.ServerError("deleting %s:%s (%s): %v", m.Repo, m.Tag, m.Digest, err)
		case !IsTransient(err):
			d.w.h.Unexpected("deleting %s:%s (%s): %v", m.Repo, m.Tag, m.Digest, err)
			return
		}
		tried = true
		if time.Now().After(deadline) {
			d.w.h.Unexpected("deleting %s:%s: still failing after a minute: %v", m.Repo, m.Tag, err)
			return
		}
		sleepCtx(ctx, time.Duration(50+d.r.IntN(150))*time.Millisecond)
	}
}

// prober pushes a tiny new blob in one request every ProbeEvery through
// the frontends in turn (at most two in flight), so that the history holds
// an acknowledgement soon after the cluster takes writes again.
type prober struct {
	w       *Workload
	clients []*Client
	seed    uint64
}

// ProbeRepo is the repository the prober pushes to.
const ProbeRepo = "chaos-probe"

func (pr *prober) run(ctx context.Context) {
	t := time.NewTicker(pr.w.cfg.ProbeEvery)
	defer t.Stop()
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	defer wg.Wait()
	sent := 0 // probes sent: they take the frontends in turn (counting ticks instead
	// could leave one frontend every skipped tick, and never probe it)
	for i := uint64(0); ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			continue // two still in flight: the cluster is slow or away
		}
		b := GeneratedBlob(pr.seed^(0x9e3779b97f4a7c15*(i+1)), 64+int64(i%64))
		c := pr.clients[sent%len(pr.clients)]
		sent++
		repo := pr.w.cfg.Prefix + "-" + ProbeRepo
		pr.w.h.AttemptBlob(repo, b, StyleProbe)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			err := c.PushWhole(pctx, repo, b)
			switch {
			case err == nil:
				pr.w.h.AckBlob(repo, b, StyleProbe)
				pr.w.probes.Add(1)
			case ctx.Err() != nil || IsTransient(err) || errors.Is(err, context.DeadlineExceeded):
			case IsServerError(err):
				pr.w.h.ServerError("probe push of %s: %v", b, err)
			default:
				var pe *ProtocolError
				if errors.As(err, &pe) {
					pr.w.h.Violation("probe push of %s: %v", b, err)
				} else {
					pr.w.h.Unexpected("probe push of %s: %v", b, err)
				}
			}
		}()
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
