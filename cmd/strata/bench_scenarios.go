package main

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
)

// benchData makes unique blobs of any size without holding or hashing
// them per operation: every blob of size n is the first n-32 bytes of one
// shared pseudo-random buffer followed by 32 unique bytes (run id and a
// sequence number). The SHA-256 state after the shared prefix is computed
// once per size, so a blob's digest costs one block. Registries store and
// hash every byte; neither of them deduplicates below whole blobs.
type benchData struct {
	run  string // 16 hex digits
	seed [32]byte
	seq  atomic.Uint64

	mu     sync.Mutex
	pool   []byte
	states map[int64][]byte // prefix length -> marshalled SHA-256 state
}

const benchTail = 32

func newBenchData(run string) *benchData {
	d := &benchData{run: run, states: map[int64][]byte{}}
	copy(d.seed[:], run)
	return d
}

// prefix returns the shared bytes [0, n) and the hash state after them.
func (d *benchData) prefix(n int64) ([]byte, []byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if int64(len(d.pool)) < n {
		// Regenerate from the same seed: the prefix, and so every cached
		// state, stays the same.
		size := max(n, 2*int64(len(d.pool)), 1<<20)
		pool := make([]byte, size)
		_, _ = rand.NewChaCha8(d.seed).Read(pool)
		d.pool = pool
	}
	st, ok := d.states[n]
	if !ok {
		h := sha256.New()
		h.Write(d.pool[:n])
		var err error
		if st, err = h.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
			return nil, nil, err
		}
		d.states[n] = st
	}
	return d.pool[:n], st, nil
}

// blob returns a new unique blob of size bytes.
func (d *benchData) blob(size int64) (*benchBlob, error) {
	if size < 0 {
		return nil, fmt.Errorf("blob size %d", size)
	}
	tail := []byte(fmt.Sprintf("%-16.16s%016x", d.run, d.seq.Add(1)))
	if size <= benchTail {
		t := tail[:size]
		return &benchBlob{parts: [][]byte{t}, size: size, digest: digest.FromBytes(t)}, nil
	}
	pre, st, err := d.prefix(size - benchTail)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(st); err != nil {
		return nil, err
	}
	h.Write(tail)
	return &benchBlob{parts: [][]byte{pre, tail}, size: size,
		digest: digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))}, nil
}

// bytesBlob wraps bytes the caller made (configs, manifests).
func bytesBlob(b []byte) *benchBlob {
	return &benchBlob{parts: [][]byte{b}, size: int64(len(b)), digest: digest.FromBytes(b)}
}

// benchOpInfo tells an operation who runs it: the worker, the worker's
// own iteration, and the global sequence number.
type benchOpInfo struct {
	worker, iter int
	seq          int64
	rng          *rand.Rand
}

// benchOp is one timed operation; it returns the payload bytes it moved.
type benchOp func(ctx context.Context, c *benchClient, o benchOpInfo) (int64, error)

// benchScenario prepares its data (untimed) and returns the timed operation.
type benchScenario struct {
	name  string
	about string
	// defaults for this scenario's parameters (flags and per-scenario
	// options override them).
	defaults func(p *benchParams)
	setup    func(ctx context.Context, e *benchEnv) (benchOp, error)
}

