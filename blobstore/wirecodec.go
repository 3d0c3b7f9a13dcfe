package blobstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the standard codec this one wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/strata-registry/strata/blobstore/shardpb"
)

// The shard service moves every shard byte through gRPC, and the standard
// protobuf codec copies a chunk's data three times on its way: into the
// marshalled message on the sender, then on the receiver out of gRPC's
// buffers into one flat buffer (MaterializeToBuffer) and again into the
// unmarshalled message, before the caller appends it to the shard it is
// assembling. wireCodec replaces the standard codec in the process and keeps
// the wire format (it is protobuf, byte for byte compatible with any other
// implementation) while dropping those copies for the two data messages:
//
//   - Marshal of a GetResponse or PutRequest whose data is large returns the
//     other fields, encoded, and the data itself as a second buffer, without
//     copying it. gRPC writes it into its frames (a copy it makes anyway). The
//     sender must not change data until the stream is done; both senders
//     give it bytes they do not reuse before then (a shard file's fresh
//     buffer; a segment buffer, reused only after Put has returned — and a
//     Put that returned early on an error ended its stream, whose late
//     bytes the server would refuse by their checksum anyway).
//   - Unmarshal into a *getChunk or *putChunk (RecvMsg with those instead of
//     the generated messages) parses the message straight out of gRPC's
//     buffers and appends the data to the chunk's buffer: one copy.
//
// Every other message, of this service or any other, goes to the standard
// codec unchanged.
type wireCodec struct{ std encoding.CodecV2 }

func init() {
	std := encoding.GetCodecV2("proto")
	if std == nil {
		panic("blobstore: the standard gRPC proto codec is not registered")
	}
	encoding.RegisterCodecV2(wireCodec{std: std})
}

// zeroCopyMin: data shorter than this is marshalled the standard way.
const zeroCopyMin = 32 << 10

// Protobuf field numbers of the data messages (blobstore/shardpb/shard.proto).
const (
	getSizeField   = 1
	getLengthField = 2
	getDataField   = 3

	putIDField     = 1
	putLengthField = 2
	putBlake3Field = 3
	putDataField   = 4
)

func (c wireCodec) Name() string { return "proto" }

// getResponseOut is a GetResponse whose data is a reference-counted gRPC
// buffer (a view of a pooled shard buffer): Marshal hands the reference to
// gRPC, which drops it once the bytes are written, and the shard buffer goes
// back to its pool when the last chunk's reference is dropped. On the wire
// it is a GetResponse.
type getResponseOut struct {
	Size, Length uint64
	Data         mem.Buffer
}

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *getResponseOut:
		hdr := getResponseHeader(m.Size, m.Length)
		if m.Data.Len() == 0 { // proto3 leaves an empty field out
			m.Data.Free()
			return mem.BufferSlice{mem.SliceBuffer(hdr)}, nil
		}
		hdr = protowire.AppendTag(hdr, getDataField, protowire.BytesType)
		hdr = protowire.AppendVarint(hdr, uint64(m.Data.Len()))
		return mem.BufferSlice{mem.SliceBuffer(hdr), m.Data}, nil
	case *shardpb.GetResponse:
		if len(m.GetData()) >= zeroCopyMin {
			return withData(getResponseHeader(m.GetSize(), m.GetLength()), getDataField, m.GetData()), nil
		}
	case *shardpb.PutRequest:
		if len(m.GetData()) >= zeroCopyMin {
			hdr, err := proto.Marshal(&shardpb.PutRequest{Id: m.GetId(), Length: m.GetLength(), Blake3: m.GetBlake3()})
			if err != nil {
				return nil, err
			}
			return withData(hdr, putDataField, m.GetData()), nil
		}
	}
	return c.std.Marshal(v)
}

// getResponseHeader encodes a GetResponse's fields other than its data.
func getResponseHeader(size, length uint64) []byte {
	var hdr []byte
	if size != 0 {
		hdr = protowire.AppendTag(hdr, getSizeField, protowire.VarintType)
		hdr = protowire.AppendVarint(hdr, size)
	}
	if length != 0 {
		hdr = protowire.AppendTag(hdr, getLengthField, protowire.VarintType)
		hdr = protowire.AppendVarint(hdr, length)
	}
	return hdr
}

// withData appends the tag and length of a bytes field to hdr and returns it
// and data as two buffers.
func withData(hdr []byte, field protowire.Number, data []byte) mem.BufferSlice {
	hdr = protowire.AppendTag(hdr, field, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(len(data)))
	return mem.BufferSlice{mem.SliceBuffer(hdr), mem.SliceBuffer(data)}
}

func (c wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *getChunk:
		return m.unmarshal(data)
	case *putChunk:
		return m.unmarshal(data)
	}
	return c.std.Unmarshal(data, v)
}

