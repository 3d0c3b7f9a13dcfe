package blobstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/zeebo/blake3"

	"github.com/strata-registry/strata/erasure"
	"github.com/strata-registry/strata/metastore/metastorepb"
)

var (
	// ErrWriteQuorum is returned by Write when a segment could not be made
	// durable on enough nodes.
	ErrWriteQuorum = errors.New("blobstore: write quorum not reached")
	// ErrSegmentUnreadable is returned by ReadRange when fewer than k good
	// shards of a segment could be fetched.
	ErrSegmentUnreadable = errors.New("blobstore: segment unreadable")
	// ErrInvalidSegment is returned for segment metadata that cannot describe
	// a segment (bad geometry, sizes or format).
	ErrInvalidSegment = errors.New("blobstore: invalid segment")
	// ErrInvalidRange is returned by ReadRange for a range outside the blob.
	ErrInvalidRange = errors.New("blobstore: invalid range")
	// ErrNodeUnavailable is returned for a shard on a node that is not among
	// the current nodes.
	ErrNodeUnavailable = errors.New("blobstore: node unavailable")
)

// Defaults of Config.
const (
	DefaultSegmentSize        = 8 << 20
	DefaultSmallBlobThreshold = 256 << 10
	DefaultWriteConcurrency   = 2
	DefaultHedgeAfter         = time.Second
	DefaultStragglerTimeout   = 10 * time.Second

	// MaxSegmentSize bounds Config.SegmentSize.
	MaxSegmentSize = 1 << 30
	// MaxInline bounds Config.InlineMax: an inline segment travels in a
	// Raft entry and lives in every meta node's database.
	MaxInline = 64 << 10
)

// Config configures a Store. Zero fields take the defaults.
type Config struct {
	// SegmentSize is the size of the segments Write cuts a stream into;
	// the last segment of a Write may be shorter. Default 8 MiB.
	SegmentSize int
	// K and M are the erasure geometry of segments of at least
	// SmallBlobThreshold bytes: K data and M parity shards. Default 1 and 0
	// (one copy: the single-node development setup).
	K, M int
	// SmallBlobThreshold: segments shorter than this are stored as 1+M
	// replicas (k = 1) instead, which costs little for small segments and
	// spares them the fan-out. Default 256 KiB; negative turns it off.
	SmallBlobThreshold int
	// InlineMax: a blob shorter than this, written whole by one Write
	// (offset 0), is not erasure coded: its one segment is inline, its
	// sealed bytes kept in the layout itself (Segment.Inline, with their
	// BLAKE3), so that the metadata's replication makes it durable and no
	// storage node is involved. A small blob then costs bytes in one Raft
	// entry instead of k+m shard files and their fsyncs. 0 (the default):
	// never; at most MaxInline.
	InlineMax int
	// WriteConcurrency is how many segments Write puts at once while it
	// reads the next. Memory is bounded by (WriteConcurrency+1) segment
	// buffers. Default 2.
	WriteConcurrency int
	// HedgeAfter: when the first shards asked for a segment have not all
	// arrived after this long, ReadRange asks as many more nodes (parity
	// shards) and uses whichever k arrive first. Default 1s; negative: never.
	HedgeAfter time.Duration
	// StragglerTimeout: once a segment's write quorum is durable, the
	// remaining Puts get this long before they are cancelled and their shards
	// left to repair. Default 10s; negative: wait for every Put.
	StragglerTimeout time.Duration
	// OnShardError, if set, is called (synchronously, so it must be quick)
	// for every shard ReadRange could not use: missing, unreachable or
	// corrupt. It is the hook that feeds the repair queue.
	OnShardError func(segmentID string, ref *metastorepb.ShardRef, err error)
	// Sealer seals and opens segments when a Write or ReadRange names no
	// sealer of its own (WriteOptions.Sealer, ReadOptions.Sealer). Default
	// Plain: segments are stored as they are.
	Sealer Sealer
	// SegmentCache, if set, keeps decoded segments for ReadRange and makes
	// concurrent reads of one segment share one fetch. Nil: every read
	// fetches its shards.
	SegmentCache *SegmentCache
	// ReadBudget bounds the memory ReadRange holds for segment data, over
	// every read of the Store and of every other Store given the same
	// budget (those WithGeometry makes share it). Nil: a budget of
	// DefaultReadMemory of the Store's own.
	ReadBudget *ReadBudget
	// OnNoSpace, if set, is called (synchronously) with the id of every
	// node that refused a shard for lack of space (ErrNoSpace), so that the
	// node source can count it full until it reports room again.
	OnNoSpace func(nodeID string)
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.SegmentSize == 0 {
		c.SegmentSize = DefaultSegmentSize
	}
	if c.K == 0 {
		c.K = 1
	}
	if c.SmallBlobThreshold == 0 {
		c.SmallBlobThreshold = DefaultSmallBlobThreshold
	}
	if c.WriteConcurrency == 0 {
		c.WriteConcurrency = DefaultWriteConcurrency
	}
	if c.HedgeAfter == 0 {
		c.HedgeAfter = DefaultHedgeAfter
	}
	if c.StragglerTimeout == 0 {
		c.StragglerTimeout = DefaultStragglerTimeout
	}
	if c.Sealer == nil {
		c.Sealer = Plain
	}
	return c
}

