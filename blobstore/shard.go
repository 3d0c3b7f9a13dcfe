package blobstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

var (
	// ErrShardNotFound is returned by Get and Stat for a shard the store does not hold.
	ErrShardNotFound = errors.New("blobstore: shard not found")
	// ErrShardCorrupt is returned when a shard's bytes do not match its checksum,
	// or its file cannot be decoded, or Put is given data that does not match sum.
	ErrShardCorrupt = errors.New("blobstore: shard corrupt")
	// ErrInvalidShardID is returned for a ShardID that cannot name a shard.
	ErrInvalidShardID = errors.New("blobstore: invalid shard id")
	// ErrClosed is returned by a store used after Close.
	ErrClosed = errors.New("blobstore: store closed")
	// ErrNoSpace is returned by Put when the store has no room for the
	// shard (its filesystem is full: ENOSPC, or over quota: EDQUOT). The
	// shard is not stored; the caller puts it on another node.
	ErrNoSpace = errors.New("blobstore: no space left for the shard")
)

// ShardID names one shard: shard Index of segment Segment.
type ShardID struct {
	Segment string
	Index   uint32
}

// String returns "<segment>.<index>", the shard's file name and the key List
// sorts and pages by.
func (id ShardID) String() string {
	return id.Segment + "." + strconv.FormatUint(uint64(id.Index), 10)
}

// Segment ids are made by Store (32 lower-case hex digits) but any id of 2 to
// maxSegmentIDLen characters from [0-9A-Za-z_-] is a valid shard name: it must
// be safe as a file name and its first two characters name a directory.
const maxSegmentIDLen = 128

// Validate reports whether id can name a shard, with an error wrapping
// ErrInvalidShardID if not.
func (id ShardID) Validate() error {
	s := id.Segment
	if len(s) < 2 || len(s) > maxSegmentIDLen {
		return fmt.Errorf("%w: segment id %q must have 2 to %d characters", ErrInvalidShardID, s, maxSegmentIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '_') {
			return fmt.Errorf("%w: segment id %q has character %q", ErrInvalidShardID, s, c)
		}
	}
	return nil
}

// ParseShardID parses the String form of a ShardID.
func ParseShardID(s string) (ShardID, error) {
	dot := strings.LastIndexByte(s, '.')
	if dot < 0 {
		return ShardID{}, fmt.Errorf("%w: %q has no index", ErrInvalidShardID, s)
	}
	idx, err := strconv.ParseUint(s[dot+1:], 10, 32)
	if err != nil || strconv.FormatUint(idx, 10) != s[dot+1:] {
		return ShardID{}, fmt.Errorf("%w: %q has a bad index", ErrInvalidShardID, s)
	}
	id := ShardID{Segment: s[:dot], Index: uint32(idx)}
	return id, id.Validate()
}

// ShardInfo describes a stored shard.
type ShardInfo struct {
	ID   ShardID
	Size int64    // payload bytes
	Sum  [32]byte // BLAKE3-256 of the payload, as recorded when it was put
}

// Usage is the space a ShardStore uses and has.
type Usage struct {
	Shards   int64  // shards held
	Used     int64  // bytes of shard files (headers included)
	Capacity uint64 // size of the filesystem or device the shards live on
	Free     uint64 // bytes still available to the store
}

// ShardStore holds the shards of one storage node. Implementations are safe
// for concurrent use. Every method returns ctx.Err() (possibly wrapped) when
// ctx is done before the operation could complete; a local disk operation that
// has begun may finish regardless.
type ShardStore interface {
	// NodeID returns the id of the storage node; ShardRef.Node records it.
	NodeID() string

	// Put stores data as shard id. sum must be the BLAKE3-256 of data: a
	// store that receives data from another process (over the network)
	// verifies it and returns an error wrapping ErrShardCorrupt if it is not,
	// so bytes damaged on the way are never stored. LocalStore, whose
	// callers are in its own process (the shard server, which has checked
	// what arrived, and in-process pipelines), records sum as given; a wrong
	// sum is then in the shard's header, where readers and the scrubber catch
	// it. When Put returns nil the
	// shard is durable: it survives a crash or power loss of the node. A put
	// is atomic (a reader sees the old shard, or none, or the new one, never a
	// part) and replaces any shard with the same id, so repeating a Put with
	// identical content is harmless. Put must not keep data after it returns.
	Put(ctx context.Context, id ShardID, data []byte, sum [32]byte) error

	// Get returns the whole payload of shard id, or an error wrapping
	// ErrShardNotFound when there is no such shard, or ErrShardCorrupt when
	// what is stored cannot be the shard (a damaged header, a wrong length).
	// Get does not hash the payload: every reader checks it end to end,
	// where the bytes are used (Store against the BLAKE3 in the segment's
	// layout, or by opening a sealed segment, which authenticates it;
	// VerifyShard against the checksum recorded at Put), so a second hash on
	// the storage node would check the same bytes twice. The caller owns the
	// returned slice.
	Get(ctx context.Context, id ShardID) ([]byte, error)

	// Delete removes shard id. Deleting a missing shard is not an error.
	// A deletion need not be durable: a shard that comes back after a crash
	// is an orphan for the sweeper.
	Delete(ctx context.Context, id ShardID) error

	// Stat returns the size and recorded checksum of shard id without reading
	// or verifying its payload; ErrShardNotFound when missing.
	Stat(ctx context.Context, id ShardID) (ShardInfo, error)

	// List returns up to limit shards (a store-chosen default when limit <= 0)
	// whose ID.String() sorts strictly after after, in that order. Page
	// through all shards by passing the last ID.String() of a page as the
	// next after; an empty result ends the listing. A shard whose header
	// cannot be read is still listed (with a zero Sum) so a scrubber finds it.
	List(ctx context.Context, after string, limit int) ([]ShardInfo, error)

	// Usage reports the bytes the shards use and the capacity and free space
	// of the storage under them.
	Usage(ctx context.Context) (Usage, error)
}

