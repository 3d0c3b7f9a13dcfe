package oci_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/strata-registry/strata/api/oci"
)

var (
	hex64  = "6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"
	hex128 = hex64 + hex64
)

func TestParseDigest(t *testing.T) {
	tests := []struct {
		in   string
		want error // nil, ErrDigestInvalid or ErrDigestUnsupported
	}{
		{"sha256:" + hex64, nil},
		{"sha512:" + hex128, nil},

		// sha256/sha512 with a bad encoded part
		{"sha256:" + strings.ToUpper(hex64), oci.ErrDigestInvalid},
		{"sha256:" + hex64[:63] + "A", oci.ErrDigestInvalid},
		{"sha256:" + hex64[:63], oci.ErrDigestInvalid},
		{"sha256:" + hex64 + "0", oci.ErrDigestInvalid},
		{"sha256:" + hex128, oci.ErrDigestInvalid},
		{"sha512:" + hex64, oci.ErrDigestInvalid},
		{"sha256:" + hex64[:62] + "zz", oci.ErrDigestInvalid},
		{"sha256:", oci.ErrDigestInvalid},
		{"sha256", oci.ErrDigestInvalid},
		{"sha256:" + hex64 + ":", oci.ErrDigestInvalid},
		{"sha256: " + hex64, oci.ErrDigestInvalid},
		{" sha256:" + hex64, oci.ErrDigestInvalid},

		// malformed algorithm
		{"", oci.ErrDigestInvalid},
		{":" + hex64, oci.ErrDigestInvalid},
		{"SHA256:" + hex64, oci.ErrDigestInvalid},
		{"sha-:" + hex64, oci.ErrDigestInvalid},
		{"-sha:" + hex64, oci.ErrDigestInvalid},
		{"a..b:" + hex64, oci.ErrDigestInvalid},
		{"sha 256:" + hex64, oci.ErrDigestInvalid},
		{"md5:d41d8cd98f00b204e9800998ecf8427e!", oci.ErrDigestInvalid}, // bad encoded

		// well formed, other algorithms
		{"md5:d41d8cd98f00b204e9800998ecf8427e", oci.ErrDigestUnsupported},
		{"sha384:" + hex64 + hex64[:32], oci.ErrDigestUnsupported},
		{"blake3:" + hex64, oci.ErrDigestUnsupported},
		{"sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", oci.ErrDigestUnsupported},
		{"multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", oci.ErrDigestUnsupported},
		{"a.b_c-d+e:=", oci.ErrDigestUnsupported},
	}
	for _, tt := range tests {
		d, err := oci.ParseDigest(tt.in)
		switch {
		case tt.want == nil && err != nil:
			t.Errorf("ParseDigest(%q) = %v, want success", tt.in, err)
		case tt.want == nil && string(d) != tt.in:
			t.Errorf("ParseDigest(%q) = %q, want the input back", tt.in, d)
		case tt.want != nil && !errors.Is(err, tt.want):
			t.Errorf("ParseDigest(%q) = %q, %v; want %v", tt.in, d, err, tt.want)
		case tt.want != nil && d != "":
			t.Errorf("ParseDigest(%q) returned %q with an error", tt.in, d)
		}
		if errors.Is(err, oci.ErrDigestInvalid) && errors.Is(err, oci.ErrDigestUnsupported) {
			t.Errorf("ParseDigest(%q) wraps both sentinels", tt.in)
		}
	}
}

func TestParseDigestResult(t *testing.T) {
	d, err := oci.ParseDigest("sha512:" + hex128)
	if err != nil {
		t.Fatal(err)
	}
	if d.Algorithm().String() != "sha512" || d.Encoded() != hex128 {
		t.Errorf("got algorithm %q encoded %q", d.Algorithm(), d.Encoded())
	}
	if err := d.Validate(); err != nil {
		t.Errorf("go-digest rejects %q: %v", d, err)
	}
}

func TestIsDigest(t *testing.T) {
	for ref, want := range map[string]bool{
		"latest":              false,
		"v1.0":                false,
		"":                    false,
		"sha256:" + hex64:     true,
		"sha256:":             true, // a digest, if an invalid one
		"md5:abc":             true,
		"weird:tag-like-name": true,
	} {
		if got := oci.IsDigest(ref); got != want {
			t.Errorf("IsDigest(%q) = %v, want %v", ref, got, want)
		}
	}
}
