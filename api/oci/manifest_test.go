package oci_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-registry/strata/api/oci"
)

const (
	ctOCIManifest = "application/vnd.oci.image.manifest.v1+json"
	ctOCIIndex    = "application/vnd.oci.image.index.v1+json"
	ctDocker      = "application/vnd.docker.distribution.manifest.v2+json"
	ctDockerList  = "application/vnd.docker.distribution.manifest.list.v2+json"
)

func strs(ds ...digest.Digest) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return out
}

func TestParseManifestValid(t *testing.T) {
	plainOCI := &oci.Manifest{
		MediaType:     ctOCIManifest,
		SchemaVersion: 2,
		Blobs:         strs(dConfig, dLayer1, dLayer2),
		ArtifactType:  v1.MediaTypeImageConfig,
	}
	twoLayers := []string{layer(dLayer1), layer(dLayer2)}
	noMediaType := strings.Replace(ociManifest(configDesc(), twoLayers), `"mediaType":"application/vnd.oci.image.manifest.v1+json",`, "", 1)

	tests := []struct {
		name string
		ct   string
		body string
		want *oci.Manifest
	}{
		{"oci manifest", ctOCIManifest, ociManifest(configDesc(), twoLayers), plainOCI},
		{"oci manifest, no Content-Type", "", ociManifest(configDesc(), twoLayers), plainOCI},
		{"oci manifest, Content-Type with parameters", ctOCIManifest + "; charset=utf-8", ociManifest(configDesc(), twoLayers), plainOCI},
		{"oci manifest, generic Content-Type", "application/json", ociManifest(configDesc(), twoLayers), plainOCI},
		{"oci manifest, octet-stream Content-Type", "application/octet-stream", ociManifest(configDesc(), twoLayers), plainOCI},
		{"oci manifest, Content-Type case", "Application/VND.OCI.Image.Manifest.v1+JSON", ociManifest(configDesc(), twoLayers), plainOCI},
		{"no mediaType field, Content-Type decides", ctOCIManifest, noMediaType, plainOCI},
		{"no mediaType field, no Content-Type: structure decides", "", noMediaType, plainOCI},
		{"no mediaType, generic Content-Type: structure decides", "application/json", noMediaType, plainOCI},
		{"empty mediaType field counts as absent", ctOCIManifest,
			strings.Replace(ociManifest(configDesc(), twoLayers), `"mediaType":"application/vnd.oci.image.manifest.v1+json"`, `"mediaType":""`, 1), plainOCI},
		{"whitespace and unknown fields", ctOCIManifest,
			"\n  {\"x-custom\": {\"nested\": [1, 2.5, true, null, \"s\"]},\r\n\t\"schemaVersion\" : 2 , \"config\" : " +
				configDesc(`"platform":{"os":"linux"}`, `"annotations":{"a":"b"}`, `"artifactType":"x/y"`) +
				", \"layers\" : [ " + layer(dLayer1, `"unknown":1`) + " , " + layer(dLayer2) + " ] }\n", plainOCI},
		{"escaped keys and values", ctOCIManifest,
			`{"schemaVersion":2,"con\u0066ig":` + configDesc() + `,"layers":[` + layer(dLayer1) + "," + layer(dLayer2) + `],"a\u00e9":"\u00e9"}`, plainOCI},
		{"duplicate layers and config-as-layer are listed once", ctOCIManifest,
			ociManifest(configDesc(), []string{layer(dLayer1), layer(dConfig), layer(dLayer2), layer(dLayer1)}), plainOCI},
		{"no layers field", ctOCIManifest, ociManifest(configDesc(), nil),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(dConfig), ArtifactType: v1.MediaTypeImageConfig}},
		{"empty layers", ctOCIManifest, ociManifest(configDesc(), []string{}),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(dConfig), ArtifactType: v1.MediaTypeImageConfig}},
		{"null layers, manifests and annotations", ctOCIManifest, ociManifest(configDesc(), nil, `"layers":null`, `"manifests":null`, `"annotations":null`, `"subject":null`),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(dConfig), ArtifactType: v1.MediaTypeImageConfig}},
		{"sha512 layer", ctOCIManifest, ociManifest(configDesc(), []string{layer(dSHA512)}),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(dConfig, dSHA512), ArtifactType: v1.MediaTypeImageConfig}},
		{"non-distributable and foreign layers and layers with urls are excluded", ctOCIManifest,
			ociManifest(configDesc(), []string{
				desc(v1.MediaTypeImageLayerNonDistributableGzip, dLayer1, 10),
				desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", digest.FromString("foreign"), 10),
				layer(digest.FromString("with urls"), `"urls":["https://example.com/layer"]`),
				layer(dLayer2, `"urls":[]`),
				layer(dLayer3, `"urls":null`),
			}),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(dConfig, dLayer2, dLayer3), ArtifactType: v1.MediaTypeImageConfig}},
		{"artifact with subject, artifactType and annotations", ctOCIManifest,
			ociManifest(desc(v1.MediaTypeEmptyJSON, dEmpty, 2, `"data":"e30="`), []string{desc("application/vnd.example.sig", dLayer1, 5)},
				`"artifactType":"application/vnd.example.signature.v1"`,
				`"subject":`+desc(ctOCIManifest, dSubject, 1000),
				`"annotations":{"org.opencontainers.image.created":"2024-01-01T00:00:00Z","k":""}`),
			&oci.Manifest{
				MediaType: ctOCIManifest, SchemaVersion: 2,
				Blobs:        strs(dEmpty, dLayer1),
				Subject:      dSubject.String(),
				ArtifactType: "application/vnd.example.signature.v1",
				Annotations:  map[string]string{"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "k": ""},
			}},
		{"artifactType empty: config mediaType", ctOCIManifest,
			ociManifest(desc("application/vnd.example.sbom.config.v1+json", dConfig, 3), nil, `"artifactType":""`, `"subject":`+desc(ctOCIManifest, dSubject, 1000), `"annotations":{}`),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(dConfig), Subject: dSubject.String(), ArtifactType: "application/vnd.example.sbom.config.v1+json"}},
		{"data field matching size and digest", ctOCIManifest,
			ociManifest(configDesc(`"data":"`+b64(configBlob)+`"`), nil),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(dConfig), ArtifactType: v1.MediaTypeImageConfig}},
		{"data field, empty content", ctOCIManifest,
			ociManifest(desc(v1.MediaTypeImageConfig, digest.FromBytes(nil), 0, `"data":""`), nil),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(digest.FromBytes(nil)), ArtifactType: v1.MediaTypeImageConfig}},
		{"data field, sha512", ctOCIManifest,
			ociManifest(desc(v1.MediaTypeImageConfig, digest.SHA512.FromBytes(configBlob), int64(len(configBlob)), `"data":"`+b64(configBlob)+`"`), nil),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(digest.SHA512.FromBytes(configBlob)), ArtifactType: v1.MediaTypeImageConfig}},
		{"oci index", ctOCIIndex,
			ociIndex([]string{desc(ctOCIManifest, dChild1, 500, `"platform":{"architecture":"amd64","os":"linux"}`), desc(ctOCIManifest, dChild2, 501), desc(ctOCIManifest, dChild1, 500)}),
			&oci.Manifest{MediaType: ctOCIIndex, SchemaVersion: 2, Manifests: strs(dChild1, dChild2)}},
		{"oci index by structure", "",
			`{"schemaVersion":2,"manifests":[` + desc(ctOCIManifest, dChild1, 500) + `]}`,
			&oci.Manifest{MediaType: ctOCIIndex, SchemaVersion: 2, Manifests: strs(dChild1)}},
		{"empty oci index", ctOCIIndex, ociIndex(nil),
			&oci.Manifest{MediaType: ctOCIIndex, SchemaVersion: 2}},
		{"oci index without manifests field", ctOCIIndex, `{"schemaVersion":2}`,
			&oci.Manifest{MediaType: ctOCIIndex, SchemaVersion: 2}},
		{"oci index with subject, artifactType and annotations", ctOCIIndex,
			ociIndex([]string{desc(ctOCIManifest, dChild1, 500)}, `"subject":`+desc(ctOCIIndex, dSubject, 9), `"artifactType":"application/vnd.example.bundle"`, `"annotations":{"a":"1"}`),
			&oci.Manifest{MediaType: ctOCIIndex, SchemaVersion: 2, Manifests: strs(dChild1), Subject: dSubject.String(),
				ArtifactType: "application/vnd.example.bundle", Annotations: map[string]string{"a": "1"}}},
		{"oci index with subject, no artifactType: omitted", ctOCIIndex,
			ociIndex([]string{desc(ctOCIManifest, dChild1, 500)}, `"subject":`+desc(ctOCIIndex, dSubject, 9)),
			&oci.Manifest{MediaType: ctOCIIndex, SchemaVersion: 2, Manifests: strs(dChild1), Subject: dSubject.String()}},
		{"docker manifest", ctDocker,
			dockerManifest(desc("application/vnd.docker.image.rootfs.diff.tar.gzip", dLayer1, 10),
				desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", dLayer2, 10, `"urls":["https://mcr.microsoft.com/x"]`)),
			&oci.Manifest{MediaType: ctDocker, SchemaVersion: 2, Blobs: strs(dConfig, dLayer1), ArtifactType: "application/vnd.docker.container.image.v1+json"}},
		{"docker manifest, no Content-Type", "",
			dockerManifest(desc("application/vnd.docker.image.rootfs.diff.tar.gzip", dLayer1, 10)),
			&oci.Manifest{MediaType: ctDocker, SchemaVersion: 2, Blobs: strs(dConfig, dLayer1), ArtifactType: "application/vnd.docker.container.image.v1+json"}},
		{"docker manifest ignores OCI-only fields", ctDocker,
			strings.TrimSuffix(dockerManifest(), "}") + `,"subject":"not a descriptor","artifactType":7,"annotations":[1]}`,
			&oci.Manifest{MediaType: ctDocker, SchemaVersion: 2, Blobs: strs(dConfig), ArtifactType: "application/vnd.docker.container.image.v1+json"}},
		{"docker manifest list", ctDockerList,
			dockerList(desc(ctDocker, dChild1, 7, `"platform":{"architecture":"arm64","os":"linux","variant":"v8"}`), desc(ctDocker, dChild2, 7)),
			&oci.Manifest{MediaType: ctDockerList, SchemaVersion: 2, Manifests: strs(dChild1, dChild2)}},
		{"image-spec Go types (layers null)", ctOCIManifest,
			mustJSON(v1.Manifest{Versioned: specsVersioned(), MediaType: ctOCIManifest, Config: v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: dConfig, Size: 5}}),
			&oci.Manifest{MediaType: ctOCIManifest, SchemaVersion: 2, Blobs: strs(dConfig), ArtifactType: v1.MediaTypeImageConfig}},
		{"image-spec Go types index (manifests null)", ctOCIIndex,
			mustJSON(v1.Index{Versioned: specsVersioned(), MediaType: ctOCIIndex}),
			&oci.Manifest{MediaType: ctOCIIndex, SchemaVersion: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := oci.ParseManifest(tt.ct, []byte(tt.body))
			if err != nil {
				t.Fatalf("ParseManifest: %v\nbody: %s", err, tt.body)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseManifest =\n%+v\nwant\n%+v", got, tt.want)
			}
			if got.IsIndex() != (got.MediaType == ctOCIIndex || got.MediaType == ctDockerList) {
				t.Errorf("IsIndex() = %v for %s", got.IsIndex(), got.MediaType)
			}
		})
	}
}

