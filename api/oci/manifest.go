package oci

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/bits"
	"strings"
	"unicode/utf8"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// MaxManifestSize is the largest manifest body ParseManifest accepts (4 MiB,
// the size the distribution-spec says registries should support). The
// caller should also limit how much it reads (http.MaxBytesReader with
// MaxManifestSize+1) and answer 413 for ErrManifestTooLarge.
const MaxManifestSize = 4 << 20

// Manifest media types ParseManifest supports.
const (
	MediaTypeImageManifest      = v1.MediaTypeImageManifest // application/vnd.oci.image.manifest.v1+json
	MediaTypeImageIndex         = v1.MediaTypeImageIndex    // application/vnd.oci.image.index.v1+json
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// Media types with special handling.
const (
	// Docker schema1, rejected with ErrManifestUnsupported.
	mediaTypeDockerSchema1       = "application/vnd.docker.distribution.manifest.v1+json"
	mediaTypeDockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	// Docker foreign layer: fetched from its urls, never pushed.
	mediaTypeDockerForeignLayer = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// Manifest is what the registry needs to know about a pushed manifest. The
// registry stores and serves the body byte for byte; Manifest is only used
// to check references and to index it.
type Manifest struct {
	// MediaType is the effective media type, one of the four MediaType*
	// constants (canonical spelling). Serve the manifest with it as
	// Content-Type and use it as the referrers descriptor's mediaType.
	MediaType string

	// SchemaVersion is always 2.
	SchemaVersion int

	// Blobs lists, for image manifests, the digests of the config and then
	// the layers, without duplicates, that must exist in the repository
	// before the manifest is accepted (else MANIFEST_BLOB_UNKNOWN). Layers
	// that are non-distributable (media type containing ".nondistributable."
	// or the Docker foreign layer type) or that carry urls are left out:
	// clients fetch them elsewhere. Empty for indexes.
	Blobs []string

	// Manifests lists, for indexes and manifest lists, the digests of the
	// child manifests, without duplicates. Whether they must exist is the
	// caller's policy (the spec does not require it; most registries do
	// require it, except that OCI indexes may point at blobs). Empty for
	// image manifests.
	Manifests []string

	// Subject is the digest of the subject descriptor of an OCI image
	// manifest or index, or "". When set, the manifest is a referrer of
	// Subject: answer the PUT with "OCI-Subject: <Subject>" and list it in
	// GET /v2/<name>/referrers/<Subject>. Docker types have no subject; a
	// "subject" field there is an unknown field and is ignored.
	Subject string

	// ArtifactType is the artifactType the referrers API must report for
	// this manifest (distribution-spec, "Listing Referrers"): the
	// manifest's artifactType if present and non-empty; else, for image
	// manifests, the config descriptor's mediaType; else (indexes) "",
	// meaning the referrers descriptor omits artifactType. For Docker types
	// (which have no artifactType field) it is config.mediaType for a
	// manifest and "" for a list.
	ArtifactType string

	// Annotations are the manifest's top-level annotations (OCI types
	// only), which the referrers descriptor must carry. nil if absent or
	// empty.
	Annotations map[string]string
}

// IsIndex reports whether m is an OCI image index or a Docker manifest list.
func (m *Manifest) IsIndex() bool {
	return m.MediaType == MediaTypeImageIndex || m.MediaType == MediaTypeDockerManifestList
}

// ParseManifest parses and validates a manifest pushed with PUT
// /v2/<name>/manifests/<reference>. contentType is the request's
// Content-Type header (parameters such as "; charset=utf-8" are ignored).
//
// The media type is decided as follows. If the body has a non-empty
// "mediaType" and Content-Type is set to something other than a generic type
// ("application/json", "application/octet-stream"), the two must be equal
// (case-insensitively), else ErrManifestInvalid: the spec requires clients
// to send the body's mediaType as Content-Type. The body's mediaType wins,
// then a non-generic Content-Type. If neither gives a type, the structure
// decides: "manifests" means an OCI index, "config" or "layers" an OCI image
// manifest, schemaVersion 1 a Docker schema1 manifest. Supported types are
// OCI image manifest and index and Docker schema2 manifest and manifest
// list; anything else, notably Docker schema1, returns ErrManifestUnsupported.
//
// Rules (violations return ErrManifestInvalid naming the field, such as
// "layers[2].digest"):
//   - the body is valid UTF-8 and a single JSON object; schemaVersion is the
//     integer 2;
//   - the keys Strata interprets (schemaVersion, mediaType, config, layers,
//     manifests, subject, artifactType, annotations; in descriptors
//     mediaType, digest, size, urls, data) must not be duplicated nor
//     appear in another letter case ("Layers"), which other JSON decoders
//     would read differently; other fields are allowed and ignored; a null
//     value counts as absent;
//   - image manifests need "config" and must not have "manifests"; "layers"
//     may be absent or empty (OCI 1.1 artifacts); indexes must not have
//     "config" or "layers" (the ambiguity behind CVE-2021-41190);
//   - every descriptor (config, layers, manifests, subject) has a mediaType
//     of RFC 6838 form type/subtype, a digest accepted by ParseDigest (so
//     sha256 or sha512 only, even for layers fetched from urls), and an
//     integer size >= 0; urls, if present, is an array of strings; data, if
//     present, is standard padded base64 whose decoded bytes have exactly
//     the descriptor's size and digest;
//   - in OCI types, artifactType is a string of RFC 6838 form if non-empty
//     and annotations is an object of strings.
//
// The image-spec requirement that artifactType be set when config.mediaType
// is the empty type is not enforced (existing tools omit it).
//
// A body larger than MaxManifestSize returns ErrManifestTooLarge.
func ParseManifest(contentType string, body []byte) (*Manifest, error) {
	if len(body) > MaxManifestSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrManifestTooLarge, len(body), MaxManifestSize)
	}
	m, err := parseManifest(contentType, body)
	if err != nil {
		if _, ok := err.(*fieldError); ok {
			return nil, fmt.Errorf("%w: %v", ErrManifestInvalid, err)
		}
		return nil, err
	}
	return m, nil
}

