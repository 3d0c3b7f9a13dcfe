package erasure

import (
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/reedsolomon"
)

// MaxShards is the largest k+m a Codec accepts (GF(2^8) Reed–Solomon).
const MaxShards = 256

var (
	// ErrInvalidGeometry is returned by New for an unusable k or m.
	ErrInvalidGeometry = errors.New("erasure: invalid geometry")
	// ErrEmptyData is returned by Encode for zero bytes: a segment is never empty.
	ErrEmptyData = errors.New("erasure: empty data")
	// ErrShardCount is returned when a shard slice does not hold k+m entries.
	ErrShardCount = errors.New("erasure: wrong number of shards")
	// ErrShardSize is returned when the present shards differ in size.
	ErrShardSize = errors.New("erasure: shards differ in size")
	// ErrTooFewShards is returned when fewer than k shards are present.
	ErrTooFewShards = errors.New("erasure: too few shards")
	// ErrShortData is returned by Join when the shards hold fewer bytes than asked for.
	ErrShortData = errors.New("erasure: short data")
)

// Codec splits data into k data shards plus m parity shards and back.
// A Codec is immutable and safe for concurrent use.
type Codec struct {
	k, m int
	enc  reedsolomon.Encoder
}

// New returns a codec for k data and m parity shards: k >= 1, m >= 0,
// k+m <= MaxShards. With m == 0 there is no parity: Encode only splits the
// data (a single shard, the data itself, when k == 1) and nothing can be
// reconstructed.
func New(k, m int) (*Codec, error) {
	if k < 1 || m < 0 || k+m > MaxShards {
		return nil, fmt.Errorf("%w: k=%d m=%d", ErrInvalidGeometry, k, m)
	}
	enc, err := reedsolomon.New(k, m)
	if err != nil {
		return nil, fmt.Errorf("%w: k=%d m=%d: %v", ErrInvalidGeometry, k, m, err)
	}
	return &Codec{k: k, m: m, enc: enc}, nil
}

// K returns the number of data shards.
func (c *Codec) K() int { return c.k }

// M returns the number of parity shards.
func (c *Codec) M() int { return c.m }

// N returns the number of shards Encode produces, k+m.
func (c *Codec) N() int { return c.k + c.m }

// ShardSize returns the size of every shard of an n-byte segment: ceil(n/k).
// It is at least 1 for n > 0, and 0 for n <= 0 (Encode refuses empty data).
func (c *Codec) ShardSize(n int) int {
	if n <= 0 {
		return 0
	}
	return (n + c.k - 1) / c.k
}

// EncodedSize returns the total size of the shards of an n-byte segment,
// (k+m) * ShardSize(n). When cap(data) is at least this, Encode allocates
// no shard memory.
func (c *Codec) EncodedSize(n int) int { return c.N() * c.ShardSize(n) }

// Encode splits data into k data shards and computes m parity shards, all of
// ShardSize(len(data)) bytes; the last data shard is zero-padded.
//
// The returned shards alias data where they can: the data shards are
// sub-slices of data, and when cap(data) >= EncodedSize(len(data)) the padding
// and the parity shards live in data's spare capacity too (which Encode
// overwrites). So data must not be modified while the shards are in use, and
// a caller that wants no allocation passes a buffer with that capacity.
func (c *Codec) Encode(data []byte) ([][]byte, error) {
	if len(data) == 0 {
		return nil, ErrEmptyData
	}
	shards, err := c.enc.Split(data)
	if err != nil {
		return nil, c.mapErr(err)
	}
	if c.m == 0 {
		return shards, nil
	}
	if err := c.enc.Encode(shards); err != nil {
		return nil, c.mapErr(err)
	}
	return shards, nil
}

// Reconstruct fills the nil (or empty) data shards of shards, which must hold
// k+m entries of which at least k are present, all of the same size. Missing
// parity shards are left as they are: reading needs only the data. It may
// allocate the shards it fills.
func (c *Codec) Reconstruct(shards [][]byte) error {
	if err := c.check(shards); err != nil {
		return err
	}
	if err := c.enc.ReconstructData(shards); err != nil {
		return c.mapErr(err)
	}
	return nil
}

// ReconstructAll is Reconstruct for every missing shard, parity included, as
// repair needs to rebuild a lost parity shard.
func (c *Codec) ReconstructAll(shards [][]byte) error {
	if err := c.check(shards); err != nil {
		return err
	}
	if err := c.enc.Reconstruct(shards); err != nil {
		return c.mapErr(err)
	}
	return nil
}

// Join writes the first size bytes held by the k data shards to dst. Every
// data shard must be present (call Reconstruct first).
func (c *Codec) Join(dst io.Writer, shards [][]byte, size int) error {
	if len(shards) != c.N() {
		return fmt.Errorf("%w: got %d, want %d", ErrShardCount, len(shards), c.N())
	}
	if size < 0 {
		return fmt.Errorf("%w: negative size %d", ErrShortData, size)
	}
	for i := 0; i < c.k; i++ {
		if len(shards[i]) == 0 {
			return fmt.Errorf("%w: data shard %d missing", ErrTooFewShards, i)
		}
	}
	if err := c.enc.Join(dst, shards, size); err != nil {
		return c.mapErr(err)
	}
	return nil
}

// check validates the shape of shards for reconstruction.
func (c *Codec) check(shards [][]byte) error {
	if len(shards) != c.N() {
		return fmt.Errorf("%w: got %d, want %d", ErrShardCount, len(shards), c.N())
	}
	present, size := 0, -1
	for _, s := range shards {
		if len(s) == 0 {
			continue
		}
		present++
		if size >= 0 && len(s) != size {
			return fmt.Errorf("%w: %d and %d bytes", ErrShardSize, size, len(s))
		}
		size = len(s)
	}
	if present < c.k {
		return fmt.Errorf("%w: %d present, need %d", ErrTooFewShards, present, c.k)
	}
	return nil
}

// mapErr turns reedsolomon's errors into this package's sentinels, keeping
// the original text.
func (c *Codec) mapErr(err error) error {
	switch {
	case errors.Is(err, reedsolomon.ErrTooFewShards), errors.Is(err, reedsolomon.ErrReconstructRequired):
		return fmt.Errorf("%w: %v", ErrTooFewShards, err)
	case errors.Is(err, reedsolomon.ErrShardSize), errors.Is(err, reedsolomon.ErrShardNoData):
		return fmt.Errorf("%w: %v", ErrShardSize, err)
	case errors.Is(err, reedsolomon.ErrShortData):
		return fmt.Errorf("%w: %v", ErrShortData, err)
	case errors.Is(err, reedsolomon.ErrInvalidInput):
		return fmt.Errorf("%w: %v", ErrShardCount, err)
	}
	return fmt.Errorf("erasure: %w", err)
}
