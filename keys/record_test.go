package keys

import (
	"bytes"
	"errors"
	"testing"
)

func TestRecordRoundTripAndTamper(t *testing.T) {
	dk := NewDataKey()
	ad := []byte("strata/manifest\x00sha256:abc")
	pt := []byte(`{"annotations":{"marker":"secret"}}`)
	sealed, err := SealRecord(dk, ad, pt)
	if err != nil {
		t.Fatal(err)
	}
	if len(sealed) != len(pt)+RecordOverhead {
		t.Fatalf("sealed %d bytes, want %d", len(sealed), len(pt)+RecordOverhead)
	}
	if bytes.Contains(sealed, []byte("secret")) {
		t.Fatal("sealed record holds its plaintext")
	}
	got, err := OpenRecord(dk, ad, sealed)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("open = %q, %v", got, err)
	}
	again, _ := SealRecord(dk, ad, pt)
	if bytes.Equal(again, sealed) {
		t.Fatal("two seals of one record are identical: nonce reused")
	}
	// Every single flipped byte is refused.
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		if _, err := OpenRecord(dk, ad, bad); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("byte %d flipped: err = %v, want ErrDecrypt", i, err)
		}
	}
	if _, err := OpenRecord(dk, []byte("strata/manifest\x00sha256:other"), sealed); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("other associated data: err = %v", err)
	}
	if _, err := OpenRecord(NewDataKey(), ad, sealed); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("other key: err = %v", err)
	}
	if _, err := OpenRecord(dk, ad, sealed[:RecordOverhead-1]); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("truncated: err = %v", err)
	}
	if _, err := SealRecord(dk[:16], ad, pt); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("short key: err = %v", err)
	}
}
