package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
)

// Records: small pieces of customer content kept in the metadata (manifest
// bodies, their annotations, the hash state of an open upload) are sealed
// with a data key before they are proposed, so the Raft log, Pebble and
// snapshots only ever hold ciphertext.
//
// The format of a sealed record is
//
//	version (1 byte, 1) || nonce (12 bytes) || AES-256-GCM ciphertext and tag
//
// The nonce is random: a data key seals a handful of records (a manifest's
// body and annotations, the successive hash states of one upload), far below
// the 2^32 messages random 96-bit nonces allow under one key. The associated
// data binds what the record is and whose it is (its purpose and digest or
// upload id), so a sealed record cannot be moved onto another.

// RecordOverhead is how many bytes sealing adds to a record.
const RecordOverhead = 1 + 12 + 16

const recordVersion = 1

// SealRecord seals plaintext with the data key dk, binding ad.
func SealRecord(dk, ad, plaintext []byte) ([]byte, error) {
	aead, err := recordAEAD(dk)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+aead.NonceSize(), RecordOverhead+len(plaintext))
	out[0] = recordVersion
	rand.Read(out[1:]) // never fails (crypto/rand since Go 1.24)
	return aead.Seal(out, out[1:1+aead.NonceSize()], plaintext, ad), nil
}

// OpenRecord opens a record sealed by SealRecord with the same data key and
// associated data. Anything altered, truncated, or sealed for another
// purpose or under another key is refused with ErrDecrypt.
func OpenRecord(dk, ad, sealed []byte) ([]byte, error) {
	aead, err := recordAEAD(dk)
	if err != nil {
		return nil, err
	}
	if len(sealed) < RecordOverhead {
		return nil, fmt.Errorf("%w: sealed record of %d bytes is shorter than its %d-byte overhead", ErrDecrypt, len(sealed), RecordOverhead)
	}
	if sealed[0] != recordVersion {
		return nil, fmt.Errorf("%w: sealed record of unknown version %d", ErrDecrypt, sealed[0])
	}
	n := aead.NonceSize()
	pt, err := aead.Open(nil, sealed[1:1+n], sealed[1+n:], ad)
	if err != nil {
		return nil, fmt.Errorf("%w: sealed record does not authenticate", ErrDecrypt)
	}
	return pt, nil
}

func recordAEAD(dk []byte) (cipher.AEAD, error) {
	if len(dk) != DataKeySize {
		return nil, fmt.Errorf("%w: data key of %d bytes, want %d", ErrInvalidKey, len(dk), DataKeySize)
	}
	block, err := aes.NewCipher(dk)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