var benchScenarios = []benchScenario{
	{
		name:  "push-blob",
		about: "each operation uploads a new blob of --size (--upload-mode monolithic, chunked or streamed)",
		defaults: func(p *benchParams) {
			p.Concurrency, p.Size = 8, 16<<20
		},
		setup: setupPushBlob,
	},
	{
		name:     "pull-herd",
		about:    "every client pulls the same blob of --size",
		defaults: func(p *benchParams) { p.Concurrency, p.Size = 32, 16<<20 },
		setup:    setupPullHerd,
	},
	{
		name:     "pull-distinct",
		about:    "clients pull --blobs distinct blobs of --size (default one per client), each a different one at a time",
		defaults: func(p *benchParams) { p.Concurrency, p.Size = 8, 16<<20 },
		setup:    setupPullDistinct,
	},
	{
		name:     "manifest-get",
		about:    "GET or HEAD (--method) of a random one of --images image manifests, by tag or by digest (--by)",
		defaults: func(p *benchParams) { p.Concurrency, p.Images = 32, 200 },
		setup:    setupManifestGet,
	},
	{
		name:     "push-small-images",
		about:    "each operation pushes an image: a config, one tiny layer of --size (default 1KiB) and its manifest by tag",
		defaults: func(p *benchParams) { p.Concurrency, p.Size = 16, 1<<10 },
		setup:    setupPushSmallImages,
	},
	{
		name:     "tag-list",
		about:    "one page of --page-size tags after a random one of --tags tags on one image",
		defaults: func(p *benchParams) { p.Concurrency, p.Tags = 8, 1000 },
		setup:    setupTagList,
	},
	{
		name:     "push-images",
		about:    "each operation pushes a whole image: --layers new layers of --size (uploaded in parallel), a config, a manifest",
		defaults: func(p *benchParams) { p.Concurrency, p.Size = 4, 4<<20 },
		setup:    setupPushImages,
	},
	{
		name:     "pull-images",
		about:    "each operation pulls a whole image (manifest by tag, config, --layers layers in parallel) out of --images",
		defaults: func(p *benchParams) { p.Concurrency, p.Size, p.Images = 8, 4<<20, 10 },
		setup:    setupPullImages,
	},
}

func findBenchScenario(name string) (*benchScenario, bool) {
	for i := range benchScenarios {
		if benchScenarios[i].name == name {
			return &benchScenarios[i], true
		}
	}
	return nil, false
}

// benchEnv is what a scenario's setup works with.
type benchEnv struct {
	p       benchParams
	clients []*benchClient
	data    *benchData
	repo    string
	// setupProgress reports setup steps done out of total.
	setupProgress func(done, total int)
}

// client is the client of worker w (workers spread over the --url list).
func (e *benchEnv) client(w int) *benchClient { return e.clients[w%len(e.clients)] }

