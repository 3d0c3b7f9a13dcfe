package blobstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/strata-registry/strata/metastore/metastorepb"
)

// DataKeySize is the size of the data keys AESGCMSealer takes (AES-256);
// keys.NewDataKey makes them.
const DataKeySize = 32

// AESGCMSealer seals segments with AES-256-GCM under one blob's data key
// (FormatAESGCM). Make one per blob (per upload: every request of an upload
// uses the same data key, unwrapped from the upload session) and pass it in
// WriteOptions and ReadOptions.
//
// # Keys and nonces
//
// A data key is shared by every segment of a blob, and the segments of one
// upload are sealed by different frontends, in different processes, at
// different times, with no shared state: a nonce counter cannot be kept. So
// no segment is sealed under the data key itself. Each segment is sealed
// under its own subkey and nonce,
//
//	prk          = HKDF-Extract(SHA-256, salt "strata/blobstore/aes-gcm/v2", data key)
//	subkey|nonce = HKDF-Expand(SHA-256, prk, "segment\x00" || segment id, 32+12)
//
// and the segment id is 128 random bits drawn by Store for every segment it
// writes (never chosen by a caller, never reused: repair rebuilds shards from
// shards, it never seals again). A (subkey, nonce) pair therefore encrypts
// exactly one message; two segments share one only if their random ids
// collide, about 2^-128 per pair (a billion segments under one data key
// would still leave the odds below 2^-68). GCM's usual limit for random
// 96-bit nonces (2^32 messages per key) does not apply, because no key
// encrypts more than one message; nothing extra is stored per segment.
//
// # What is bound
//
// The associated data of every segment is
//
//	"strata/segment" || format (4) || len(id) (2) || id || offset (8) || length (8)
//
// (big-endian), where offset is the segment's position in the blob and length
// its plaintext length. With the id also in the key derivation:
//   - shards of another segment (of this blob or of another, under this key
//     or another) do not open under this segment's subkey: swapping shards
//     between segments or layouts is detected;
//   - a layout whose segments are reordered places a segment at another
//     offset than it was sealed at: detected;
//   - a segment whose recorded length was changed (truncated or extended) or
//     whose ciphertext was cut short fails: detected;
//   - an altered byte anywhere in the ciphertext or tag fails: detected even
//     when the shards' BLAKE3 checksums were recomputed to match.
//
// What cannot be bound at Seal time is the blob's digest and its total size:
// the digest is known only after the last byte, and an upload's segments are
// written by separate requests that cannot know whether more will follow. A
// layout cut short by dropping whole trailing segments is therefore not
// caught here; it is caught by the digest (the layout is committed through
// Raft with the digest and size it was checked against, and clients verify
// the digest of what they pull).
//
// Segment.KeyId records which data key sealed the segment: a fingerprint,
// HKDF-Expand(prk, "key id", 16) in hex, which reveals nothing of the key.
// Open checks it first, so a wrong key is reported as ErrWrongKey rather than
// as tampering.
type AESGCMSealer struct {
	prk   []byte
	keyID string
}

var _ Sealer = (*AESGCMSealer)(nil)

const (
	aesgcmSalt     = "strata/blobstore/aes-gcm/v2"
	aesgcmTagSize  = 16
	aesgcmKeySize  = 32
	aesgcmNonceLen = 12
)

// NewAESGCMSealer returns a sealer for the data key dataKey (DataKeySize
// bytes). It keeps only a key derived from it.
func NewAESGCMSealer(dataKey []byte) (*AESGCMSealer, error) {
	if len(dataKey) != DataKeySize {
		return nil, fmt.Errorf("blobstore: data key of %d bytes, want %d", len(dataKey), DataKeySize)
	}
	prk, err := hkdf.Extract(sha256.New, dataKey, []byte(aesgcmSalt))
	if err != nil {
		return nil, err
	}
	id, err := hkdf.Expand(sha256.New, prk, "key id", 16)
	if err != nil {
		return nil, err
	}
	return &AESGCMSealer{prk: prk, keyID: hex.EncodeToString(id)}, nil
}

// KeyID returns the fingerprint of the data key that Seal records in
// Segment.KeyId.
func (s *AESGCMSealer) KeyID() string { return s.keyID }

// Overhead implements Sealer: the GCM tag.
func (s *AESGCMSealer) Overhead() int { return aesgcmTagSize }

// segmentKey derives the subkey and nonce of one segment: the first 32 and
// the last 12 bytes of the result.
func (s *AESGCMSealer) segmentKey(id string) ([]byte, error) {
	if id == "" {
		return nil, errors.New("segment without an id")
	}
	return hkdf.Expand(sha256.New, s.prk, "segment\x00"+id, aesgcmKeySize+aesgcmNonceLen)
}