// Top-level keys ParseManifest interprets, in rawManifest.fields order.
const (
	keySchemaVersion = iota
	keyMediaType
	keyConfig
	keyLayers
	keyManifests
	keySubject
	keyArtifactType
	keyAnnotations
	numTopKeys
)

var topKeys = []string{"schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "artifactType", "annotations"}

// rawManifest holds the raw JSON of the interpreted top-level members
// (sub-slices of the body; nil when absent or null).
type rawManifest struct {
	fields [numTopKeys][]byte
}

func (r *rawManifest) has(k int) bool { return r.fields[k] != nil }

func parseManifest(contentType string, body []byte) (*Manifest, error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, fieldErrorf("", "body is empty")
	}
	if trimmed[0] != '{' {
		return nil, fieldErrorf("", "manifest must be a JSON object")
	}
	if !utf8.Valid(body) {
		return nil, fieldErrorf("", "body is not valid UTF-8")
	}
	var r rawManifest
	var seen [numTopKeys]bool
	s := &jsonReader{b: body}
	_, err := s.object(func(key []byte) error {
		k := -1
		for i, name := range topKeys {
			if string(key) == name {
				k = i
				break
			}
		}
		if k < 0 {
			if n := foldMatch(key, topKeys); n != "" {
				return fieldErrorf(string(key), fmt.Sprintf("field name differs from %q only in case; rejected as ambiguous", n))
			}
			_, err := s.value()
			return err
		}
		if seen[k] {
			return fieldErrorf(string(key), "duplicate field")
		}
		seen[k] = true
		raw, err := s.value()
		if err != nil {
			return err
		}
		if !isNull(raw) {
			r.fields[k] = raw
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if s.peek() != 0 || s.i < len(body) {
		return nil, fieldErrorf("", "malformed JSON: data after the top-level object")
	}

	mt, err := resolveMediaType(contentType, &r)
	if err != nil {
		return nil, err
	}
	sv, present, err := jsonInt(r.fields[keySchemaVersion])
	switch {
	case err != nil:
		return nil, within(err, "schemaVersion")
	case !present:
		return nil, fieldErrorf("schemaVersion", "required")
	case sv != 2:
		return nil, fieldErrorf("schemaVersion", fmt.Sprintf("must be 2, not %d", sv))
	}

	m := &Manifest{MediaType: mt, SchemaVersion: 2}
	isOCI := mt == MediaTypeImageManifest || mt == MediaTypeImageIndex
	if m.IsIndex() {
		err = parseIndex(m, &r)
	} else {
		err = parseImageManifest(m, &r)
	}
	if err != nil {
		return nil, err
	}
	if !isOCI {
		return m, nil
	}

	if raw := r.fields[keySubject]; raw != nil {
		var d descriptor
		if err := parseDescriptor(&jsonReader{b: raw}, &d); err != nil {
			return nil, within(err, "subject")
		}
		m.Subject = d.digest
	}
	at, _, err := jsonString(r.fields[keyArtifactType])
	if err != nil {
		return nil, within(err, "artifactType")
	}
	if at != "" {
		if msg := checkMediaType(at); msg != "" {
			return nil, fieldErrorf("artifactType", msg)
		}
		m.ArtifactType = at
	}
	if raw := r.fields[keyAnnotations]; raw != nil {
		if m.Annotations, err = parseAnnotations(raw); err != nil {
			return nil, within(err, "annotations")
		}
	}
	return m, nil
}

// resolveMediaType decides the effective media type (see ParseManifest).
func resolveMediaType(contentType string, r *rawManifest) (string, error) {
	ct, _, _ := strings.Cut(contentType, ";")
	ct = trimOWS(ct)
	if strings.EqualFold(ct, "application/json") || strings.EqualFold(ct, "application/octet-stream") {
		ct = ""
	}
	bodyMT, _, err := jsonString(r.fields[keyMediaType])
	if err != nil {
		return "", within(err, "mediaType")
	}
	declared := bodyMT
	switch {
	case bodyMT != "" && ct != "" && !strings.EqualFold(bodyMT, ct):
		return "", fieldErrorf("mediaType", fmt.Sprintf("%s does not match the Content-Type %s", quote(bodyMT), quote(ct)))
	case declared == "":
		declared = ct
	}
	if declared != "" {
		for _, t := range [...]string{MediaTypeImageManifest, MediaTypeImageIndex, MediaTypeDockerManifest, MediaTypeDockerManifestList} {
			if strings.EqualFold(declared, t) {
				return t, nil
			}
		}
		if strings.EqualFold(declared, mediaTypeDockerSchema1) || strings.EqualFold(declared, mediaTypeDockerSchema1Signed) {
			return "", fmt.Errorf("%w: %s: Docker schema1 manifests are not supported, push schema2 or OCI", ErrManifestUnsupported, declared)
		}
		return "", fmt.Errorf("%w: %s", ErrManifestUnsupported, quote(declared))
	}
	// No declared type: decide by structure.
	if sv, _, err := jsonInt(r.fields[keySchemaVersion]); err == nil && sv == 1 {
		return "", fmt.Errorf("%w: schemaVersion 1 (Docker schema1) manifests are not supported", ErrManifestUnsupported)
	}
	index := r.has(keyManifests)
	image := r.has(keyConfig) || r.has(keyLayers)
	switch {
	case index && image:
		return "", fieldErrorf("", `cannot tell an image manifest ("config", "layers") from an index ("manifests"); set mediaType`)
	case index:
		return MediaTypeImageIndex, nil
	case image:
		return MediaTypeImageManifest, nil
	}
	return "", fieldErrorf("", "cannot determine the manifest type: no mediaType field, no manifest Content-Type, and no config, layers or manifests")
}

func parseImageManifest(m *Manifest, r *rawManifest) error {
	if r.has(keyManifests) {
		return fieldErrorf("manifests", "not allowed in an image manifest")
	}
	raw := r.fields[keyConfig]
	if raw == nil {
		return fieldErrorf("config", "required")
	}
	var config descriptor
	if err := parseDescriptor(&jsonReader{b: raw}, &config); err != nil {
		return within(err, "config")
	}
	var blobs uniqueList
	blobs.add(config.digest)
	if raw := r.fields[keyLayers]; raw != nil {
		s := &jsonReader{b: raw}
		var d descriptor
		_, err := s.array(func(int) error {
			d = descriptor{}
			if err := parseDescriptor(s, &d); err != nil {
				return err
			}
			if d.urls == 0 && !isNonDistributable(d.mediaType) {
				blobs.add(d.digest)
			}
			return nil
		})
		if err != nil {
			return within(err, "layers")
		}
	}
	m.Blobs = blobs.list
	// Referrers artifactType; an OCI artifactType field overrides it later.
	m.ArtifactType = config.mediaType
	return nil
}

func parseIndex(m *Manifest, r *rawManifest) error {
	switch {
	case r.has(keyConfig):
		return fieldErrorf("config", "not allowed in an index")
	case r.has(keyLayers):
		return fieldErrorf("layers", "not allowed in an index")
	}
	raw := r.fields[keyManifests]
	if raw == nil {
		return nil
	}
	var children uniqueList
	s := &jsonReader{b: raw}
	var d descriptor
	_, err := s.array(func(int) error {
		d = descriptor{}
		if err := parseDescriptor(s, &d); err != nil {
			return err
		}
		children.add(d.digest)
		return nil
	})
	if err != nil {
		return within(err, "manifests")
	}
	m.Manifests = children.list
	return nil
}

// isNonDistributable reports whether a layer media type marks content that
// registries must not be expected to hold.
func isNonDistributable(mediaType string) bool {
	return strings.Contains(mediaType, ".nondistributable.") || mediaType == mediaTypeDockerForeignLayer
}

// descriptor holds the interpreted fields of a validated descriptor.
type descriptor struct {
	mediaType string
	digest    string
	size      int64
	urls      int // number of urls
}

// Descriptor keys ParseManifest interprets.
const (
	dkMediaType = 1 << iota
	dkDigest
	dkSize
	dkURLs
	dkData
)

var descKeys = []string{"mediaType", "digest", "size", "urls", "data"}

// parseDescriptor reads the next value of s as a descriptor into d and
// validates it.
func parseDescriptor(s *jsonReader, d *descriptor) error {
	var seen int
	var data []byte // raw JSON string
	var hasDigest, hasSize, hasMediaType bool
	null, err := s.object(func(key []byte) error {
		var bit int
		switch string(key) {
		case "mediaType":
			bit = dkMediaType
		case "digest":
			bit = dkDigest
		case "size":
			bit = dkSize
		case "urls":
			bit = dkURLs
		case "data":
			bit = dkData
		default:
			if n := foldMatch(key, descKeys); n != "" {
				return fieldErrorf(string(key), fmt.Sprintf("field name differs from %q only in case; rejected as ambiguous", n))
			}
			_, err := s.value()
			return err
		}
		if seen&bit != 0 {
			return fieldErrorf(string(key), "duplicate field")
		}
		seen |= bit
		if bit == dkURLs {
			_, err := s.array(func(int) error {
				raw, err := s.value()
				if err != nil {
					return err
				}
				if raw[0] != '"' {
					return fieldErrorf("", "must be a string")
				}
				d.urls++
				return nil
			})
			return within(err, "urls")
		}
		raw, err := s.value()
		if err != nil {
			return err
		}
		switch bit {
		case dkMediaType:
			d.mediaType, hasMediaType, err = jsonString(raw)
		case dkDigest:
			d.digest, hasDigest, err = jsonString(raw)
		case dkSize:
			d.size, hasSize, err = jsonInt(raw)
		case dkData:
			switch {
			case isNull(raw):
			case raw[0] != '"':
				err = fieldErrorf("", "must be a string")
			default:
				data = raw
			}
		}
		return within(err, descKeys[bits.TrailingZeros(uint(bit))])
	})
	switch {
	case err != nil:
		return err
	case null:
		return fieldErrorf("", "must be a descriptor object, not null")
	case !hasMediaType || d.mediaType == "":
		return fieldErrorf("mediaType", "required")
	case !hasDigest:
		return fieldErrorf("digest", "required")
	case !hasSize:
		return fieldErrorf("size", "required")
	case d.size < 0:
		return fieldErrorf("size", "must not be negative")
	}
	if msg := checkMediaType(d.mediaType); msg != "" {
		return fieldErrorf("mediaType", msg)
	}
	if reason, _ := checkDigest(d.digest); reason != "" {
		return fieldErrorf("digest", quote(d.digest)+": "+reason)
	}
	if data != nil {
		if msg := checkData(data, d.size, d.digest); msg != "" {
			return fieldErrorf("data", msg)
		}
	}
	return nil
}

// checkData verifies a descriptor's embedded data (raw: a JSON string with
// no escapes needed, as base64 has none) against its size and digest, which
// are already validated.
func checkData(raw []byte, size int64, dg string) string {
	enc, _, err := jsonString(raw)
	if err != nil {
		return "must be a string"
	}
	// encoding/base64 skips \r and \n; RFC 4648 (which the image-spec
	// names) does not allow them.
	if strings.ContainsAny(enc, "\r\n") {
		return "not valid base64 (RFC 4648, standard alphabet with padding)"
	}
	decoded, err := base64.StdEncoding.Strict().DecodeString(enc)
	if err != nil {
		return "not valid base64 (RFC 4648, standard alphabet with padding)"
	}
	if int64(len(decoded)) != size {
		return fmt.Sprintf("decodes to %d bytes but size is %d", len(decoded), size)
	}
	alg, want, _ := strings.Cut(dg, ":")
	var sum []byte
	switch alg {
	case AlgorithmSHA256:
		h := sha256.Sum256(decoded)
		sum = h[:]
	case AlgorithmSHA512:
		h := sha512.Sum512(decoded)
		sum = h[:]
	default: // unreachable: the digest was validated
		return "cannot verify digest " + quote(dg)
	}
	if hex.EncodeToString(sum) != want {
		return "decoded content does not match digest " + quote(dg)
	}
	return ""
}

// checkMediaType checks the RFC 6838 form the image-spec schema requires:
// ^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$
func checkMediaType(mt string) string {
	typ, sub, ok := strings.Cut(mt, "/")
	if !ok || !restrictedName(typ) || !restrictedName(sub) {
		return quote(mt) + " is not a media type of the form type/subtype (RFC 6838)"
	}
	return ""
}

func restrictedName(s string) bool {
	if len(s) == 0 || len(s) > 127 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && strings.IndexByte("!#$&^_.+-", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// parseAnnotations reads a JSON object of strings. Duplicate keys are
// rejected. An empty object yields nil.
func parseAnnotations(raw []byte) (map[string]string, error) {
	var m map[string]string
	s := &jsonReader{b: raw}
	_, err := s.object(func(k []byte) error {
		key := string(k)
		v, err := s.value()
		if err != nil {
			return err
		}
		str, present, err := jsonString(v)
		if err != nil || !present {
			return fieldErrorf(quote(key), "must be a string")
		}
		if _, dup := m[key]; dup {
			return fieldErrorf(quote(key), "duplicate key")
		}
		if m == nil {
			m = make(map[string]string)
		}
		m[key] = str
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// uniqueList is an ordered list of strings without duplicates. Small lists
// are searched linearly; a set is built once a list grows.
type uniqueList struct {
	list []string
	set  map[string]struct{}
}

const uniqueListLinear = 32

func (u *uniqueList) add(s string) {
	if u.set == nil {
		for _, x := range u.list {
			if x == s {
				return
			}
		}
		u.list = append(u.list, s)
		if len(u.list) > uniqueListLinear {
			u.set = make(map[string]struct{}, 2*len(u.list))
			for _, x := range u.list {
				u.set[x] = struct{}{}
			}
		}
		return
	}
	if _, ok := u.set[s]; ok {
		return
	}
	u.set[s] = struct{}{}
	u.list = append(u.list, s)
}
