package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
)

// Defaults of ScrubConfig.
const (
	// DefaultScrubRate is the default read rate of a Scrubber: low enough to
	// leave a disk to the requests it serves, high enough to go over a few
	// terabytes in a day or two.
	DefaultScrubRate = 32 << 20
	// DefaultScrubPause is the default rest between two passes.
	DefaultScrubPause = time.Hour

	// scrubChunk is how many bytes a verification reads (and the rate
	// limiter grants) at a time.
	scrubChunk = 256 << 10
	// scrubRetry is the least rest after a pass that failed, so that a
	// persistent failure does not spin.
	scrubRetry = time.Second
)

var _ ShardVerifier = (*LocalStore)(nil)

// Verify implements ShardVerifier: it reads shard id's file in chunks and
// checks its header and payload against the BLAKE3 sum in the header,
// without holding the payload in memory.
func (s *LocalStore) Verify(ctx context.Context, id ShardID) (ShardInfo, error) {
	return s.verify(ctx, id, make([]byte, scrubChunk), nil, nil)
}

// verify is Verify reading through buf. pace, if set, is called before each
// chunk is read with its size, and may hold the read back; progress, if set,
// after each chunk is hashed.
func (s *LocalStore) verify(ctx context.Context, id ShardID, buf []byte, pace func(ctx context.Context, n int) error, progress func(n int)) (ShardInfo, error) {
	info := ShardInfo{ID: id}
	if err := s.check(ctx, &id); err != nil {
		return info, err
	}
	f, err := os.Open(s.ShardPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return info, fmt.Errorf("%w: %s on %s", ErrShardNotFound, id, s.nodeID)
	}
	if err != nil {
		return info, fmt.Errorf("blobstore: verify %s: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return info, fmt.Errorf("blobstore: verify %s: %w", id, err)
	}
	info.Size = max(fi.Size()-shardHeaderSize, 0)

	var hb [shardHeaderSize]byte
	if _, err := io.ReadFull(f, hb[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return info, fmt.Errorf("%w: verify %s on %s: file of %d bytes has no header", ErrShardCorrupt, id, s.nodeID, fi.Size())
		}
		return info, fmt.Errorf("blobstore: verify %s: %w", id, err)
	}
	h, err := decodeShardHeader(hb[:])
	if err == nil {
		err = checkHeader(h, id, fi.Size())
	}
	if err != nil {
		return info, fmt.Errorf("verify %s on %s: %w", id, s.nodeID, err)
	}
	info.Sum = h.Sum

	hasher := blake3.New()
	for left := int64(h.Length); left > 0; {
		n := int(min(left, int64(len(buf))))
		if pace != nil {
			if err := pace(ctx, n); err != nil {
				return info, err
			}
		} else if err := ctx.Err(); err != nil {
			return info, err
		}
		if _, err := io.ReadFull(f, buf[:n]); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return info, fmt.Errorf("%w: verify %s on %s: payload shorter than its header says", ErrShardCorrupt, id, s.nodeID)
			}
			return info, fmt.Errorf("blobstore: verify %s: %w", id, err)
		}
		hasher.Write(buf[:n]) // never fails
		left -= int64(n)
		if progress != nil {
			progress(n)
		}
	}
	var sum [32]byte
	hasher.Sum(sum[:0])
	if sum != h.Sum {
		return info, fmt.Errorf("%w: %s on %s: payload checksum mismatch", ErrShardCorrupt, id, s.nodeID)
	}
	return info, nil
}

// ScrubConfig configures a Scrubber. Zero fields take the defaults.
type ScrubConfig struct {
	// BytesPerSecond bounds the rate at which shard payloads are read
	// (a token bucket). Default DefaultScrubRate; negative: no bound.
	BytesPerSecond int64
	// Pause is the rest between the end of a pass and the start of the next.
	// Default DefaultScrubPause; negative: none.
	Pause time.Duration
	// PageSize is how many shards each List asks for. Default DefaultListLimit.
	PageSize int
	// OnCorrupt, if set, is called for every shard that fails its check or
	// cannot be read: err wraps ErrShardCorrupt for a shard whose header or
	// payload does not match, and is the read error otherwise. It is called
	// from the scrubbing goroutine, one shard at a time; the scrubber waits
	// for it. It is the hook that feeds the repair queue.
	OnCorrupt func(id ShardID, err error)
}

// ScrubStats are a Scrubber's counters since it was made.
type ScrubStats struct {
	Passes        int64 // passes completed
	ShardsChecked int64 // shards verified, healthy or not
	BytesChecked  int64 // payload bytes read and hashed
	CorruptFound  int64 // shards reported to OnCorrupt

	LastPassEnd      time.Time     // when the last completed pass ended; zero before the first
	LastPassDuration time.Duration // how long it took
	LastError        error         // why the last pass that failed did (other than by its context ending); nil if none did
}

