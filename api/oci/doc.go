// Package oci parses and validates everything an OCI distribution client
// sends to the registry: repository names, tags, digests, Range and
// Content-Range headers, and manifests. It is pure: no HTTP handlers, no
// storage, no I/O. The checks on names, tags, digests and ranges are
// hand-written and do not allocate on success, since they run on every
// request.
//
// The rules follow the OCI distribution-spec (spec.md) and image-spec
// (descriptor.md, manifest.md, image-index.md). Where the specs leave a
// choice, the function documentation says what was chosen and why.
//
// # Errors
//
// Every error wraps exactly one of the sentinel errors (ErrNameInvalid,
// ErrTagInvalid, ErrDigestInvalid, ErrDigestUnsupported, ErrRangeInvalid,
// ErrRangeNotSatisfiable, ErrContentRangeInvalid, ErrManifestInvalid,
// ErrManifestUnsupported, ErrManifestTooLarge) with a detail message, so
// the HTTP layer maps it with errors.Is to an OCI error code and status and
// returns err.Error() as the message. Client-supplied strings quoted in
// messages are truncated to 128 bytes.
//
// # Notes for the HTTP layer
//
//   - Manifest references: IsDigest(ref) decides; then ParseDigest or
//     ValidateTag.
//   - Blob GET: ParseRange. ErrRangeInvalid (includes multiple ranges):
//     ignore the header and serve 200 with the whole blob.
//     ErrRangeNotSatisfiable: 416 with "Content-Range: bytes */<size>".
//   - Upload PATCH/PUT: ParseContentRange only if the header is present (a
//     PATCH without it is a streamed chunk); then check start == bytes
//     received so far, else 416.
//   - Upload responses: "Range: " + FormatRange(0, size-1), which is "0-0"
//     for an empty upload (see FormatRange).
//   - Manifest PUT: ParseManifest; check that Blobs (and, as policy,
//     Manifests) exist; store the body unchanged and serve it with
//     Manifest.MediaType; for referrers use Subject, ArtifactType and
//     Annotations as documented on Manifest.
package oci