// Validate reports whether c (with defaults applied) is usable.
func (c Config) Validate() error {
	switch {
	case c.SegmentSize < 1 || c.SegmentSize > MaxSegmentSize:
		return fmt.Errorf("blobstore: segment size %d out of range 1..%d", c.SegmentSize, MaxSegmentSize)
	case c.K < 1 || c.M < 0 || c.K+c.M > erasure.MaxShards:
		return fmt.Errorf("blobstore: erasure geometry %d+%d out of range", c.K, c.M)
	case c.InlineMax < 0 || c.InlineMax > MaxInline:
		return fmt.Errorf("blobstore: inline maximum %d out of range 0..%d", c.InlineMax, MaxInline)
	case c.WriteConcurrency < 1:
		return fmt.Errorf("blobstore: write concurrency %d < 1", c.WriteConcurrency)
	case c.Sealer != nil && (c.Sealer.Overhead() < 0 || c.Sealer.Overhead() > MaxSealOverhead):
		return fmt.Errorf("blobstore: sealer overhead %d out of range 0..%d", c.Sealer.Overhead(), MaxSealOverhead)
	}
	return nil
}

// Node is a storage node as the pipelines see it.
type Node struct {
	Info   NodeInfo
	Shards ShardStore
}

// WriteQuorum is how many of the k+m shards of a segment must be durable for
// the segment to count as written: k, or k+1 when k == m (so that two
// disjoint halves of the shards can never both hold a quorum), and all k
// shards when there is no parity.
func WriteQuorum(k, m int) int {
	if m > 0 && k == m {
		return k + 1
	}
	return k
}

// Store is the cluster-wide blob store: the write and read pipelines over
// the storage nodes. It is safe for concurrent use.
type Store struct {
	cfg   Config
	nodes func() []Node
	large *erasure.Codec // K+M
	small *erasure.Codec // 1+M, for segments under SmallBlobThreshold

	codecs sync.Map // [2]int{k, m} -> *erasure.Codec, for reading any geometry
	// Write buffers by size class: class i holds segments of up to
	// minBufClass<<i bytes, the last class whole segments (bufClasses).
	bufClasses []int
	bufs       []sync.Pool // *[]byte, one pool per class
}

// minBufClass is the smallest class of write buffers.
const minBufClass = 64 << 10

// New returns a Store. nodes is called for every segment written and every
// read or delete, and returns the storage nodes to use now (the healthy
// ones), so membership may change under a running Store.
func New(cfg Config, nodes func() []Node) (*Store, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nodes == nil {
		return nil, errors.New("blobstore: nil node source")
	}
	if cfg.ReadBudget == nil {
		cfg.ReadBudget = NewReadBudget(DefaultReadMemory, nil)
	}
	s := &Store{cfg: cfg, nodes: nodes}
	var err error
	if s.large, err = s.codec(cfg.K, cfg.M); err != nil {
		return nil, err
	}
	if s.small, err = s.codec(1, cfg.M); err != nil {
		return nil, err
	}
	for c := minBufClass; ; c *= 2 {
		s.bufClasses = append(s.bufClasses, min(c, cfg.SegmentSize))
		if c >= cfg.SegmentSize {
			break
		}
	}
	s.bufs = make([]sync.Pool, len(s.bufClasses))
	for i, n := range s.bufClasses {
		size := s.bufSize(n)
		s.bufs[i].New = func() any {
			b := make([]byte, size)
			return &b
		}
	}
	return s, nil
}

// bufSize is the capacity of a write buffer for segments of up to n bytes:
// the segment, its seal overhead (room for any sealer's), its zero padding
// and its parity, so that sealing and encoding allocate nothing.
func (s *Store) bufSize(n int) int {
	ov := MaxSealOverhead
	size := max(n+ov, s.large.EncodedSize(n+ov))
	if s.cfg.SmallBlobThreshold > 0 {
		size = max(size, s.small.EncodedSize(min(n, s.cfg.SmallBlobThreshold-1)+ov))
	}
	return size
}

// getBuf returns a pooled write buffer for a segment of up to n bytes (at
// most SegmentSize), and the class to give it back to (putBuf).
func (s *Store) getBuf(n int) (*[]byte, int) {
	i, _ := slices.BinarySearch(s.bufClasses, n)
	return s.bufs[i].Get().(*[]byte), i
}

func (s *Store) putBuf(bp *[]byte, class int) { s.bufs[class].Put(bp) }

// Config returns the configuration in use, defaults applied.
func (s *Store) Config() Config { return s.cfg }

// WithGeometry returns a Store over the same nodes, segment cache and read
// budget that writes segments at k+m (a repository's durability class).
// Reads need no such Store: every layout records its own geometry.
func (s *Store) WithGeometry(k, m int) (*Store, error) {
	cfg := s.cfg
	cfg.K, cfg.M = k, m
	return New(cfg, s.nodes)
}