// ShardReaderInto is a ShardStore that can read a shard's payload into a
// buffer of the caller's (LocalStore, RemoteStore, Faulty over either). Store
// reads the data shards of a segment side by side into one buffer with it, so
// that a sealed segment opens in place instead of being copied together first.
type ShardReaderInto interface {
	ShardStore
	// GetInto is Get with the payload appended to dst[:0]: when cap(dst)
	// holds it, nothing is allocated and the result aliases dst.
	GetInto(ctx context.Context, id ShardID, dst []byte) ([]byte, error)
}

// DefaultListLimit is the page size of List when limit <= 0.
const DefaultListLimit = 1000

// The shard file format, version 1. All integers are little-endian.
//
//	offset size field
//	0      4    magic "STSH"
//	4      2    format version (1)
//	6      2    header size (64)
//	8      4    shard index
//	12     4    reserved, zero
//	16     8    payload length in bytes
//	24     32   BLAKE3-256 of the payload
//	56     4    reserved, zero
//	60     4    CRC-32C of bytes 0..59
//	64     ...  payload
//
// The header lets a node verify its own shards without any metadata
// (scrubbing): the checksum covers the payload and the CRC covers the header,
// so a damaged length or index is caught too.
const (
	shardMagic         = "STSH"
	shardFormatVersion = 1
	shardHeaderSize    = 64
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// shardHeader is the decoded header of a shard file.
type shardHeader struct {
	Index  uint32
	Length uint64
	Sum    [32]byte
}

// encodeShardHeader returns the header of a shard file.
func encodeShardHeader(h shardHeader) [shardHeaderSize]byte {
	var b [shardHeaderSize]byte
	copy(b[0:4], shardMagic)
	binary.LittleEndian.PutUint16(b[4:6], shardFormatVersion)
	binary.LittleEndian.PutUint16(b[6:8], shardHeaderSize)
	binary.LittleEndian.PutUint32(b[8:12], h.Index)
	binary.LittleEndian.PutUint64(b[16:24], h.Length)
	copy(b[24:56], h.Sum[:])
	binary.LittleEndian.PutUint32(b[60:64], crc32.Checksum(b[:60], castagnoli))
	return b
}

// decodeShardHeader decodes the header at the start of b, with an error
// wrapping ErrShardCorrupt if it is not a valid version 1 header. It never
// panics, whatever b holds.
func decodeShardHeader(b []byte) (shardHeader, error) {
	if len(b) < shardHeaderSize {
		return shardHeader{}, fmt.Errorf("%w: header is %d bytes, want %d", ErrShardCorrupt, len(b), shardHeaderSize)
	}
	if string(b[0:4]) != shardMagic {
		return shardHeader{}, fmt.Errorf("%w: bad magic %q", ErrShardCorrupt, b[0:4])
	}
	if crc := binary.LittleEndian.Uint32(b[60:64]); crc != crc32.Checksum(b[:60], castagnoli) {
		return shardHeader{}, fmt.Errorf("%w: header checksum mismatch", ErrShardCorrupt)
	}
	if v := binary.LittleEndian.Uint16(b[4:6]); v != shardFormatVersion {
		return shardHeader{}, fmt.Errorf("%w: unknown format version %d", ErrShardCorrupt, v)
	}
	if n := binary.LittleEndian.Uint16(b[6:8]); n != shardHeaderSize {
		return shardHeader{}, fmt.Errorf("%w: header size %d, want %d", ErrShardCorrupt, n, shardHeaderSize)
	}
	if binary.LittleEndian.Uint32(b[12:16]) != 0 || binary.LittleEndian.Uint32(b[56:60]) != 0 {
		return shardHeader{}, fmt.Errorf("%w: reserved header bytes set", ErrShardCorrupt)
	}
	var h shardHeader
	h.Index = binary.LittleEndian.Uint32(b[8:12])
	h.Length = binary.LittleEndian.Uint64(b[16:24])
	copy(h.Sum[:], b[24:56])
	return h, nil
}