// parallel runs f(0..n-1) on up to conc goroutines and returns the first
// error; it stops starting tasks after one fails or ctx ends.
func (e *benchEnv) parallel(ctx context.Context, n, conc int, f func(ctx context.Context, c *benchClient, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next, done atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for w := range max(min(conc, n), 1) {
		wg.Go(func() {
			c := e.client(w)
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(ctx, c, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
				if e.setupProgress != nil {
					e.setupProgress(int(done.Add(1)), n)
				}
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

func setupPushBlob(ctx context.Context, e *benchEnv) (benchOp, error) {
	p := e.p
	if _, err := e.data.blob(p.Size); err != nil { // the shared prefix, outside the timing
		return nil, err
	}
	return func(ctx context.Context, c *benchClient, o benchOpInfo) (int64, error) {
		b, err := e.data.blob(p.Size)
		if err != nil {
			return 0, err
		}
		if err := c.pushBlob(ctx, e.repo, b, p.UploadMode, p.ChunkSize); err != nil {
			return 0, err
		}
		return b.size, nil
	}, nil
}

func setupPullHerd(ctx context.Context, e *benchEnv) (benchOp, error) {
	p := e.p
	b, err := e.data.blob(p.Size)
	if err != nil {
		return nil, err
	}
	if err := e.client(0).pushBlob(ctx, e.repo, b, uploadMonolithic, 0); err != nil {
		return nil, err
	}
	return func(ctx context.Context, c *benchClient, o benchOpInfo) (int64, error) {
		return c.pullBlob(ctx, e.repo, b.digest, b.size, p.Verify)
	}, nil
}

func setupPullDistinct(ctx context.Context, e *benchEnv) (benchOp, error) {
	p := e.p
	n := p.Blobs
	if n <= 0 {
		n = p.Concurrency
	}
	blobs := make([]*benchBlob, n)
	err := e.parallel(ctx, n, p.SetupConcurrency, func(ctx context.Context, c *benchClient, i int) error {
		b, err := e.data.blob(p.Size)
		if err != nil {
			return err
		}
		blobs[i] = b
		return c.pushBlob(ctx, e.repo, b, uploadMonolithic, 0)
	})
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, c *benchClient, o benchOpInfo) (int64, error) {
		b := blobs[(o.worker+o.iter)%n]
		return c.pullBlob(ctx, e.repo, b.digest, b.size, p.Verify)
	}, nil
}

// benchImage is an image the bench pushed: its tag, manifest digest, and
// the blobs it names.
type benchImage struct {
	tag    string
	digest digest.Digest
	config benchDescriptor
	layers []benchDescriptor
}

// pushImage uploads layers (in parallel when there are several), a config
// naming them, and a manifest tagged tag.
func (e *benchEnv) pushImage(ctx context.Context, c *benchClient, tag string, layers []*benchBlob) (benchImage, int64, error) {
	img := benchImage{tag: tag}
	var total int64
	errs := make([]error, len(layers))
	if len(layers) == 1 {
		errs[0] = c.pushBlob(ctx, e.repo, layers[0], uploadMonolithic, 0)
	} else {
		var wg sync.WaitGroup
		for i, l := range layers {
			wg.Go(func() { errs[i] = c.pushBlob(ctx, e.repo, l, uploadMonolithic, 0) })
		}
		wg.Wait()
	}
	if err := errors.Join(errs...); err != nil {
		return img, 0, err
	}
	diffIDs := make([]string, len(layers))
	for i, l := range layers {
		diffIDs[i] = l.digest.String()
		img.layers = append(img.layers, benchDescriptor{MediaType: mtLayer, Digest: l.digest, Size: l.size})
		total += l.size
	}
	cfgJSON, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Labels": map[string]string{"strata.bench": fmt.Sprintf("%s-%d", e.data.run, e.data.seq.Add(1))}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return img, 0, err
	}
	cfg := bytesBlob(cfgJSON)
	if err := c.pushBlob(ctx, e.repo, cfg, uploadMonolithic, 0); err != nil {
		return img, 0, err
	}
	total += cfg.size
	img.config = benchDescriptor{MediaType: mtConfig, Digest: cfg.digest, Size: cfg.size}
	m, err := json.Marshal(benchManifest{SchemaVersion: 2, MediaType: mtManifest, Config: img.config, Layers: img.layers})
	if err != nil {
		return img, 0, err
	}
	if err := c.putManifest(ctx, e.repo, tag, m); err != nil {
		return img, 0, err
	}
	img.digest = digest.FromBytes(m)
	return img, total + int64(len(m)), nil
}

// newLayers makes n new unique layers of size bytes.
func (e *benchEnv) newLayers(n int, size int64) ([]*benchBlob, error) {
	out := make([]*benchBlob, n)
	for i := range out {
		b, err := e.data.blob(size)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// pushImages pushes n images tagged img-00000.. with layers layers of size
// bytes each, on the setup's concurrency.
func (e *benchEnv) pushImages(ctx context.Context, n, layers int, size int64) ([]benchImage, error) {
	imgs := make([]benchImage, n)
	err := e.parallel(ctx, n, e.p.SetupConcurrency, func(ctx context.Context, c *benchClient, i int) error {
		ls, err := e.newLayers(layers, size)
		if err != nil {
			return err
		}
		imgs[i], _, err = e.pushImage(ctx, c, fmt.Sprintf("img-%05d", i), ls)
		return err
	})
	return imgs, err
}

func setupManifestGet(ctx context.Context, e *benchEnv) (benchOp, error) {
	p := e.p
	if p.By != "tag" && p.By != "digest" {
		return nil, fmt.Errorf("--by %q: tag or digest", p.By)
	}
	if p.Method != http.MethodGet && p.Method != http.MethodHead {
		return nil, fmt.Errorf("--method %q: GET or HEAD", p.Method)
	}
	imgs, err := e.pushImages(ctx, max(p.Images, 1), 1, 512)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, c *benchClient, o benchOpInfo) (int64, error) {
		img := imgs[o.rng.IntN(len(imgs))]
		ref := img.tag
		if p.By == "digest" {
			ref = img.digest.String()
		}
		var want digest.Digest
		if p.Verify {
			want = img.digest
		}
		b, err := c.getManifest(ctx, p.Method, e.repo, ref, want)
		return int64(len(b)), err
	}, nil
}

func setupPushSmallImages(ctx context.Context, e *benchEnv) (benchOp, error) {
	p := e.p
	return func(ctx context.Context, c *benchClient, o benchOpInfo) (int64, error) {
		ls, err := e.newLayers(1, p.Size)
		if err != nil {
			return 0, err
		}
		_, n, err := e.pushImage(ctx, c, fmt.Sprintf("small-%08d", o.seq), ls)
		return n, err
	}, nil
}

func setupTagList(ctx context.Context, e *benchEnv) (benchOp, error) {
	p := e.p
	ls, err := e.newLayers(1, 512)
	if err != nil {
		return nil, err
	}
	c0 := e.client(0)
	img, _, err := e.pushImage(ctx, c0, "base", ls)
	if err != nil {
		return nil, err
	}
	body, err := c0.getManifest(ctx, http.MethodGet, e.repo, img.digest.String(), img.digest)
	if err != nil {
		return nil, err
	}
	n := max(p.Tags, 1)
	tags := make([]string, n)
	for i := range tags {
		tags[i] = fmt.Sprintf("tag-%06d", i)
	}
	err = e.parallel(ctx, n, p.SetupConcurrency, func(ctx context.Context, c *benchClient, i int) error {
		return c.putManifest(ctx, e.repo, tags[i], body)
	})
	if err != nil {
		return nil, err
	}
	// Every tag, sorted as the registry lists them ("base" among them).
	all := append([]string{"base"}, tags...)
	sort.Strings(all)
	page := max(p.PageSize, 1)
	return func(ctx context.Context, c *benchClient, o benchOpInfo) (int64, error) {
		// A random starting point that leaves a full page after it.
		start := o.rng.IntN(max(len(all)-page, 0) + 1)
		last := ""
		if start > 0 {
			last = all[start-1]
		}
		got, err := c.listTags(ctx, e.repo, page, last)
		if err != nil {
			return 0, err
		}
		if p.Verify {
			want := all[start:min(start+page, len(all))]
			if len(got) != len(want) || len(got) > 0 && (got[0] != want[0] || got[len(got)-1] != want[len(want)-1]) {
				return 0, fmt.Errorf("tag page after %q: %d tags %v..., want %d from %q", last, len(got), head(got), len(want), want[0])
			}
		}
		return int64(len(got)), nil
	}, nil
}

func head(s []string) []string { return s[:min(len(s), 3)] }

func setupPushImages(ctx context.Context, e *benchEnv) (benchOp, error) {
	p := e.p
	if _, err := e.data.blob(p.Size); err != nil {
		return nil, err
	}
	return func(ctx context.Context, c *benchClient, o benchOpInfo) (int64, error) {
		ls, err := e.newLayers(max(p.Layers, 1), p.Size)
		if err != nil {
			return 0, err
		}
		_, n, err := e.pushImage(ctx, c, fmt.Sprintf("img-%08d", o.seq), ls)
		return n, err
	}, nil
}

func setupPullImages(ctx context.Context, e *benchEnv) (benchOp, error) {
	p := e.p
	imgs, err := e.pushImages(ctx, max(p.Images, 1), max(p.Layers, 1), p.Size)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, c *benchClient, o benchOpInfo) (int64, error) {
		img := imgs[int(o.seq)%len(imgs)]
		var want digest.Digest
		if p.Verify {
			want = img.digest
		}
		body, err := c.getManifest(ctx, http.MethodGet, e.repo, img.tag, want)
		if err != nil {
			return 0, err
		}
		var m benchManifest
		if err := json.Unmarshal(body, &m); err != nil {
			return 0, fmt.Errorf("manifest %s: %w", img.tag, err)
		}
		blobs := append([]benchDescriptor{m.Config}, m.Layers...)
		var total atomic.Int64
		total.Add(int64(len(body)))
		errs := make([]error, len(blobs))
		var wg sync.WaitGroup
		for i, d := range blobs {
			wg.Go(func() {
				n, err := c.pullBlob(ctx, e.repo, d.Digest, d.Size, p.Verify)
				total.Add(n)
				errs[i] = err
			})
		}
		wg.Wait()
		return total.Load(), errors.Join(errs...)
	}, nil
}

// benchSeed derives a worker's random source from the run id.
func benchSeed(run string, worker int) *rand.Rand {
	var s [8]byte
	copy(s[:], run)
	return rand.New(rand.NewPCG(binary.LittleEndian.Uint64(s[:]), uint64(worker)))
}