// codec returns the (cached) codec for a geometry.
func (s *Store) codec(k, m int) (*erasure.Codec, error) {
	key := [2]int{k, m}
	if c, ok := s.codecs.Load(key); ok {
		return c.(*erasure.Codec), nil
	}
	c, err := erasure.New(k, m)
	if err != nil {
		return nil, err
	}
	actual, _ := s.codecs.LoadOrStore(key, c)
	return actual.(*erasure.Codec), nil
}

// newSegmentID returns a random segment id: 32 hex digits.
func newSegmentID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return hex.EncodeToString(b[:])
}

// Write reads r to EOF and stores it as segments of Config.SegmentSize bytes
// (the last may be shorter; zero bytes make no segment). Every byte read is
// written to h, if not nil, in order, as it is read: h is the running digest
// of an upload. Each segment is sealed, erasure coded, its shards checksummed
// with BLAKE3 and put in parallel on distinct nodes chosen by Place, with up
// to WriteConcurrency segments in flight while the next is read.
//
// A segment is written when WriteQuorum(k, m) of its shards are durable; its
// ShardRefs name only the shards that were, and any missing ones are for
// repair to add. A Put that fails is retried on the next unused node in
// placement order (a spare), while there is one. Write returns the segments
// in order and the number of bytes read from r. When a segment misses its
// quorum the error wraps ErrWriteQuorum; on any error Write deletes what it
// wrote (best effort) and nothing it returns is usable.
//
// Memory: at most WriteConcurrency+1 segment buffers (each a segment plus its
// parity) are in use, recycled through a pool.
func (s *Store) Write(ctx context.Context, r io.Reader, h hash.Hash) ([]*metastorepb.Segment, int64, error) {
	return s.WriteWith(ctx, r, h, WriteOptions{})
}

// WriteOptions are the per-call settings of WriteWith.
type WriteOptions struct {
	// Sealer seals every segment written; nil means Config.Sealer. For an
	// encrypted blob: NewAESGCMSealer with the blob's (upload's) data key.
	Sealer Sealer
	// Size, when positive, is how many bytes r holds (a request's
	// Content-Length): segment buffers are then sized to the data rather
	// than to whole segments, and r must end there.
	Size int64
	// Offset is the position in the blob of the first byte read from r: the
	// upload's offset before this request (0 for a whole blob). Sealers
	// that bind a segment's position (AESGCMSealer) seal each segment at
	// Offset plus the bytes before it, and ReadRange must later find it
	// there, so the segments of a blob must be written with the right
	// offsets and listed in order.
	Offset int64
}

// WriteWith is Write with per-call options: the sealer (the blob's data
// key) and the offset in the blob at which r starts.
func (s *Store) WriteWith(ctx context.Context, r io.Reader, h hash.Hash, opts WriteOptions) ([]*metastorepb.Segment, int64, error) {
	seal := opts.Sealer
	if seal == nil {
		seal = s.cfg.Sealer
	}
	if ov := seal.Overhead(); ov < 0 || ov > MaxSealOverhead {
		return nil, 0, fmt.Errorf("blobstore: sealer overhead %d out of range 0..%d", ov, MaxSealOverhead)
	}
	if opts.Offset < 0 {
		return nil, 0, fmt.Errorf("blobstore: negative write offset %d", opts.Offset)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var (
		mu    sync.Mutex
		segs  []*metastorepb.Segment
		first error
		wg    sync.WaitGroup
		total int64
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
			cancel(err)
		}
		mu.Unlock()
	}
	slots := make(chan struct{}, s.cfg.WriteConcurrency)

	for i := 0; ctx.Err() == nil; i++ {
		want := s.cfg.SegmentSize
		if opts.Size > 0 {
			want = int(max(min(int64(want), opts.Size-total), 1))
		}
		bp, class := s.getBuf(want)
		buf := *bp
		n, rerr := io.ReadFull(r, buf[:want])
		if opts.Size > 0 && rerr == nil && total+int64(n) == opts.Size {
			// Every declared byte is in: r must be at its end.
			var probe [1]byte
			if m, _ := io.ReadFull(r, probe[:]); m > 0 {
				s.putBuf(bp, class)
				fail(fmt.Errorf("blobstore: read: more than the %d bytes declared", opts.Size))
				break
			}
			rerr = io.EOF
		}
		if h != nil {
			h.Write(buf[:n]) // a hash.Hash never returns an error
		}
		if i == 0 && opts.Offset == 0 && n > 0 && n < s.cfg.InlineMax && (rerr == io.EOF || rerr == io.ErrUnexpectedEOF) {
			// The whole blob, and small: inline.
			seg, err := inlineSegment(buf[:n:cap(buf)], seal)
			s.putBuf(bp, class)
			if err != nil {
				return nil, 0, err
			}
			return []*metastorepb.Segment{seg}, int64(n), nil
		}
		if n > 0 {
			at := uint64(opts.Offset + total) // this segment's offset in the blob
			total += int64(n)
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				s.putBuf(bp, class)
				continue // the loop ends: ctx is done
			}
			mu.Lock()
			segs = append(segs, nil)
			mu.Unlock()
			wg.Add(1)
			go func(i, n int) {
				defer wg.Done()
				seg, err := s.writeSegment(ctx, buf, n, seal, at)
				s.putBuf(bp, class) // writeSegment has waited for every Put
				<-slots
				if err != nil {
					fail(fmt.Errorf("segment %d: %w", i, err))
					return
				}
				mu.Lock()
				segs[i] = seg
				mu.Unlock()
			}(i, n)
		} else {
			s.putBuf(bp, class)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			fail(fmt.Errorf("blobstore: read: %w", rerr))
		}
	}
	wg.Wait()

	if first == nil && ctx.Err() != nil {
		first = context.Cause(ctx) // the caller's ctx ended
	}
	if first != nil {
		var written []*metastorepb.Segment
		for _, seg := range segs {
			if seg != nil {
				written = append(written, seg)
			}
		}
		s.cleanup(ctx, written)
		return nil, total, first
	}
	return segs, total, nil
}

