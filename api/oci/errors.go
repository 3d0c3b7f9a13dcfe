package oci

import (
	"errors"
	"strconv"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// them (with fmt.Errorf("%w: ...")), so callers map an error to an OCI error
// code or HTTP status with errors.Is and show err.Error() as the message.
var (
	// ErrNameInvalid: a repository name does not match the distribution-spec
	// <name> grammar (OCI code NAME_INVALID).
	ErrNameInvalid = errors.New("oci: invalid repository name")

	// ErrTagInvalid: a tag does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
	// (OCI code TAG_INVALID, or MANIFEST_INVALID for a bad reference).
	ErrTagInvalid = errors.New("oci: invalid tag")

	// ErrDigestInvalid: a digest is malformed, or is a sha256/sha512 digest
	// whose encoded part is not lowercase hex of the right length
	// (OCI code DIGEST_INVALID).
	ErrDigestInvalid = errors.New("oci: invalid digest")

	// ErrDigestUnsupported: a digest is well formed (image-spec grammar) but
	// uses an algorithm other than sha256 or sha512 (OCI code
	// DIGEST_INVALID / UNSUPPORTED, at the caller's choice).
	ErrDigestUnsupported = errors.New("oci: unsupported digest algorithm")

	// ErrRangeInvalid: a Range request header is malformed, uses a unit other
	// than bytes, or asks for more than one range. RFC 9110 lets the server
	// ignore such a header: serve the whole blob with 200.
	ErrRangeInvalid = errors.New("oci: invalid range")

	// ErrRangeNotSatisfiable: a well-formed single Range cannot be satisfied
	// (first byte at or beyond the blob size, suffix length 0, or an empty
	// blob). Answer 416 with "Content-Range: bytes */<size>".
	ErrRangeNotSatisfiable = errors.New("oci: range not satisfiable")

	// ErrContentRangeInvalid: a blob-upload PATCH/PUT Content-Range header is
	// malformed (answer 416 Requested Range Not Satisfiable, as the
	// distribution-spec requires for unusable chunk ranges, or 400).
	ErrContentRangeInvalid = errors.New("oci: invalid content range")

	// ErrManifestInvalid: a manifest is malformed or breaks a rule of the
	// image-spec (OCI code MANIFEST_INVALID).
	ErrManifestInvalid = errors.New("oci: invalid manifest")

	// ErrManifestUnsupported: a manifest's media type is not one of the
	// supported types (for example Docker schema1). OCI code
	// MANIFEST_INVALID (or UNSUPPORTED), 400/415 at the caller's choice.
	ErrManifestUnsupported = errors.New("oci: unsupported manifest media type")

	// ErrManifestTooLarge: a manifest body exceeds MaxManifestSize
	// (answer 413 Payload Too Large, OCI code SIZE_INVALID or
	// MANIFEST_INVALID).
	ErrManifestTooLarge = errors.New("oci: manifest too large")
)

// maxQuoted bounds how much of a client-supplied string is echoed back in an
// error message.
const maxQuoted = 128

// quote returns s quoted for an error message, truncated to maxQuoted bytes
// so a hostile input cannot blow up logs or responses.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:maxQuoted]) + "..."
}
