package blobstore

import (
	"fmt"

	"github.com/strata-registry/strata/metastore/metastorepb"
)

// Segment formats (metastorepb.Segment.Format).
const (
	// FormatPlain: the shards hold the segment's plaintext, zero-padded.
	FormatPlain = 1
)

// sealer is where a segment is sealed before it is erasure coded and opened
// after its data shards are decoded: encryption at rest (AES-256-GCM with the
// blob's data key, recording the key id in Segment.KeyId and a new Format)
// plugs in here without touching the pipelines. Today the only sealer is
// plainSealer, the identity.
type sealer interface {
	// Overhead is how many bytes sealing adds to a segment.
	Overhead() int
	// Seal seals plain, the plaintext of seg, and records in seg what Open
	// needs (Format, KeyId). plain has at least Overhead() bytes of spare
	// capacity and may be sealed in place; the result should keep the spare
	// capacity of plain's buffer so that encoding needs no allocation.
	Seal(seg *metastorepb.Segment, plain []byte) ([]byte, error)
	// Open returns the plaintext of seg from its k data shards (all present,
	// each seg.ShardSize bytes), as pieces whose lengths add up to
	// seg.Length. The pieces may alias the shards.
	Open(seg *metastorepb.Segment, data [][]byte) ([][]byte, error)
}

// plainSealer stores segments as they are (FormatPlain).
type plainSealer struct{}

func (plainSealer) Overhead() int { return 0 }

func (plainSealer) Seal(seg *metastorepb.Segment, plain []byte) ([]byte, error) {
	seg.Format, seg.KeyId = FormatPlain, ""
	return plain, nil
}

func (plainSealer) Open(seg *metastorepb.Segment, data [][]byte) ([][]byte, error) {
	if seg.GetFormat() != FormatPlain || seg.GetKeyId() != "" {
		return nil, fmt.Errorf("%w: %s: format %d key %q is not supported", ErrInvalidSegment, seg.GetId(), seg.GetFormat(), seg.GetKeyId())
	}
	pieces := make([][]byte, 0, len(data))
	left := seg.GetLength()
	for _, d := range data {
		if left == 0 {
			break
		}
		n := min(uint64(len(d)), left)
		pieces = append(pieces, d[:n])
		left -= n
	}
	if left > 0 {
		return nil, fmt.Errorf("%w: %s: shards hold fewer than %d bytes", ErrInvalidSegment, seg.GetId(), seg.GetLength())
	}
	return pieces, nil
}
