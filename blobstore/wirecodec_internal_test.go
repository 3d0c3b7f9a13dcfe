package blobstore

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/strata-registry/strata/blobstore/shardpb"
)

// split cuts b into buffers of random sizes, as gRPC hands a message over.
func split(r *rand.Rand, b []byte) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		n := min(len(b), 1+r.IntN(70000))
		s = append(s, mem.SliceBuffer(bytes.Clone(b[:n])))
		b = b[n:]
	}
	return s
}

func TestWireCodecIsTheProcessCodec(t *testing.T) {
	if _, ok := encoding.GetCodecV2("proto").(wireCodec); !ok {
		t.Fatalf("the registered proto codec is %T, want wireCodec", encoding.GetCodecV2("proto"))
	}
}

// What wireCodec sends is standard protobuf, and it reads standard protobuf,
// for every data size around the zero-copy threshold.
func TestWireCodecInteroperates(t *testing.T) {
	c := wireCodec{std: encoding.GetCodecV2("proto")}
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, zeroCopyMin - 1, zeroCopyMin, 1 << 20} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		// GetResponse, both directions.
		get := &shardpb.GetResponse{Size: 3 << 20, Length: uint64(n), Data: data}
		out, err := c.Marshal(get)
		if err != nil {
			t.Fatal(err)
		}
		var back shardpb.GetResponse
		if err := proto.Unmarshal(out.Materialize(), &back); err != nil || !proto.Equal(&back, get) {
			t.Fatalf("%d bytes: wireCodec's GetResponse read back by proto: %v, equal %v", n, err, proto.Equal(&back, get))
		}
		std, err := proto.Marshal(get)
		if err != nil {
			t.Fatal(err)
		}
		chunk := getChunk{Buf: []byte("before")}
		if err := c.Unmarshal(split(r, std), &chunk); err != nil {
			t.Fatal(err)
		}
		if chunk.Size != get.Size || chunk.Length != get.Length || !bytes.Equal(chunk.Buf, append([]byte("before"), data...)) {
			t.Fatalf("%d bytes: getChunk = %d, %d, %d bytes", n, chunk.Size, chunk.Length, len(chunk.Buf))
		}

		// PutRequest, both directions, with and without the header fields.
		for _, put := range []*shardpb.PutRequest{
			{Id: &shardpb.ShardId{Segment: "c0ffee", Index: 4}, Length: 7 << 20, Blake3: bytes.Repeat([]byte{9}, 32), Data: data},
			{Data: data},
		} {
			out, err := c.Marshal(put)
			if err != nil {
				t.Fatal(err)
			}
			var back shardpb.PutRequest
			if err := proto.Unmarshal(out.Materialize(), &back); err != nil || !proto.Equal(&back, put) {
				t.Fatalf("%d bytes: wireCodec's PutRequest read back by proto: %v", n, err)
			}
			std, err := proto.Marshal(put)
			if err != nil {
				t.Fatal(err)
			}
			pc := putChunk{Buf: []byte("x")}
			if err := c.Unmarshal(split(r, std), &pc); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(pc.ID, put.Id) && (pc.ID != nil || put.Id != nil) || pc.Length != put.Length ||
				!bytes.Equal(pc.Blake3, put.Blake3) || !bytes.Equal(pc.Buf, append([]byte("x"), data...)) {
				t.Fatalf("%d bytes: putChunk = %v, %d, %x, %d bytes", n, pc.ID, pc.Length, pc.Blake3, len(pc.Buf))
			}
		}
	}
	// Other messages go through the standard codec.
	list := &shardpb.ListResponse{Shards: []*shardpb.ShardInfo{{Id: &shardpb.ShardId{Segment: "a", Index: 1}, Size: 5}}}
	out, err := c.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	var back shardpb.ListResponse
	if err := c.Unmarshal(out, &back); err != nil || !proto.Equal(&back, list) {
		t.Fatalf("ListResponse through wireCodec: %v", err)
	}
}

// Fields the reader does not know, in any order, are skipped.
func TestWireCodecSkipsUnknownFields(t *testing.T) {
	var b []byte
	b = protowire.AppendTag(b, 9, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("future"))
	b = protowire.AppendTag(b, getDataField, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("data"))
	b = protowire.AppendTag(b, 10, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 1)
	b = protowire.AppendTag(b, 11, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 1)
	b = protowire.AppendTag(b, getLengthField, protowire.VarintType)
	b = protowire.AppendVarint(b, 4)
	var g getChunk
	if err := (wireCodec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &g); err != nil || g.Length != 4 || string(g.Buf) != "data" {
		t.Fatalf("getChunk = %+v, %v", g, err)
	}
}

// Damaged messages are errors, never panics or over-reads.
func TestWireCodecRefusesDamage(t *testing.T) {
	full, err := proto.Marshal(&shardpb.PutRequest{Id: &shardpb.ShardId{Segment: "s", Index: 1}, Length: 100, Blake3: make([]byte, 32), Data: make([]byte, 100)})
	if err != nil {
		t.Fatal(err)
	}
	for cut := 1; cut < len(full); cut++ {
		var pc putChunk
		err := (wireCodec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(full[:cut])}, &pc)
		// A cut can fall between two fields, leaving a shorter valid message.
		if err == nil && len(pc.Buf) == 100 {
			t.Fatalf("a message cut at %d of %d bytes read as whole", cut, len(full))
		}
	}
	for _, b := range [][]byte{
		{0x80},                   // a tag cut short
		{0x00, 0x01},             // field number 0
		{0x1b},                   // a group (wire type 3)
		{0x1a, 0xff, 0xff, 0x7f}, // a bytes field longer than the message
		protowire.AppendVarint(protowire.AppendTag(nil, getLengthField, protowire.VarintType), MaxShardSize+1),
	} {
		var g getChunk
		if err := (wireCodec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &g); err == nil {
			t.Errorf("%x: no error", b)
		}
	}
}