// getChunk receives one GetResponse: Size and Length when the message has
// them, and its data appended to Buf.
type getChunk struct {
	Size, Length uint64
	Buf          []byte
}

func (g *getChunk) unmarshal(data mem.BufferSlice) error {
	g.Size, g.Length = 0, 0
	return walkFields(data, func(num protowire.Number, v uint64, r *mem.Reader) error {
		switch num {
		case getSizeField:
			g.Size = v
		case getLengthField:
			g.Length = v
			if v > MaxShardSize {
				return fmt.Errorf("get: a range of %d bytes", v)
			}
			if cap(g.Buf) == 0 {
				g.Buf = make([]byte, 0, v)
			}
		case getDataField:
			var err error
			g.Buf, err = readAppend(g.Buf, r, v)
			return err
		default:
			return skipField
		}
		return nil
	})
}

// putChunk receives one PutRequest: the first message's header fields when
// it has them, and its data appended to Buf.
type putChunk struct {
	ID     *shardpb.ShardId
	Length uint64
	Blake3 []byte
	Buf    []byte
}

func (p *putChunk) unmarshal(data mem.BufferSlice) error {
	p.ID, p.Length, p.Blake3 = nil, 0, nil
	return walkFields(data, func(num protowire.Number, v uint64, r *mem.Reader) error {
		switch num {
		case putIDField, putBlake3Field:
			b, err := readAppend(nil, r, v)
			if err != nil {
				return err
			}
			if num == putBlake3Field {
				p.Blake3 = b
				return nil
			}
			p.ID = &shardpb.ShardId{}
			return proto.Unmarshal(b, p.ID)
		case putLengthField:
			p.Length = v
			if cap(p.Buf) == 0 && v <= MaxShardSize {
				p.Buf = make([]byte, 0, min(v, 64<<20))
			}
		case putDataField:
			var err error
			p.Buf, err = readAppend(p.Buf, r, v)
			return err
		default:
			return skipField
		}
		return nil
	})
}

// skipField, returned by a walkFields callback for a bytes field, skips it.
var skipField = errors.New("skip")

// walkFields walks the protobuf fields of one message held in data. For a
// varint field, fn gets its value; for a bytes field, its length, with r
// positioned at its first byte: fn must consume exactly that many bytes or
// return skipField. Fixed-width fields are skipped; groups are refused.
func walkFields(data mem.BufferSlice, fn func(num protowire.Number, v uint64, r *mem.Reader) error) error {
	r := data.Reader()
	defer r.Close()
	for r.Remaining() > 0 {
		tag, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("blobstore: wire: bad tag: %w", err)
		}
		num, typ := protowire.DecodeTag(tag)
		if num <= 0 {
			return fmt.Errorf("blobstore: wire: bad field number %d", num)
		}
		switch typ {
		case protowire.VarintType:
			v, err := binary.ReadUvarint(r)
			if err != nil {
				return fmt.Errorf("blobstore: wire: field %d: %w", num, err)
			}
			if err := fn(num, v, r); err != nil && err != skipField {
				return err
			}
		case protowire.BytesType:
			n, err := binary.ReadUvarint(r)
			if err != nil {
				return fmt.Errorf("blobstore: wire: field %d: %w", num, err)
			}
			if n > uint64(r.Remaining()) {
				return fmt.Errorf("blobstore: wire: field %d of %d bytes in a message with %d left", num, n, r.Remaining())
			}
			switch err := fn(num, n, r); err {
			case nil:
			case skipField:
				if _, err := r.Discard(int(n)); err != nil {
					return err
				}
			default:
				return fmt.Errorf("blobstore: wire: field %d: %w", num, err)
			}
		case protowire.Fixed32Type:
			if _, err := r.Discard(4); err != nil {
				return err
			}
		case protowire.Fixed64Type:
			if _, err := r.Discard(8); err != nil {
				return err
			}
		default:
			return fmt.Errorf("blobstore: wire: field %d has wire type %d", num, typ)
		}
	}
	return nil
}

// readAppend reads n bytes of r onto the end of buf.
func readAppend(buf []byte, r *mem.Reader, n uint64) ([]byte, error) {
	l := len(buf)
	buf = growLen(buf, int(n))
	if _, err := io.ReadFull(r, buf[l:]); err != nil {
		return buf[:l], err
	}
	return buf, nil
}

// growLen extends buf by n bytes, reallocating (doubling) when its capacity
// is short.
func growLen(buf []byte, n int) []byte {
	if len(buf)+n <= cap(buf) {
		return buf[:len(buf)+n]
	}
	nb := make([]byte, len(buf)+n, max(2*cap(buf), len(buf)+n))
	copy(nb, buf)
	return nb
}