// cleanup deletes, best effort, segments whose write did not succeed.
func (s *Store) cleanup(ctx context.Context, segs []*metastorepb.Segment) {
	if len(segs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	s.Delete(ctx, segs) //nolint:errcheck // best effort: the orphan sweeper finds what is left
}

type putResult struct {
	index int
	node  string
	sum   [32]byte
	err   error
}

// inlineSegment seals plain (a whole blob, at offset 0) into an inline
// segment. plain must have seal's overhead in spare capacity.
func inlineSegment(plain []byte, seal Sealer) (*metastorepb.Segment, error) {
	seg := &metastorepb.Segment{Id: newSegmentID(), Length: uint64(len(plain))}
	sealed, err := seal.Seal(seg, 0, plain)
	if err != nil {
		return nil, err
	}
	sum := blake3.Sum256(sealed)
	seg.Inline, seg.InlineBlake3 = bytes.Clone(sealed), sum[:]
	return seg, nil
}

// openInline checks and opens an inline segment (at offset at in its blob).
func openInline(seg *metastorepb.Segment, seal Sealer, at uint64) ([][]byte, error) {
	if sum := blake3.Sum256(seg.GetInline()); !bytes.Equal(sum[:], seg.GetInlineBlake3()) {
		return nil, fmt.Errorf("%w: inline segment %s does not match its checksum", ErrSegmentUnreadable, seg.GetId())
	}
	// Opening may work in place: never on the layout's own bytes.
	return seal.Open(seg, at, [][]byte{bytes.Clone(seg.GetInline())})
}

// writeSegment seals (with seal, at offset at in the blob), encodes and puts
// one segment whose n bytes are at the start of buf (of capacity
// s.bufSize(n) or more).
// It returns only after every Put it started has returned, so buf may then
// be reused.
func (s *Store) writeSegment(ctx context.Context, buf []byte, n int, seal Sealer, at uint64) (*metastorepb.Segment, error) {
	codec := s.large
	if n < s.cfg.SmallBlobThreshold {
		codec = s.small
	}
	k, m := codec.K(), codec.M()
	seg := &metastorepb.Segment{Id: newSegmentID(), Length: uint64(n), K: uint32(k), M: uint32(m)}

	sealed, err := seal.Seal(seg, at, buf[:n:cap(buf)])
	if err != nil {
		return nil, err
	}
	shards, err := codec.Encode(sealed)
	if err != nil {
		return nil, err
	}
	seg.ShardSize = uint64(len(shards[0]))

	nodes := s.nodes()
	byID := make(map[string]ShardStore, len(nodes))
	infos := make([]NodeInfo, 0, len(nodes))
	for _, nd := range nodes {
		if nd.Info.ReadOnly {
			continue
		}
		byID[nd.Info.ID] = nd.Shards
		infos = append(infos, nd.Info)
	}
	// Rank every node: the first k+m take the shards, the rest are spares
	// for failed Puts. Nodes without room for a shard come last.
	ranked, _ := PlaceFor(seg.Id, infos, len(infos), seg.ShardSize+shardHeaderSize)
	if len(ranked) > 0 && (ranked[0].Full || (ranked[0].Free > 0 && ranked[0].Free < seg.ShardSize+shardHeaderSize)) {
		// Every node says it is full: try them all the same (one of them
		// may have room again), rather than fail without trying.
		for i := range ranked {
			ranked[i].Full, ranked[i].Free = false, 0
		}
	}
	quorum := WriteQuorum(k, m)
	if len(ranked) < quorum {
		return nil, fmt.Errorf("%w: %s needs %d shards, %d nodes: %w", ErrWriteQuorum, seg.Id, quorum, len(ranked), ErrNotEnoughNodes)
	}

	putCtx, cancelPuts := context.WithCancel(ctx)
	defer cancelPuts()
	var spareMu sync.Mutex
	nextSpare := k + m
	nextNode := func() (NodeInfo, bool) {
		spareMu.Lock()
		defer spareMu.Unlock()
		if nextSpare >= len(ranked) {
			return NodeInfo{}, false
		}
		nextSpare++
		return ranked[nextSpare-1], true
	}

	need := seg.ShardSize + shardHeaderSize
	results := make(chan putResult, len(shards))
	started := 0
	for i, shard := range shards {
		if i >= len(ranked) {
			break // fewer nodes than shards: the rest are for repair
		}
		if nd := ranked[i]; nd.Full || (nd.Free > 0 && nd.Free < need) {
			// No node with room is left for this shard (those without
			// come last): rather than send it to be refused, leave it
			// for repair, which puts it on a node that has room.
			continue
		}
		started++
		go func(i int, shard []byte, node NodeInfo) {
			res := putResult{index: i, sum: blake3.Sum256(shard)}
			id := ShardID{Segment: seg.Id, Index: uint32(i)}
			for {
				res.err = byID[node.ID].Put(putCtx, id, shard, res.sum)
				if res.err == nil {
					res.node = node.ID
					break
				}
				if errors.Is(res.err, ErrNoSpace) && s.cfg.OnNoSpace != nil {
					s.cfg.OnNoSpace(node.ID)
				}
				res.err = fmt.Errorf("shard %d on %s: %w", i, node.ID, res.err)
				if putCtx.Err() != nil {
					break
				}
				var ok bool
				if node, ok = nextNode(); !ok {
					break
				}
			}
			results <- res
		}(i, shard, ranked[i])
	}

	var (
		refs      []*metastorepb.ShardRef
		errs      []error
		straggler <-chan time.Time
	)
	for done := 0; done < started; {
		select {
		case res := <-results:
			done++
			if res.err != nil {
				errs = append(errs, res.err)
				break
			}
			refs = append(refs, &metastorepb.ShardRef{Index: uint32(res.index), Node: res.node, Blake3: res.sum[:]})
			if len(refs) == quorum && done < started && s.cfg.StragglerTimeout > 0 {
				t := time.NewTimer(s.cfg.StragglerTimeout)
				defer t.Stop()
				straggler = t.C
			}
		case <-straggler:
			cancelPuts() // the cancelled Puts still report before we return
			straggler = nil
		}
	}
	slices.SortFunc(refs, func(a, b *metastorepb.ShardRef) int { return int(a.Index) - int(b.Index) })
	seg.Shards = refs

	if len(refs) < quorum {
		err := fmt.Errorf("%w: %s: %d of %d shards durable, need %d: %w",
			ErrWriteQuorum, seg.Id, len(refs), k+m, quorum, errors.Join(errs...))
		if len(refs) > 0 {
			s.cleanup(ctx, []*metastorepb.Segment{seg})
		}
		return nil, err
	}
	return seg, nil
}

// nodeMap returns the current nodes by id.
func (s *Store) nodeMap() map[string]ShardStore {
	nodes := s.nodes()
	m := make(map[string]ShardStore, len(nodes))
	for _, nd := range nodes {
		m[nd.Info.ID] = nd.Shards
	}
	return m
}

// ReadRange writes bytes [off, off+length) of the blob made of segs to w. It
// reads only the segments the range overlaps, fetching a segment's next while
// writing the current one (so at most two segments are in memory). Each
// segment fetch first reserves its memory in the Store's ReadBudget, waiting
// for it while ctx lasts, and gives it back once the segment is written out
// (see ReadBudget; reads served from the SegmentCache reserve nothing). For each
// segment it fetches the k data shards in parallel and checks each against
// its ShardRef's BLAKE3; for a shard that is missing, unreachable, corrupt or
// slow (HedgeAfter) it fetches parity shards instead and reconstructs. When
// fewer than k good shards can be had the error wraps ErrSegmentUnreadable.
// On error, w may have received part of the range.
func (s *Store) ReadRange(ctx context.Context, w io.Writer, segs []*metastorepb.Segment, off, length int64) error {
	return s.ReadRangeWith(ctx, w, segs, off, length, ReadOptions{})
}

// ReadOptions are the per-call settings of ReadRangeWith.
type ReadOptions struct {
	// Sealer opens the segments; nil means Config.Sealer. For an encrypted
	// blob: NewAESGCMSealer with the blob's data key, unwrapped from the
	// layout.
	Sealer Sealer
	// AdmitWait, when positive, bounds the wait for the read memory of the
	// first segment of the range (Config.ReadBudget): when it is not free
	// within AdmitWait, ReadRangeWith fails with ErrReadBudget having
	// written nothing. Later segments wait as long as ctx lasts, since
	// their bytes follow ones already written. Zero: every segment waits as
	// long as ctx lasts.
	AdmitWait time.Duration
}

// ReadRangeWith is ReadRange with per-call options: the sealer (the blob's
// data key). segs must be all the segments of the blob, in order: a
// segment's offset in the blob, which sealers may bind, is the sum of the
// lengths of those before it. A segment that does not open is an error
// (ErrKeyRequired, ErrWrongKey, ErrSegmentAuth, ErrInvalidSegment) and none
// of its bytes are written.
func (s *Store) ReadRangeWith(ctx context.Context, w io.Writer, segs []*metastorepb.Segment, off, length int64, opts ReadOptions) error {
	seal := opts.Sealer
	if seal == nil {
		seal = s.cfg.Sealer
	}
	var size int64
	for _, seg := range segs {
		size += int64(seg.GetLength())
	}
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("%w: [%d, %d+%d) of %d bytes", ErrInvalidRange, off, off, length, size)
	}
	if length == 0 {
		return nil
	}

	type part struct {
		seg      *metastorepb.Segment
		at       int64 // the segment's offset in the blob
		from, to int64 // within the segment
	}
	var parts []part
	end := off + length
	var start int64
	for _, seg := range segs {
		segEnd := start + int64(seg.GetLength())
		if segEnd > off && start < end {
			parts = append(parts, part{seg, start, max(off, start) - start, min(end, segEnd) - start})
		}
		start = segEnd
	}

	nodes := s.nodeMap()
	ctx, cancel := context.WithCancel(ctx)
	type fetched struct {
		part    part
		pieces  [][]byte
		release func() // the segment's read memory
		err     error
	}
	ch := make(chan fetched) // unbuffered: one segment written, one waiting
	go func() {
		defer close(ch)
		for i, p := range parts {
			var admit time.Duration
			if i == 0 {
				admit = opts.AdmitWait
			}
			pieces, release, err := s.readSegment(ctx, nodes, p.seg, seal, uint64(p.at), admit)
			select {
			case ch <- fetched{p, pieces, release, err}:
			case <-ctx.Done():
				if release != nil {
					release()
				}
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		cancel()
		for f := range ch { // let the fetcher finish before returning
			if f.release != nil {
				f.release()
			}
		}
	}()

	written := 0
	for f := range ch {
		if f.err != nil {
			return f.err
		}
		err := writeRange(w, f.pieces, f.part.from, f.part.to)
		f.release()
		if err != nil {
			return err
		}
		written++
	}
	if written < len(parts) {
		return ctx.Err()
	}
	return nil
}

// writeRange writes bytes [from, to) of the concatenation of pieces to w.
func writeRange(w io.Writer, pieces [][]byte, from, to int64) error {
	var at int64
	for _, p := range pieces {
		pEnd := at + int64(len(p))
		if pEnd > from && at < to {
			if _, err := w.Write(p[max(from, at)-at : min(to, pEnd)-at]); err != nil {
				return err
			}
		}
		at = pEnd
	}
	return nil
}

// checkSegment validates the metadata of a segment before it is read.
func checkSegment(seg *metastorepb.Segment) error {
	k, m := int(seg.GetK()), int(seg.GetM())
	switch {
	case seg == nil:
		return fmt.Errorf("%w: nil", ErrInvalidSegment)
	case seg.GetInline() != nil:
		if k != 0 || m != 0 || len(seg.GetShards()) > 0 || seg.GetLength() == 0 || seg.GetLength() > uint64(len(seg.GetInline())) {
			return fmt.Errorf("%w: inline segment %s: geometry %d+%d, %d shards, length %d of %d bytes",
				ErrInvalidSegment, seg.GetId(), k, m, len(seg.GetShards()), seg.GetLength(), len(seg.GetInline()))
		}
		return nil
	case k < 1 || m < 0 || k+m > erasure.MaxShards:
		return fmt.Errorf("%w: %s: geometry %d+%d", ErrInvalidSegment, seg.GetId(), k, m)
	case seg.GetLength() == 0 || seg.GetShardSize() == 0 || seg.GetShardSize() > MaxSegmentSize:
		return fmt.Errorf("%w: %s: length %d, shard size %d", ErrInvalidSegment, seg.GetId(), seg.GetLength(), seg.GetShardSize())
	case seg.GetLength() > uint64(k)*seg.GetShardSize():
		return fmt.Errorf("%w: %s: %d bytes do not fit %d shards of %d", ErrInvalidSegment, seg.GetId(), seg.GetLength(), k, seg.GetShardSize())
	}
	return nil
}

type shardResult struct {
	into bool // the fetch was given a region of the segment's buffer
	ref  *metastorepb.ShardRef
	data []byte
	err  error
}

// readSegment fetches enough good shards of seg, reconstructs missing data
// shards, and returns the segment's plaintext, opened with seal (at offset at
// in the blob), as pieces, and the function that gives back the read memory
// they hold (to be called once they are written out). A fetch first reserves
// its memory in the read budget, waiting while ctx lasts, or at most admit
// when admit > 0 (then ErrReadBudget); a read served from the segment cache
// reserves nothing.
//
// Every shard is checked against its BLAKE3 in the layout, except those of
// a sealed segment: AES-GCM authenticates the whole decoded segment end to
// end, so hashing each shard here would only repeat that check (the storage
// node does not hash what it sends either). If
// such a segment does not authenticate, it is read again with every shard
// verified, so that a damaged shard is found, reported and replaced by
// parity, and only a segment that still fails is refused.
func (s *Store) readSegment(ctx context.Context, nodes map[string]ShardStore, seg *metastorepb.Segment, seal Sealer, at uint64,
	admit time.Duration) (pieces [][]byte, release func(), err error) {
	if err := checkSegment(seg); err != nil {
		return nil, nil, err
	}
	if seg.GetInline() != nil { // already here: no fetch, no read memory
		pieces, err := openInline(seg, seal, at)
		return pieces, func() {}, err
	}
	budget, size := s.cfg.ReadBudget, ReadFootprint(seg)
	if c := s.cfg.SegmentCache; c != nil {
		return c.get(ctx, seg, seal, at, admit,
			func(ctx context.Context) (func(), error) { return budget.reserve(ctx, size) },
			func(ctx context.Context) ([][]byte, *segBuf, error) { return s.fetchSegment(ctx, nodes, seg, seal, at) })
	}
	if release, err = budget.reserveWithin(ctx, size, admit); err != nil {
		return nil, nil, err
	}
	pieces, buf, err := s.fetchSegment(ctx, nodes, seg, seal, at)
	if err != nil {
		release()
		return nil, nil, err
	}
	budgetRelease := release
	return pieces, func() { buf.unref(); budgetRelease() }, nil
}

// fetchSegment is readSegment without the cache. The pieces may lie in buf
// (nil when they do not), which the caller lets go of (unref) once they are
// written out.
func (s *Store) fetchSegment(ctx context.Context, nodes map[string]ShardStore, seg *metastorepb.Segment, seal Sealer, at uint64) ([][]byte, *segBuf, error) {
	if seg.GetFormat() == FormatAESGCM && seal != nil && seal != Plain {
		pieces, buf, err := s.readSegmentOnce(ctx, nodes, seg, seal, at, false)
		if !errors.Is(err, ErrSegmentAuth) {
			return pieces, buf, err
		}
	}
	return s.readSegmentOnce(ctx, nodes, seg, seal, at, true)
}

// readSegmentOnce is readSegment with (verify) or without each shard's
// checksum checked. seg has passed checkSegment (in readSegment).
func (s *Store) readSegmentOnce(ctx context.Context, nodes map[string]ShardStore, seg *metastorepb.Segment, seal Sealer, at uint64, verify bool) (pieces [][]byte, buf *segBuf, err error) {
	k, m := int(seg.GetK()), int(seg.GetM())
	codec, err := s.codec(k, m)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrInvalidSegment, seg.GetId(), err)
	}

	// Candidates: data shards first, then parity, each in index order.
	var cands []*metastorepb.ShardRef
	for _, ref := range seg.GetShards() {
		if ref != nil && int(ref.GetIndex()) < k+m {
			cands = append(cands, ref)
		}
	}
	slices.SortStableFunc(cands, func(a, b *metastorepb.ShardRef) int { return int(a.GetIndex()) - int(b.GetIndex()) })

	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops fetches still running once k shards are in
	results := make(chan shardResult, len(cands))
	shards := make([][]byte, k+m)

	// With k > 1, the data shards are read side by side into one buffer
	// (stores that can: ShardReaderInto), so that the segment is one piece
	// when they all arrive: a sealed segment then opens in place instead of
	// being copied together. Each data shard's region is written by one
	// fetch at a time (busy); a second fetch of the same index (a doubled
	// shard, a retry while the first is still running) gets its own buffer,
	// and a fetch still running when k shards are in writes only to its own
	// region, which is then not used.
	//
	// That buffer is pooled (segBuf): this reader holds it until the pieces
	// are written out, and every fetch writing into it holds it until that
	// fetch has returned, so a fetch still running when this returns never
	// writes into a buffer another segment is using.
	size := int(seg.GetShardSize())
	var side []byte
	var busy []bool
	var sb *segBuf // buf, for the fetches (buf is this reader's, nil on error)
	if k > 1 {
		sb = getSegBuf(k * size)
		side, busy = sb.b, make([]bool, k)
		defer func() {
			if err != nil {
				sb.unref()
				buf = nil
			}
		}()
	}
	next, inflight, good := 0, 0, 0
	launch := func() bool {
		for next < len(cands) {
			ref := cands[next]
			next++
			idx := int(ref.GetIndex())
			if shards[idx] != nil {
				continue
			}
			var dst []byte
			if idx < len(busy) && !busy[idx] {
				dst, busy[idx] = side[idx*size:idx*size:(idx+1)*size], true
				sb.ref()
			}
			inflight++
			go func() {
				res := s.fetchShard(ctx, nodes, seg, ref, verify, dst)
				if dst != nil {
					sb.unref() // done writing into it
				}
				results <- res
			}()
			return true
		}
		return false
	}
	for i := 0; i < k && launch(); i++ {
	}

	// Every HedgeAfter without k good shards, ask one more node for each
	// fetch still outstanding.
	var hedge <-chan time.Time
	if s.cfg.HedgeAfter > 0 && m > 0 {
		t := time.NewTicker(s.cfg.HedgeAfter)
		defer t.Stop()
		hedge = t.C
	}
	var errs []error
	for good < k && inflight > 0 {
		select {
		case res := <-results:
			inflight--
			idx := res.ref.GetIndex()
			if res.into {
				busy[idx] = false
			}
			switch {
			case res.err != nil:
				errs = append(errs, res.err)
				if s.cfg.OnShardError != nil {
					s.cfg.OnShardError(seg.GetId(), res.ref, res.err)
				}
				launch()
			case shards[idx] == nil:
				shards[idx] = res.data
				good++
			default:
				// A second copy of a shard already in (a doubled shard):
				// it counts for nothing, so ask for another.
				launch()
			}
		case <-hedge:
			for range inflight {
				launch()
			}
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	if good < k {
		return nil, nil, fmt.Errorf("%w: %s: %d of %d needed shards: %w", ErrSegmentUnreadable, seg.GetId(), good, k, errors.Join(errs...))
	}
	whole := side != nil
	for i := 0; i < k; i++ {
		if shards[i] == nil {
			if err := codec.Reconstruct(shards); err != nil {
				return nil, nil, fmt.Errorf("%w: %s: %w", ErrSegmentUnreadable, seg.GetId(), err)
			}
			whole = false
			break
		}
		whole = whole && len(shards[i]) == size && unsafe.SliceData(shards[i]) == &side[i*size]
	}
	if whole {
		pieces, err = seal.Open(seg, at, [][]byte{side})
	} else {
		pieces, err = seal.Open(seg, at, shards[:k])
	}
	return pieces, sb, err
}

// segBuf is a buffer the data shards of a segment are read into side by
// side (readSegmentOnce), from alignedBuffers: a fresh one is cleared before
// use, which cost a frontend 7.6% of its CPU in pulls of distinct blobs
// (4+2). It goes back to its pool when the last of its holders lets go
// (unref): the reader of the segment (or the segment cache, and every
// reader of a cached segment), and each fetch still writing into it. A nil
// *segBuf (a segment not read that way) holds nothing.
type segBuf struct {
	b       []byte
	release func()
	refs    atomic.Int32
}

func getSegBuf(n int) *segBuf {
	b := &segBuf{}
	b.b, b.release = alignedBuffer(n)
	b.refs.Store(1)
	return b
}

func (b *segBuf) ref() { b.refs.Add(1) }

// unref lets go of b; the last holder gives it back.
func (b *segBuf) unref() {
	if b == nil {
		return
	}
	switch n := b.refs.Add(-1); {
	case n < 0:
		panic("blobstore: segment buffer let go of once too often")
	case n == 0:
		b.release()
	}
}

// fetchShard gets one shard and checks its size and (with verify) its
// checksum.
func (s *Store) fetchShard(ctx context.Context, nodes map[string]ShardStore, seg *metastorepb.Segment, ref *metastorepb.ShardRef, verify bool, dst []byte) shardResult {
	res := shardResult{ref: ref, into: dst != nil}
	id := ShardID{Segment: seg.GetId(), Index: ref.GetIndex()}
	store, ok := nodes[ref.GetNode()]
	if !ok {
		res.err = fmt.Errorf("%w: shard %s on %q", ErrNodeUnavailable, id, ref.GetNode())
		return res
	}
	var data []byte
	var err error
	if r, ok := store.(ShardReaderInto); ok && dst != nil {
		data, err = r.GetInto(ctx, id, dst)
	} else {
		data, err = store.Get(ctx, id)
	}
	switch {
	case err != nil:
		res.err = fmt.Errorf("shard %s on %s: %w", id, ref.GetNode(), err)
	case uint64(len(data)) != seg.GetShardSize():
		res.err = fmt.Errorf("%w: shard %s on %s is %d bytes, want %d", ErrShardCorrupt, id, ref.GetNode(), len(data), seg.GetShardSize())
	case !verify:
		res.data = data
	default:
		sum := blake3.Sum256(data)
		if string(sum[:]) != string(ref.GetBlake3()) {
			res.err = fmt.Errorf("%w: shard %s on %s: BLAKE3 mismatch", ErrShardCorrupt, id, ref.GetNode())
		} else {
			res.data = data
		}
	}
	return res
}

// Delete removes every shard of segs from its node, best effort: it tries
// them all and returns the first error. A shard on a node that is not among
// the current nodes is an ErrNodeUnavailable error.
func (s *Store) Delete(ctx context.Context, segs []*metastorepb.Segment) error {
	nodes := s.nodeMap()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	record := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
	}
	sem := make(chan struct{}, 16)
	for _, seg := range segs {
		for _, ref := range seg.GetShards() {
			id := ShardID{Segment: seg.GetId(), Index: ref.GetIndex()}
			store, ok := nodes[ref.GetNode()]
			if !ok {
				record(fmt.Errorf("%w: shard %s on %q", ErrNodeUnavailable, id, ref.GetNode()))
				continue
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := store.Delete(ctx, id); err != nil {
					record(fmt.Errorf("blobstore: delete %s on %s: %w", id, ref.GetNode(), err))
				}
			}()
		}
	}
	wg.Wait()
	return first
}
