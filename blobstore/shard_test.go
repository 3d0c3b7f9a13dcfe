package blobstore

import (
	"bytes"
	"errors"
	"testing"
)

func TestShardHeaderRoundTrip(t *testing.T) {
	h := shardHeader{Index: 7, Length: 1 << 40, Sum: [32]byte{1, 2, 3, 31: 9}}
	b := encodeShardHeader(h)
	got, err := decodeShardHeader(b[:])
	if err != nil || got != h {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", h, got, err)
	}
	for i := range b {
		bad := b
		bad[i] ^= 0x10
		if _, err := decodeShardHeader(bad[:]); !errors.Is(err, ErrShardCorrupt) {
			t.Errorf("flipping header byte %d: %v, want ErrShardCorrupt", i, err)
		}
	}
}

func FuzzDecodeShardHeader(f *testing.F) {
	good := encodeShardHeader(shardHeader{Index: 1, Length: 5})
	f.Add(good[:])
	f.Add([]byte("STSH"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeShardHeader(b)
		if err != nil {
			if !errors.Is(err, ErrShardCorrupt) {
				t.Fatalf("error %v does not wrap ErrShardCorrupt", err)
			}
			return
		}
		again := encodeShardHeader(h)
		if !bytes.Equal(again[:], b[:shardHeaderSize]) {
			t.Fatal("a header that decodes does not re-encode to the same bytes")
		}
	})
}