func TestParseManifestErrors(t *testing.T) {
	twoLayers := []string{layer(dLayer1), layer(dLayer2)}
	good := ociManifest(configDesc(), twoLayers)
	replace := func(old, new string) string {
		if !strings.Contains(good, old) {
			panic("test body lacks " + old)
		}
		return strings.Replace(good, old, new, 1)
	}
	badDigest := "sha256:" + strings.ToUpper(dLayer2.Encoded())
	tests := []struct {
		name string
		ct   string
		body string
		want error
		msg  string // substring of the error message
	}{
		// media type
		{"Content-Type and mediaType differ", ctDocker, good, oci.ErrManifestInvalid, "does not match the Content-Type"},
		{"index Content-Type, manifest body", ctOCIIndex, good, oci.ErrManifestInvalid, "does not match"},
		{"schema1 Content-Type", "application/vnd.docker.distribution.manifest.v1+json", schema1, oci.ErrManifestUnsupported, "schema1"},
		{"schema1 signed Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws", schema1, oci.ErrManifestUnsupported, "schema1"},
		{"schema1 by structure", "", schema1, oci.ErrManifestUnsupported, "schema1"},
		{"schema1 with generic Content-Type", "application/json", schema1, oci.ErrManifestUnsupported, "schema1"},
		{"unknown Content-Type", "application/vnd.example+json", `{"schemaVersion":2}`, oci.ErrManifestUnsupported, "application/vnd.example+json"},
		{"unknown mediaType", "", replace(ctOCIManifest, "application/vnd.oci.artifact.manifest.v1+json"), oci.ErrManifestUnsupported, "artifact"},
		{"mediaType not a string", "", replace(`"mediaType":"application/vnd.oci.image.manifest.v1+json"`, `"mediaType":2`), oci.ErrManifestInvalid, "mediaType: must be a string"},
		{"undeterminable type", "", `{"schemaVersion":2}`, oci.ErrManifestInvalid, "cannot determine"},
		{"ambiguous structure", "", `{"schemaVersion":2,"config":` + configDesc() + `,"manifests":[]}`, oci.ErrManifestInvalid, "cannot tell"},
		{"image manifest with manifests", ctOCIManifest, replace(`"layers"`, `"manifests":[],"layers"`), oci.ErrManifestInvalid, "manifests: not allowed"},
		{"index with layers", ctOCIIndex, ociIndex(nil, `"layers":[]`), oci.ErrManifestInvalid, "layers: not allowed"},
		{"index with config", ctDockerList, strings.Replace(dockerList(), `"manifests"`, `"config":`+configDesc()+`,"manifests"`, 1), oci.ErrManifestInvalid, "config: not allowed in an index"},

		// schemaVersion
		{"schemaVersion 1 declared OCI", ctOCIManifest, replace(`"schemaVersion":2`, `"schemaVersion":1`), oci.ErrManifestInvalid, "schemaVersion: must be 2"},
		{"schemaVersion 3", ctOCIManifest, replace(`"schemaVersion":2`, `"schemaVersion":3`), oci.ErrManifestInvalid, "must be 2"},
		{"schemaVersion missing", ctOCIManifest, replace(`"schemaVersion":2,`, ``), oci.ErrManifestInvalid, "schemaVersion: required"},
		{"schemaVersion string", ctOCIManifest, replace(`"schemaVersion":2`, `"schemaVersion":"2"`), oci.ErrManifestInvalid, "schemaVersion: must be an integer"},
		{"schemaVersion float", ctOCIManifest, replace(`"schemaVersion":2`, `"schemaVersion":2.0`), oci.ErrManifestInvalid, "integer"},
		{"schemaVersion exponent", ctOCIManifest, replace(`"schemaVersion":2`, `"schemaVersion":2e0`), oci.ErrManifestInvalid, "integer"},
		{"schemaVersion huge", ctOCIManifest, replace(`"schemaVersion":2`, `"schemaVersion":99999999999999999999`), oci.ErrManifestInvalid, "out of range"},

		// config
		{"missing config", ctOCIManifest, ociManifest("", twoLayers), oci.ErrManifestInvalid, "config: required"},
		{"null config", ctOCIManifest, ociManifest("null", twoLayers), oci.ErrManifestInvalid, "config: required"},
		{"config not an object", ctOCIManifest, ociManifest(`"sha256:`+dConfig.Encoded()+`"`, twoLayers), oci.ErrManifestInvalid, "config: must be a JSON object"},
		{"config bad digest", ctOCIManifest, ociManifest(desc(v1.MediaTypeImageConfig, digest.Digest("sha256:"+strings.ToUpper(dConfig.Encoded())), 5), nil), oci.ErrManifestInvalid, "config.digest"},
		{"config missing mediaType", ctOCIManifest, ociManifest(`{"digest":"`+dConfig.String()+`","size":1}`, nil), oci.ErrManifestInvalid, "config.mediaType: required"},

		// layers and descriptors
		{"bad layer digest", ctOCIManifest, ociManifest(configDesc(), []string{layer(dLayer1), layer(dLayer2), layer(digest.Digest(badDigest))}), oci.ErrManifestInvalid, "layers[2].digest"},
		{"short layer digest", ctOCIManifest, ociManifest(configDesc(), []string{layer("sha256:abc")}), oci.ErrManifestInvalid, "layers[0].digest"},
		{"unsupported layer digest", ctOCIManifest, ociManifest(configDesc(), []string{layer("md5:d41d8cd98f00b204e9800998ecf8427e")}), oci.ErrManifestInvalid, "not supported"},
		{"missing layer digest", ctOCIManifest, ociManifest(configDesc(), []string{`{"mediaType":"a/b","size":1}`}), oci.ErrManifestInvalid, "layers[0].digest: required"},
		{"null layer digest", ctOCIManifest, ociManifest(configDesc(), []string{`{"mediaType":"a/b","size":1,"digest":null}`}), oci.ErrManifestInvalid, "layers[0].digest: required"},
		{"numeric digest", ctOCIManifest, ociManifest(configDesc(), []string{`{"mediaType":"a/b","size":1,"digest":5}`}), oci.ErrManifestInvalid, "layers[0].digest: must be a string"},
		{"missing size", ctOCIManifest, ociManifest(configDesc(), []string{`{"mediaType":"a/b","digest":"` + dLayer1.String() + `"}`}), oci.ErrManifestInvalid, "layers[0].size: required"},
		{"negative size", ctOCIManifest, ociManifest(configDesc(), []string{desc("a/b", dLayer1, -1)}), oci.ErrManifestInvalid, "layers[0].size: must not be negative"},
		{"fractional size", ctOCIManifest, ociManifest(configDesc(), []string{`{"mediaType":"a/b","size":1.5,"digest":"` + dLayer1.String() + `"}`}), oci.ErrManifestInvalid, "layers[0].size: must be an integer"},
		{"string size", ctOCIManifest, ociManifest(configDesc(), []string{`{"mediaType":"a/b","size":"1","digest":"` + dLayer1.String() + `"}`}), oci.ErrManifestInvalid, "size: must be an integer"},
		{"missing layer mediaType", ctOCIManifest, ociManifest(configDesc(), []string{layer(dLayer1), `{"size":1,"digest":"` + dLayer1.String() + `"}`}), oci.ErrManifestInvalid, "layers[1].mediaType: required"},
		{"bad layer mediaType", ctOCIManifest, ociManifest(configDesc(), []string{desc("tar", dLayer1, 1)}), oci.ErrManifestInvalid, "layers[0].mediaType"},
		{"mediaType with parameters", ctOCIManifest, ociManifest(configDesc(), []string{desc("a/b; x=y", dLayer1, 1)}), oci.ErrManifestInvalid, "layers[0].mediaType"},
		{"layers not an array", ctOCIManifest, ociManifest(configDesc(), nil, `"layers":{}`), oci.ErrManifestInvalid, "layers: must be a JSON array"},
		{"layer null", ctOCIManifest, ociManifest(configDesc(), []string{"null"}), oci.ErrManifestInvalid, "layers[0]: must be a descriptor"},
		{"layer not an object", ctOCIManifest, ociManifest(configDesc(), []string{`"x"`}), oci.ErrManifestInvalid, "layers[0]: must be a JSON object"},
		{"urls not strings", ctOCIManifest, ociManifest(configDesc(), []string{layer(dLayer1, `"urls":[1]`)}), oci.ErrManifestInvalid, "layers[0].urls[0]: must be a string"},
		{"urls not an array", ctOCIManifest, ociManifest(configDesc(), []string{layer(dLayer1, `"urls":"https://x"`)}), oci.ErrManifestInvalid, "layers[0].urls: must be a JSON array"},
		{"bad index child", ctOCIIndex, ociIndex([]string{desc(ctOCIManifest, dChild1, 1), `{"mediaType":"` + ctOCIManifest + `","size":1,"digest":"sha256:"}`}), oci.ErrManifestInvalid, "manifests[1].digest"},
		{"bad docker list child", ctDockerList, dockerList(desc(ctDocker, dChild1, -5)), oci.ErrManifestInvalid, "manifests[0].size"},

		// data
		{"data not base64", ctOCIManifest, ociManifest(configDesc(`"data":"!!!!"`), nil), oci.ErrManifestInvalid, "config.data: not valid base64"},
		{"data unpadded", ctOCIManifest, ociManifest(desc("a/b", dEmpty, 2, `"data":"e30"`), nil), oci.ErrManifestInvalid, "config.data: not valid base64"},
		{"data with newline", ctOCIManifest, ociManifest(desc("a/b", dEmpty, 2, `"data":"e3\n0="`), nil), oci.ErrManifestInvalid, "config.data: not valid base64"},
		{"data url-safe alphabet", ctOCIManifest, ociManifest(desc("a/b", digest.FromBytes([]byte{0xfb, 0xff}), 2, `"data":"-_8="`), nil), oci.ErrManifestInvalid, "not valid base64"},
		{"data wrong size", ctOCIManifest, ociManifest(desc("a/b", dEmpty, 3, `"data":"e30="`), nil), oci.ErrManifestInvalid, "decodes to 2 bytes but size is 3"},
		{"data wrong digest", ctOCIManifest, ociManifest(desc("a/b", dLayer1, 2, `"data":"e30="`), nil), oci.ErrManifestInvalid, "does not match digest"},
		{"data not a string", ctOCIManifest, ociManifest(desc("a/b", dEmpty, 2, `"data":{}`), nil), oci.ErrManifestInvalid, "config.data: must be a string"},
		{"layer data wrong digest", ctOCIManifest, ociManifest(configDesc(), []string{layer(dLayer1), desc("a/b", dLayer2, 2, `"data":"e30="`)}), oci.ErrManifestInvalid, "layers[1].data"},

		// subject, artifactType, annotations
		{"subject bad digest", ctOCIManifest, replace(`"layers"`, `"subject":`+desc(ctOCIManifest, "sha256:1234", 1)+`,"layers"`), oci.ErrManifestInvalid, "subject.digest"},
		{"subject not a descriptor", ctOCIManifest, replace(`"layers"`, `"subject":"`+dSubject.String()+`","layers"`), oci.ErrManifestInvalid, "subject: must be a JSON object"},
		{"artifactType not a media type", ctOCIManifest, replace(`"layers"`, `"artifactType":"signature","layers"`), oci.ErrManifestInvalid, "artifactType"},
		{"artifactType not a string", ctOCIIndex, ociIndex(nil, `"artifactType":1`), oci.ErrManifestInvalid, "artifactType: must be a string"},
		{"annotation not a string", ctOCIManifest, replace(`"layers"`, `"annotations":{"a":1},"layers"`), oci.ErrManifestInvalid, `annotations."a": must be a string`},
		{"annotation null", ctOCIManifest, replace(`"layers"`, `"annotations":{"a":null},"layers"`), oci.ErrManifestInvalid, `must be a string`},
		{"annotations not an object", ctOCIManifest, replace(`"layers"`, `"annotations":["a"],"layers"`), oci.ErrManifestInvalid, "annotations: must be a JSON object"},
		{"duplicate annotation", ctOCIManifest, replace(`"layers"`, `"annotations":{"a":"1","a":"2"},"layers"`), oci.ErrManifestInvalid, "duplicate key"},

		// duplicate and case-variant keys
		{"duplicate layers", ctOCIManifest, replace(`"layers"`, `"layers":[],"layers"`), oci.ErrManifestInvalid, "layers: duplicate field"},
		{"duplicate mediaType", "", replace(`"schemaVersion":2`, `"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"`), oci.ErrManifestInvalid, "mediaType: duplicate field"},
		{"duplicate schemaVersion", ctOCIManifest, replace(`"schemaVersion":2`, `"schemaVersion":2,"schemaVersion":2`), oci.ErrManifestInvalid, "duplicate"},
		{"case variant of layers", ctOCIManifest, replace(`"layers"`, `"Layers":[],"layers"`), oci.ErrManifestInvalid, "Layers: field name differs"},
		{"case variant only", ctOCIManifest, ociManifest(configDesc(), nil, `"LAYERS":[`+layer(dLayer1)+`]`), oci.ErrManifestInvalid, "ambiguous"},
		{"duplicate descriptor digest", ctOCIManifest, ociManifest(configDesc(), []string{layer(dLayer1, `"digest":"`+dLayer2.String()+`"`)}), oci.ErrManifestInvalid, "layers[0].digest: duplicate field"},
		{"case variant descriptor key", ctOCIManifest, ociManifest(configDesc(), []string{layer(dLayer1, `"Digest":"`+dLayer2.String()+`"`)}), oci.ErrManifestInvalid, "layers[0].Digest: field name differs"},
		{"unicode fold descriptor key", ctOCIManifest, ociManifest(configDesc(), []string{layer(dLayer1, `"\u017fize":5`)}), oci.ErrManifestInvalid, "differs"},

		// JSON
		{"empty body", ctOCIManifest, "", oci.ErrManifestInvalid, "body is empty"},
		{"whitespace body", ctOCIManifest, " \n", oci.ErrManifestInvalid, "body is empty"},
		{"not JSON", ctOCIManifest, "schemaVersion: 2", oci.ErrManifestInvalid, "must be a JSON object"},
		{"not JSON object", ctOCIManifest, "{schemaVersion: 2}", oci.ErrManifestInvalid, "malformed JSON"},
		{"truncated", ctOCIManifest, good[:len(good)-1], oci.ErrManifestInvalid, "malformed JSON"},
		{"array", ctOCIManifest, "[" + good + "]", oci.ErrManifestInvalid, "must be a JSON object"},
		{"null", ctOCIManifest, "null", oci.ErrManifestInvalid, "must be a JSON object"},
		{"string", ctOCIManifest, `"x"`, oci.ErrManifestInvalid, "must be a JSON object"},
		{"trailing garbage", ctOCIManifest, good + "x", oci.ErrManifestInvalid, "malformed JSON"},
		{"two objects", ctOCIManifest, good + good, oci.ErrManifestInvalid, "data after the top-level object"},
		{"trailing comma", ctOCIManifest, replace(`]}`, `],}`), oci.ErrManifestInvalid, "malformed JSON"},
		{"invalid UTF-8", ctOCIManifest, replace(`"layers"`, "\"x\":\"\xff\",\"layers\""), oci.ErrManifestInvalid, "UTF-8"},
		{"syntax error inside unknown field", ctOCIManifest, replace(`"layers"`, `"x":[1,,2],"layers"`), oci.ErrManifestInvalid, "malformed JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := oci.ParseManifest(tt.ct, []byte(tt.body))
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseManifest = %+v, %v; want %v\nbody: %s", m, err, tt.want, tt.body)
			}
			if m != nil {
				t.Errorf("non-nil manifest with error")
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not contain %q", err, tt.msg)
			}
			if n := countSentinels(err); n != 1 {
				t.Errorf("error %q wraps %d sentinels, want 1", err, n)
			}
		})
	}
}