// segmentAEAD returns the AEAD and nonce of one segment.
func (s *AESGCMSealer) segmentAEAD(id string) (cipher.AEAD, []byte, error) {
	okm, err := s.segmentKey(id)
	if err != nil {
		return nil, nil, err
	}
	block, err := aes.NewCipher(okm[:aesgcmKeySize])
	clear(okm[:aesgcmKeySize])
	if err != nil {
		return nil, nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, nil, err
	}
	return aead, okm[aesgcmKeySize:], nil
}

// segmentAD is the associated data of a segment (see AESGCMSealer).
func segmentAD(format uint32, id string, offset, length uint64) []byte {
	ad := make([]byte, 0, 14+4+2+len(id)+16)
	ad = append(ad, "strata/segment"...)
	ad = binary.BigEndian.AppendUint32(ad, format)
	ad = binary.BigEndian.AppendUint16(ad, uint16(len(id)))
	ad = append(ad, id...)
	ad = binary.BigEndian.AppendUint64(ad, offset)
	return binary.BigEndian.AppendUint64(ad, length)
}

// Seal implements Sealer, in place: the ciphertext and tag take plain's
// bytes and Overhead() bytes of its spare capacity.
func (s *AESGCMSealer) Seal(seg *metastorepb.Segment, offset uint64, plain []byte) ([]byte, error) {
	if uint64(len(plain)) != seg.GetLength() || len(seg.GetId()) > 0xffff {
		return nil, fmt.Errorf("%w: %s: sealing %d bytes of a %d-byte segment", ErrInvalidSegment, seg.GetId(), len(plain), seg.GetLength())
	}
	if cap(plain)-len(plain) < aesgcmTagSize {
		return nil, fmt.Errorf("blobstore: seal %s: no room for the tag", seg.GetId())
	}
	aead, nonce, err := s.segmentAEAD(seg.GetId())
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidSegment, seg.GetId(), err)
	}
	seg.Format, seg.KeyId = FormatAESGCM, s.keyID
	ad := segmentAD(FormatAESGCM, seg.GetId(), offset, seg.GetLength())
	return aead.Seal(plain[:0], nonce, plain, ad), nil
}

// Open implements Sealer. It refuses a FormatPlain segment: a blob whose
// data key is known was written sealed, and a plaintext segment in its
// layout would be a downgrade. The plaintext is returned only once the whole
// segment authenticated.
func (s *AESGCMSealer) Open(seg *metastorepb.Segment, offset uint64, data [][]byte) ([][]byte, error) {
	switch {
	case seg.GetFormat() == FormatPlain:
		return nil, fmt.Errorf("%w: %s is not encrypted (format %d) but its blob has a data key", ErrInvalidSegment, seg.GetId(), seg.GetFormat())
	case seg.GetFormat() != FormatAESGCM:
		return nil, fmt.Errorf("%w: %s: format %d is not supported", ErrInvalidSegment, seg.GetId(), seg.GetFormat())
	case seg.GetKeyId() != s.keyID:
		return nil, fmt.Errorf("%w: %s was sealed under key %q, not %q", ErrWrongKey, seg.GetId(), seg.GetKeyId(), s.keyID)
	}
	sealedLen := seg.GetLength() + aesgcmTagSize
	var have uint64
	for _, d := range data {
		have += uint64(len(d))
	}
	if seg.GetLength() == 0 || have < sealedLen || len(seg.GetId()) > 0xffff {
		return nil, fmt.Errorf("%w: %s: %d shard bytes cannot hold %d sealed bytes", ErrInvalidSegment, seg.GetId(), have, sealedLen)
	}
	var sealed []byte
	if uint64(len(data[0])) >= sealedLen {
		sealed = data[0][:sealedLen] // one data shard (k = 1): open in place
	} else {
		sealed = make([]byte, 0, sealedLen)
		for _, d := range data {
			sealed = append(sealed, d[:min(uint64(len(d)), sealedLen-uint64(len(sealed)))]...)
		}
	}
	aead, nonce, err := s.segmentAEAD(seg.GetId())
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidSegment, seg.GetId(), err)
	}
	ad := segmentAD(FormatAESGCM, seg.GetId(), offset, seg.GetLength())
	plain, err := aead.Open(sealed[:0], nonce, sealed, ad)
	if err != nil {
		return nil, fmt.Errorf("%w: segment %s at offset %d (%d bytes)", ErrSegmentAuth, seg.GetId(), offset, seg.GetLength())
	}
	return [][]byte{plain}, nil
}
