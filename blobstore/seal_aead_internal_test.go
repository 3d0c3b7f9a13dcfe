package blobstore

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/strata-registry/strata/metastore/metastorepb"
)

func testSealer(t *testing.T) *AESGCMSealer {
	t.Helper()
	dk := make([]byte, DataKeySize)
	rand.Read(dk)
	s, err := NewAESGCMSealer(dk)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// No two segments get the same (subkey, nonce): over many segment ids drawn
// as Store draws them, under one data key, every derived subkey and every
// derived nonce is distinct; the derivation is a function of (data key, id)
// alone, so a reader finds the writer's; and another data key gives other
// subkeys for the same ids.
func TestSegmentNonceUniqueness(t *testing.T) {
	a, b := testSealer(t), testSealer(t)
	const n = 30_000
	keys := make(map[string]bool, 2*n)
	nonces := make(map[string]bool, n)
	for range n {
		id := newSegmentID()
		okm, err := a.segmentKey(id)
		if err != nil {
			t.Fatal(err)
		}
		k, nonce := string(okm[:aesgcmKeySize]), string(okm[aesgcmKeySize:])
		if len(nonce) != aesgcmNonceLen || keys[k] || nonces[nonce] {
			t.Fatalf("segment %s: subkey or nonce repeats", id)
		}
		keys[k], nonces[nonce] = true, true
		again, _ := a.segmentKey(id)
		if !bytes.Equal(again, okm) {
			t.Fatal("derivation is not deterministic")
		}
		other, _ := b.segmentKey(id)
		if keys[string(other[:aesgcmKeySize])] {
			t.Fatal("another data key derived a subkey already in use")
		}
		keys[string(other[:aesgcmKeySize])] = true
	}
	if _, err := a.segmentKey(""); err == nil {
		t.Fatal("derived a key for an empty segment id")
	}
}

// The same plaintext sealed as two segments, even at the same offset under
// the same key, gives unrelated ciphertexts.
func TestSealSamePlaintextTwice(t *testing.T) {
	s := testSealer(t)
	plain := bytes.Repeat([]byte("same bytes "), 1000)
	var out [][]byte
	for range 2 {
		seg := &metastorepb.Segment{Id: newSegmentID(), Length: uint64(len(plain)), K: 1}
		buf := make([]byte, len(plain), len(plain)+s.Overhead())
		copy(buf, plain)
		sealed, err := s.Seal(seg, 0, buf)
		if err != nil {
			t.Fatal(err)
		}
		if len(sealed) != len(plain)+aesgcmTagSize || &sealed[0] != &buf[0] {
			t.Fatal("not sealed in place")
		}
		if seg.Format != FormatAESGCM || seg.KeyId != s.KeyID() || len(seg.KeyId) != 32 {
			t.Fatalf("segment metadata %+v", seg)
		}
		out = append(out, sealed)
	}
	same := 0
	for i := range plain {
		if out[0][i] == out[1][i] {
			same++
		}
	}
	if same > len(plain)/64 { // about 1/256 expected by chance
		t.Fatalf("%d of %d bytes equal: keystreams related", same, len(plain))
	}
	if bytes.Contains(out[0], []byte("same bytes")) {
		t.Fatal("plaintext visible")
	}
}

func TestNewAESGCMSealerKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := NewAESGCMSealer(make([]byte, n)); err == nil {
			t.Fatalf("accepted a %d-byte key", n)
		}
	}
	// The key id identifies the key and nothing else.
	dk := make([]byte, DataKeySize)
	s1, _ := NewAESGCMSealer(dk)
	s2, _ := NewAESGCMSealer(dk)
	dk[0] = 1
	s3, _ := NewAESGCMSealer(dk)
	if s1.KeyID() != s2.KeyID() || s1.KeyID() == s3.KeyID() {
		t.Fatal("key ids do not identify keys")
	}
}
