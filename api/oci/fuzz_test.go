package oci_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-registry/strata/api/oci"
)

// The distribution-spec <name> grammar, verbatim, anchored.
var repoNameRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)

func FuzzValidateRepoName(f *testing.F) {
	for _, s := range []string{
		"", "a", "library/ubuntu", "a//b", "-a", "a-", "A", "a/", "/a", "a__b", "a___b", "a._b",
		"a--b", "a.b.c/d_e/f--g", "a/b/c", strings.Repeat("a", 255), strings.Repeat("a", 256),
		strings.Repeat("ab/", 84) + "abc", "é", "a\x00b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := oci.ValidateRepoName(name)
		want := len(name) <= oci.MaxRepoNameLength && repoNameRE.MatchString(name)
		if (err == nil) != want {
			t.Fatalf("ValidateRepoName(%q) = %v, regexp and length say valid=%v", name, err, want)
		}
		if err != nil && (!errors.Is(err, oci.ErrNameInvalid) || countSentinels(err) != 1) {
			t.Fatalf("ValidateRepoName(%q) = %v: wrong sentinel", name, err)
		}
	})
}

var tagRE = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

func FuzzValidateTag(f *testing.F) {
	for _, s := range []string{"", "latest", "v1.0", ".a", "-a", "_", "a:b", strings.Repeat("a", 128), strings.Repeat("a", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tag string) {
		err := oci.ValidateTag(tag)
		if want := tagRE.MatchString(tag); (err == nil) != want {
			t.Fatalf("ValidateTag(%q) = %v, regexp says valid=%v", tag, err, want)
		}
		if err != nil && (!errors.Is(err, oci.ErrTagInvalid) || countSentinels(err) != 1) {
			t.Fatalf("ValidateTag(%q) = %v: wrong sentinel", tag, err)
		}
		if err == nil && oci.IsDigest(tag) {
			t.Fatalf("valid tag %q looks like a digest", tag)
		}
	})
}