func TestParseManifestTooLarge(t *testing.T) {
	body := []byte(ociManifest(configDesc(), nil, `"pad":"`+strings.Repeat("x", oci.MaxManifestSize)+`"`))
	if _, err := oci.ParseManifest(ctOCIManifest, body); !errors.Is(err, oci.ErrManifestTooLarge) {
		t.Errorf("oversized manifest: %v", err)
	}
	// Exactly MaxManifestSize is fine.
	base := ociManifest(configDesc(), nil, `"pad":""`)
	body = []byte(strings.Replace(base, `"pad":""`, `"pad":"`+strings.Repeat("x", oci.MaxManifestSize-len(base))+`"`, 1))
	if len(body) != oci.MaxManifestSize {
		t.Fatalf("test body is %d bytes", len(body))
	}
	if _, err := oci.ParseManifest(ctOCIManifest, body); err != nil {
		t.Errorf("manifest of exactly MaxManifestSize: %v", err)
	}
}

func TestParseManifestManyLayers(t *testing.T) {
	var layers []string
	var want []string
	want = append(want, dConfig.String())
	for i := 0; i < 5000; i++ {
		d := digest.FromString(strings.Repeat("l", i%1000))
		layers = append(layers, layer(d))
		if i < 1000 {
			want = append(want, d.String())
		}
	}
	m, err := oci.ParseManifest(ctOCIManifest, []byte(ociManifest(configDesc(), layers)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m.Blobs, want) {
		t.Errorf("got %d blobs, want %d", len(m.Blobs), len(want))
	}
}

// sentinels are all the errors the package exports.
var sentinels = []error{
	oci.ErrNameInvalid, oci.ErrTagInvalid, oci.ErrDigestInvalid, oci.ErrDigestUnsupported,
	oci.ErrRangeInvalid, oci.ErrRangeNotSatisfiable, oci.ErrContentRangeInvalid,
	oci.ErrManifestInvalid, oci.ErrManifestUnsupported, oci.ErrManifestTooLarge,
}

func countSentinels(err error) int {
	n := 0
	for _, s := range sentinels {
		if errors.Is(err, s) {
			n++
		}
	}
	return n
}

func TestSentinelMessages(t *testing.T) {
	for _, s := range sentinels {
		if !strings.HasPrefix(s.Error(), "oci: ") {
			t.Errorf("sentinel %q lacks the oci: prefix", s)
		}
	}
}

func BenchmarkParseManifest(b *testing.B) {
	var layers []string
	for i := 0; i < 10; i++ {
		layers = append(layers, layer(digest.FromString(strings.Repeat("x", i))))
	}
	body := []byte(ociManifest(configDesc(), layers, `"annotations":{"org.opencontainers.image.created":"2024-01-01T00:00:00Z"}`))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := oci.ParseManifest(ctOCIManifest, body); err != nil {
			b.Fatal(err)
		}
	}
}
