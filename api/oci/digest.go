package oci

import (
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Digest algorithms Strata accepts.
const (
	AlgorithmSHA256 = "sha256"
	AlgorithmSHA512 = "sha512"
)

// ParseDigest parses and validates a digest from a client (URL path, query
// parameter or manifest descriptor).
//
// The string must match the image-spec digest grammar
//
//	algorithm ":" encoded
//	algorithm := [a-z0-9]+ ([+._-] [a-z0-9]+)*
//	encoded   := [a-zA-Z0-9=_-]+
//
// and only two algorithms are supported: "sha256" with exactly 64 and
// "sha512" with exactly 128 lowercase hex characters. A well-formed digest
// using any other algorithm (md5, sha384, blake3, ...) returns an error
// wrapping ErrDigestUnsupported; anything else (including uppercase hex,
// a wrong length, "sha256:" alone or an uppercase algorithm) returns an
// error wrapping ErrDigestInvalid.
//
// On success the result is s itself, converted; ParseDigest does not
// allocate then.
func ParseDigest(s string) (digest.Digest, error) {
	reason, unsupported := checkDigest(s)
	switch {
	case unsupported:
		return "", fmt.Errorf("%w: %s: %s", ErrDigestUnsupported, quote(s), reason)
	case reason != "":
		return "", fmt.Errorf("%w: %s: %s", ErrDigestInvalid, quote(s), reason)
	}
	return digest.Digest(s), nil
}

// IsDigest reports whether a manifest reference (the <reference> in
// /v2/<name>/manifests/<reference>) is meant as a digest rather than a tag:
// it is if it contains ':', which no valid tag does. It does not validate;
// call ParseDigest or ValidateTag next.
func IsDigest(ref string) bool {
	return strings.IndexByte(ref, ':') >= 0
}

// checkDigest returns "" if s is a supported, valid digest. Otherwise it
// returns the reason, and unsupported is true when s is well formed but its
// algorithm is not sha256 or sha512.
func checkDigest(s string) (reason string, unsupported bool) {
	alg, enc, ok := strings.Cut(s, ":")
	if !ok {
		if s == "" {
			return "digest is empty", false
		}
		return `missing ":" between algorithm and encoded part`, false
	}
	if r := checkAlgorithm(alg); r != "" {
		return r, false
	}
	if enc == "" {
		return "encoded part is empty", false
	}
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '=' || c == '_' || c == '-') {
			return fmt.Sprintf("character %q is not allowed in the encoded part", c), false
		}
	}
	var want int
	switch alg {
	case AlgorithmSHA256:
		want = 64
	case AlgorithmSHA512:
		want = 128
	default:
		return fmt.Sprintf("algorithm %s is not supported (only sha256 and sha512)", quote(alg)), true
	}
	if len(enc) != want {
		return fmt.Sprintf("%s needs %d hex characters, got %d", alg, want, len(enc)), false
	}
	if !isLowerHex(enc) {
		return "encoded part must be lowercase hex", false
	}
	return "", false
}

// checkAlgorithm validates alg against [a-z0-9]+([+._-][a-z0-9]+)*.
func checkAlgorithm(alg string) string {
	if alg == "" {
		return "algorithm is empty"
	}
	sep := true // at start, or just after a separator: need [a-z0-9]
	for i := 0; i < len(alg); i++ {
		c := alg[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			sep = false
		case c == '+' || c == '.' || c == '_' || c == '-':
			if sep {
				return fmt.Sprintf("algorithm %s: separator %q must follow [a-z0-9]", quote(alg), c)
			}
			sep = true
		default:
			return fmt.Sprintf("algorithm %s: character %q is not allowed (only [a-z0-9+._-])", quote(alg), c)
		}
	}
	if sep {
		return fmt.Sprintf("algorithm %s must end with [a-z0-9]", quote(alg))
	}
	return ""
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