var (
	// image-spec descriptor.md digest grammar.
	digestGrammarRE = regexp.MustCompile(`^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`)
	// What Strata supports.
	digestSupportedRE = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`)
)

func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{
		"", ":", "sha256:", "sha256:" + hex64, "sha512:" + hex128, "sha256:" + strings.ToUpper(hex64),
		"sha256:" + hex64[:63], "md5:d41d8cd98f00b204e9800998ecf8427e", "sha384:" + hex64 + hex64[:32],
		"blake3:" + hex64, "SHA256:" + hex64, "a+b:=", "a++b:x", "sha256:" + hex64 + ":x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := oci.ParseDigest(s)
		alg, _, _ := strings.Cut(s, ":")
		switch {
		case digestSupportedRE.MatchString(s):
			if err != nil || string(d) != s {
				t.Fatalf("ParseDigest(%q) = %q, %v; want success", s, d, err)
			}
			// go-digest agrees, and round trip.
			if verr := d.Validate(); verr != nil {
				t.Fatalf("go-digest rejects %q: %v", d, verr)
			}
			if d2, err := oci.ParseDigest(d.Algorithm().String() + ":" + d.Encoded()); err != nil || d2 != d {
				t.Fatalf("round trip of %q: %q, %v", d, d2, err)
			}
			if !oci.IsDigest(s) {
				t.Fatalf("IsDigest(%q) = false", s)
			}
		case digestGrammarRE.MatchString(s) && alg != "sha256" && alg != "sha512":
			if !errors.Is(err, oci.ErrDigestUnsupported) || countSentinels(err) != 1 || d != "" {
				t.Fatalf("ParseDigest(%q) = %q, %v; want ErrDigestUnsupported", s, d, err)
			}
		default:
			if !errors.Is(err, oci.ErrDigestInvalid) || countSentinels(err) != 1 || d != "" {
				t.Fatalf("ParseDigest(%q) = %q, %v; want ErrDigestInvalid", s, d, err)
			}
		}
		// Anything go-digest accepts with a supported algorithm, we accept.
		if digest.Digest(s).Validate() == nil && (alg == "sha256" || alg == "sha512") && err != nil {
			t.Fatalf("ParseDigest(%q) = %v but go-digest accepts it", s, err)
		}
	})
}

// rangeRE is an independent model of a single-range Range header: unit
// "bytes" (any case), then optional whitespace and empty list elements
// around one int-range or suffix-range.
var rangeRE = regexp.MustCompile(`^(?i:bytes)=[ \t,]*([0-9]*)-([0-9]*)[ \t,]*$`)

// modelRange computes ParseRange's answer with math/big: ok, start, end, or
// the sentinel error.
func modelRange(header string, size int64) (start, end int64, ok bool, want error) {
	if header == "" {
		return 0, 0, false, nil
	}
	m := rangeRE.FindStringSubmatch(header)
	if m == nil || m[1] == "" && m[2] == "" {
		return 0, 0, false, oci.ErrRangeInvalid
	}
	num := func(s string) *big.Int { n, _ := new(big.Int).SetString(s, 10); return n }
	bsize := big.NewInt(size)
	last := bsize.Int64() - 1
	if m[1] == "" {
		n := num(m[2])
		if n.Sign() == 0 || size <= 0 {
			return 0, 0, false, oci.ErrRangeNotSatisfiable
		}
		if n.Cmp(bsize) >= 0 {
			return 0, last, true, nil
		}
		return size - n.Int64(), last, true, nil
	}
	first := num(m[1])
	if m[2] != "" && num(m[2]).Cmp(first) < 0 {
		return 0, 0, false, oci.ErrRangeInvalid
	}
	if size <= 0 || first.Cmp(bsize) >= 0 {
		return 0, 0, false, oci.ErrRangeNotSatisfiable
	}
	end = last
	if m[2] != "" && num(m[2]).Cmp(big.NewInt(last)) < 0 {
		end = num(m[2]).Int64()
	}
	return first.Int64(), end, true, nil
}

func FuzzParseRange(f *testing.F) {
	for _, c := range []struct {
		h string
		n int64
	}{
		{"", 10}, {"bytes=0-0", 10}, {"bytes=0-", 10}, {"bytes=-5", 10}, {"bytes=5-3", 10},
		{"bytes=-0", 10}, {"bytes=0-", 0}, {"bytes=0-1,2-3", 10}, {"Bytes= 1-2 ,", 10},
		{"bytes=99999999999999999999-", 10}, {"bytes=1-99999999999999999999", math.MaxInt64},
		{"items=1-2", 10}, {"bytes=500-1499", 2048}, {"bytes=2000-5000", 2048}, {"bytes=1-2", -1},
	} {
		f.Add(c.h, c.n)
	}
	f.Fuzz(func(t *testing.T, header string, size int64) {
		start, end, ok, err := oci.ParseRange(header, size)
		mstart, mend, mok, merr := modelRange(header, size)
		if ok != mok || start != mstart || end != mend || !errors.Is(err, merr) || (err == nil) != (merr == nil) {
			t.Fatalf("ParseRange(%q, %d) = %d, %d, %v, %v; model says %d, %d, %v, %v",
				header, size, start, end, ok, err, mstart, mend, mok, merr)
		}
		if err != nil && countSentinels(err) != 1 {
			t.Fatalf("error %v wraps %d sentinels", err, countSentinels(err))
		}
		if !ok {
			if err == nil && header != "" {
				t.Fatalf("ParseRange(%q) ignored a non-empty header without error", header)
			}
			return
		}
		if !(0 <= start && start <= end && end < size) {
			t.Fatalf("ParseRange(%q, %d) = %d-%d outside the blob", header, size, start, end)
		}
		// The canonical form of the answer parses to itself.
		s2, e2, ok2, err2 := oci.ParseRange(fmt.Sprintf("bytes=%d-%d", start, end), size)
		if !ok2 || err2 != nil || s2 != start || e2 != end {
			t.Fatalf("round trip of %d-%d: %d, %d, %v, %v", start, end, s2, e2, ok2, err2)
		}
	})
}

var contentRangeREs = []*regexp.Regexp{
	regexp.MustCompile(`^[ \t]*([0-9]+)-([0-9]+)()[ \t]*$`),
	regexp.MustCompile(`^[ \t]*(?i:bytes)=([0-9]+)-([0-9]+)()[ \t]*$`),
	regexp.MustCompile(`^[ \t]*(?i:bytes) +([0-9]+)-([0-9]+)/(\*|[0-9]+)[ \t]*$`),
}

func modelContentRange(h string) (start, end int64, ok bool) {
	for _, re := range contentRangeREs {
		m := re.FindStringSubmatch(h)
		if m == nil {
			continue
		}
		s, _ := new(big.Int).SetString(m[1], 10)
		e, _ := new(big.Int).SetString(m[2], 10)
		if !s.IsInt64() || !e.IsInt64() || e.Cmp(s) < 0 {
			return 0, 0, false
		}
		if m[3] != "" && m[3] != "*" {
			if total, _ := new(big.Int).SetString(m[3], 10); total.Cmp(e) <= 0 {
				return 0, 0, false
			}
		}
		return s.Int64(), e.Int64(), true
	}
	return 0, 0, false
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{
		"", "0-0", "0-1023", "5-3", "-1-5", "bytes 0-1023/*", "bytes 0-1023/1024", "bytes 0-1023/1023",
		"bytes=0-1023", "0-9223372036854775807", "0-9223372036854775808", "BYTES  1-2/3", " 1-2\t",
		"bytes */10", "bytes 0-1023/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		start, end, err := oci.ParseContentRange(h)
		mstart, mend, mok := modelContentRange(h)
		if (err == nil) != mok || start != mstart || end != mend {
			t.Fatalf("ParseContentRange(%q) = %d, %d, %v; model says %d, %d, ok=%v", h, start, end, err, mstart, mend, mok)
		}
		if err != nil {
			if !errors.Is(err, oci.ErrContentRangeInvalid) || countSentinels(err) != 1 {
				t.Fatalf("ParseContentRange(%q) = %v: wrong sentinel", h, err)
			}
			return
		}
		if start < 0 || end < start {
			t.Fatalf("ParseContentRange(%q) = %d, %d", h, start, end)
		}
		// FormatRange writes what ParseContentRange reads.
		for _, form := range []string{oci.FormatRange(start, end), "bytes " + oci.FormatRange(start, end) + "/*"} {
			if s2, e2, err := oci.ParseContentRange(form); err != nil || s2 != start || e2 != end {
				t.Fatalf("round trip %q: %d, %d, %v", form, s2, e2, err)
			}
		}
	})
}

// stdManifest is how a client built on encoding/json reads a manifest
// (case-insensitive keys, last duplicate wins).
type stdDescriptor struct {
	MediaType string
	Digest    string
	URLs      []string
}

type stdManifest struct {
	MediaType    string
	Config       *stdDescriptor
	Layers       []stdDescriptor
	Manifests    []stdDescriptor
	Subject      *stdDescriptor
	ArtifactType string
	Annotations  map[string]string
}

func FuzzParseManifest(f *testing.F) {
	seeds := []struct{ ct, body string }{
		{ctOCIManifest, ociManifest(configDesc(), []string{layer(dLayer1), layer(dLayer2)})},
		{"", ociManifest(configDesc(`"data":"`+b64(configBlob)+`"`), []string{layer(dLayer1, `"urls":["https://x/y"]`), desc(v1.MediaTypeImageLayerNonDistributable, dLayer2, 1)})},
		{ctOCIManifest, ociManifest(desc(v1.MediaTypeEmptyJSON, dEmpty, 2, `"data":"e30="`), nil,
			`"artifactType":"application/vnd.example+type"`, `"subject":`+desc(ctOCIManifest, dSubject, 5), `"annotations":{"a":"b"}`)},
		{ctOCIIndex, ociIndex([]string{desc(ctOCIManifest, dChild1, 5), desc(ctOCIManifest, dChild2, 6, `"platform":{"os":"linux"}`)})},
		{"application/json", `{"schemaVersion":2,"manifests":[]}`},
		{ctDocker, dockerManifest(desc("application/vnd.docker.image.rootfs.diff.tar.gzip", dLayer1, 10))},
		{ctDockerList, dockerList(desc(ctDocker, dChild1, 7))},
		{"", schema1},
		{ctOCIManifest, `{"schemaVersion":2,"Layers":[],"layers":[]}`},
		{ctOCIManifest + "; charset=utf-8", `{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:` + hex64 + `","size":1,"data":"AA=="}}`},
		{"", `{"schemaVersion":2,"config":null,"layers":[{}]}`},
		{"", "[]"},
		{"", `{"a":"\u00e9\ud800"}`},
	}
	for _, s := range seeds {
		f.Add(s.ct, []byte(s.body))
	}
	supported := map[string]bool{ctOCIManifest: true, ctOCIIndex: true, ctDocker: true, ctDockerList: true}
	f.Fuzz(func(t *testing.T, ct string, body []byte) {
		m, err := oci.ParseManifest(ct, body)
		if err != nil {
			if m != nil {
				t.Fatal("manifest returned with an error")
			}
			if strings.Contains(err.Error(), "malformed JSON") && json.Valid(body) && utf8.Valid(body) {
				t.Fatalf("valid JSON reported as malformed: %v\nbody: %q", err, body)
			}
			if n := countSentinels(err); n != 1 || !(errors.Is(err, oci.ErrManifestInvalid) ||
				errors.Is(err, oci.ErrManifestUnsupported) || errors.Is(err, oci.ErrManifestTooLarge)) {
				t.Fatalf("error %v: wrong sentinels", err)
			}
			return
		}

		// Basic invariants.
		if !supported[m.MediaType] || m.SchemaVersion != 2 {
			t.Fatalf("media type %q, schemaVersion %d", m.MediaType, m.SchemaVersion)
		}
		if !json.Valid(body) || !utf8.Valid(body) {
			t.Fatalf("accepted invalid JSON or UTF-8: %q", body)
		}
		checkDigests := func(what string, list []string) {
			seen := map[string]bool{}
			for _, d := range list {
				if _, err := oci.ParseDigest(d); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if seen[d] {
					t.Fatalf("%s: duplicate %s", what, d)
				}
				seen[d] = true
			}
		}
		checkDigests("Blobs", m.Blobs)
		checkDigests("Manifests", m.Manifests)
		if m.Subject != "" {
			checkDigests("Subject", []string{m.Subject})
		}
		if m.IsIndex() && len(m.Blobs) != 0 || !m.IsIndex() && (len(m.Manifests) != 0 || len(m.Blobs) == 0) {
			t.Fatalf("%s with %d blobs and %d manifests", m.MediaType, len(m.Blobs), len(m.Manifests))
		}
		if m.Annotations != nil && len(m.Annotations) == 0 {
			t.Fatal("empty non-nil Annotations")
		}

		// Deterministic, and the effective media type is accepted as the
		// Content-Type with the same result.
		for _, ct2 := range []string{ct, m.MediaType} {
			m2, err := oci.ParseManifest(ct2, body)
			if err != nil || !reflect.DeepEqual(m, m2) {
				t.Fatalf("reparse with %q: %+v, %v; first %+v", ct2, m2, err, m)
			}
		}

		// A client using encoding/json sees the same references.
		var std stdManifest
		if err := json.Unmarshal(body, &std); err != nil {
			return // e.g. a Docker manifest with non-string annotations (ignored by us)
		}
		if std.MediaType != "" && !strings.EqualFold(std.MediaType, m.MediaType) {
			t.Fatalf("encoding/json reads mediaType %q, we %q", std.MediaType, m.MediaType)
		}
		var blobs, children []string
		add := func(list []string, d string) []string {
			for _, x := range list {
				if x == d {
					return list
				}
			}
			return append(list, d)
		}
		if m.IsIndex() {
			for _, c := range std.Manifests {
				children = add(children, c.Digest)
			}
		} else {
			blobs = add(blobs, std.Config.Digest)
			for _, l := range std.Layers {
				if len(l.URLs) == 0 && !strings.Contains(l.MediaType, ".nondistributable.") &&
					l.MediaType != "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" {
					blobs = add(blobs, l.Digest)
				}
			}
		}
		if !reflect.DeepEqual(blobs, m.Blobs) || !reflect.DeepEqual(children, m.Manifests) {
			t.Fatalf("encoding/json reads blobs %v manifests %v; we %v %v", blobs, children, m.Blobs, m.Manifests)
		}
		if m.MediaType == ctOCIManifest || m.MediaType == ctOCIIndex {
			subject := ""
			if std.Subject != nil {
				subject = std.Subject.Digest
			}
			artifactType := std.ArtifactType
			if artifactType == "" && !m.IsIndex() {
				artifactType = std.Config.MediaType
			}
			annotations := std.Annotations
			if len(annotations) == 0 {
				annotations = nil
			}
			if subject != m.Subject || artifactType != m.ArtifactType || !reflect.DeepEqual(annotations, m.Annotations) {
				t.Fatalf("encoding/json reads subject %q artifactType %q annotations %v; we %q %q %v",
					subject, artifactType, annotations, m.Subject, m.ArtifactType, m.Annotations)
			}
		}
	})
}