// Scrubber walks the shards of a LocalStore, page by page in List order,
// and re-verifies each one's BLAKE3 against its header, at a bounded read
// rate, so that bit rot is found while the other shards of the segment can
// still rebuild it. Run does so forever, resting between passes. A shard
// deleted while a pass runs is skipped; one written during a pass is checked
// if the pass has not gone past its name yet.
type Scrubber struct {
	store  *LocalStore
	cfg    ScrubConfig
	bucket *tokenBucket // nil: no bound

	shards, bytes, corrupt, passes atomic.Int64

	mu       sync.Mutex
	lastEnd  time.Time
	lastTook time.Duration
	lastErr  error
}

// NewScrubber returns a scrubber of store. Start it with Run.
func NewScrubber(store *LocalStore, cfg ScrubConfig) *Scrubber {
	if cfg.BytesPerSecond == 0 {
		cfg.BytesPerSecond = DefaultScrubRate
	}
	if cfg.Pause == 0 {
		cfg.Pause = DefaultScrubPause
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = DefaultListLimit
	}
	s := &Scrubber{store: store, cfg: cfg}
	if cfg.BytesPerSecond > 0 {
		rate := float64(cfg.BytesPerSecond)
		s.bucket = newTokenBucket(rate, max(scrubChunk, rate/10))
	}
	return s
}

// Run scrubs until ctx is done, and then returns ctx.Err(): a pass, a rest
// of Pause, a pass, and so on. A pass that fails (say the disk cannot be
// listed) is recorded in Stats and tried again after the rest. Run returns
// early with an error wrapping ErrClosed once the store is closed.
func (s *Scrubber) Run(ctx context.Context) error {
	for {
		err := s.Pass(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrClosed) {
			return err
		}
		rest := s.cfg.Pause
		if err != nil {
			rest = max(rest, scrubRetry)
		}
		if rest > 0 {
			t := time.NewTimer(rest)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
	}
}

// Pass makes one pass over every shard of the store, reporting the bad ones
// to OnCorrupt, and returns when it is done, or when ctx is done, or when it
// cannot list the shards.
func (s *Scrubber) Pass(ctx context.Context) error {
	err := s.pass(ctx)
	if err != nil && ctx.Err() == nil {
		s.mu.Lock()
		s.lastErr = err
		s.mu.Unlock()
	}
	return err
}

func (s *Scrubber) pass(ctx context.Context) error {
	start := time.Now()
	buf := make([]byte, scrubChunk)
	var pace func(context.Context, int) error
	if s.bucket != nil {
		pace = s.bucket.wait
	}
	progress := func(n int) { s.bytes.Add(int64(n)) }
	for after := ""; ; {
		infos, err := s.store.List(ctx, after, s.cfg.PageSize)
		if err != nil {
			return fmt.Errorf("blobstore: scrub %s: %w", s.store.NodeID(), err)
		}
		if len(infos) == 0 {
			break
		}
		for _, info := range infos {
			_, err := s.store.verify(ctx, info.ID, buf, pace, progress)
			switch {
			case err == nil:
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, ErrShardNotFound):
				continue // deleted since it was listed
			case errors.Is(err, ErrClosed):
				return fmt.Errorf("blobstore: scrub %s: %w", s.store.NodeID(), err)
			default:
				s.corrupt.Add(1)
				if s.cfg.OnCorrupt != nil {
					s.cfg.OnCorrupt(info.ID, err)
				}
			}
			s.shards.Add(1)
		}
		after = infos[len(infos)-1].ID.String()
	}
	end := time.Now()
	s.mu.Lock()
	s.lastEnd, s.lastTook = end, end.Sub(start)
	s.mu.Unlock()
	s.passes.Add(1)
	return nil
}

// Stats returns the scrubber's counters. It may be called at any time,
// from any goroutine.
func (s *Scrubber) Stats() ScrubStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ScrubStats{
		Passes:           s.passes.Load(),
		ShardsChecked:    s.shards.Load(),
		BytesChecked:     s.bytes.Load(),
		CorruptFound:     s.corrupt.Load(),
		LastPassEnd:      s.lastEnd,
		LastPassDuration: s.lastTook,
		LastError:        s.lastErr,
	}
}

// tokenBucket is a rate limiter: tokens flow in at rate per second up to
// burst, and wait takes n of them. A wait for more tokens than there are
// takes them anyway, leaving the bucket in debt, and sleeps until the debt is
// repaid; so a request may exceed burst and the long-run rate still holds.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate, burst float64) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, last: time.Now()}
}

// wait takes n tokens, sleeping as long as it takes to have them or until
// ctx is done (the tokens stay taken).
func (b *tokenBucket) wait(ctx context.Context, n int) error {
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens -= float64(n)
	var d time.Duration
	if b.tokens < 0 {
		d = time.Duration(-b.tokens / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
