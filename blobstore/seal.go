package blobstore

import (
	"errors"
	"fmt"

	"github.com/strata-registry/strata/metastore/metastorepb"
)

// Segment formats (metastorepb.Segment.Format).
const (
	// FormatPlain: the shards hold the segment's plaintext, zero-padded.
	FormatPlain = 1
	// FormatAESGCM: the shards hold the segment sealed with AES-256-GCM
	// (ciphertext then 16-byte tag, zero-padded) under a subkey of the
	// blob's data key; Segment.KeyId names the data key (see AESGCMSealer).
	FormatAESGCM = 2
)

// MaxSealOverhead bounds Sealer.Overhead: Store keeps this much spare room
// after every segment buffer, so any sealer can seal in place.
const MaxSealOverhead = 64

var (
	// ErrKeyRequired is returned by ReadRange for an encrypted segment when
	// no sealer with a key was given.
	ErrKeyRequired = errors.New("blobstore: segment is encrypted; no data key given")
	// ErrWrongKey is returned by ReadRange when a segment was sealed under
	// another data key than the one given (Segment.KeyId differs).
	ErrWrongKey = errors.New("blobstore: segment sealed under another data key")
	// ErrSegmentAuth is returned by ReadRange when a segment's shards decode
	// to a ciphertext that does not authenticate: shards altered (with their
	// checksums), swapped from another segment, or metadata (id, position,
	// length) that is not what the segment was sealed with. Nothing of such
	// a segment is returned.
	ErrSegmentAuth = errors.New("blobstore: segment failed authentication")
)

// Sealer is where a segment is sealed before it is erasure coded and opened
// after its data shards are decoded: encryption at rest plugs in here
// without touching the pipelines. Plain is the identity; AESGCMSealer
// encrypts under a blob's data key. Implementations are safe for concurrent
// use: Store seals and opens several segments at once.
//
// offset is the position of the segment's first byte in the blob (the sum of
// the lengths of the segments before it in the layout): a sealer may bind it
// so that segments cannot be reordered.
type Sealer interface {
	// Overhead is how many bytes sealing adds to a segment, at most
	// MaxSealOverhead.
	Overhead() int
	// Seal seals plain, the plaintext of seg (whose Id, Length, K and M are
	// set), and records in seg what Open needs (Format, KeyId). plain has at
	// least Overhead() bytes of spare capacity and may be sealed in place;
	// the result should keep the spare capacity of plain's buffer so that
	// encoding needs no allocation.
	Seal(seg *metastorepb.Segment, offset uint64, plain []byte) ([]byte, error)
	// Open returns the plaintext of seg from its k data shards (all present,
	// each seg.ShardSize bytes, owned by the caller: Open may overwrite
	// them), as pieces whose lengths add up to seg.Length. The pieces may
	// alias the shards.
	Open(seg *metastorepb.Segment, offset uint64, data [][]byte) ([][]byte, error)
}

// Plain stores segments as they are (FormatPlain), and opens only such
// segments: an encrypted one is ErrKeyRequired.
var Plain Sealer = plainSealer{}

// plainSealer stores segments as they are (FormatPlain).
type plainSealer struct{}

func (plainSealer) Overhead() int { return 0 }

func (plainSealer) Seal(seg *metastorepb.Segment, _ uint64, plain []byte) ([]byte, error) {
	seg.Format, seg.KeyId = FormatPlain, ""
	return plain, nil
}

func (plainSealer) Open(seg *metastorepb.Segment, _ uint64, data [][]byte) ([][]byte, error) {
	if seg.GetFormat() == FormatAESGCM {
		return nil, fmt.Errorf("%w: %s (key %s)", ErrKeyRequired, seg.GetId(), seg.GetKeyId())
	}
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
