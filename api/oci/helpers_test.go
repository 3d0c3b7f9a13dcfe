package oci_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Test content and the digests of it.
var (
	configBlob = []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	emptyJSON  = []byte(`{}`)
	dConfig    = digest.FromBytes(configBlob)
	dEmpty     = digest.FromBytes(emptyJSON)
	dLayer1    = digest.FromString("layer one")
	dLayer2    = digest.FromString("layer two")
	dLayer3    = digest.FromString("layer three")
	dChild1    = digest.FromString("child manifest one")
	dChild2    = digest.FromString("child manifest two")
	dSubject   = digest.FromString("subject manifest")
	dSHA512    = digest.SHA512.FromString("sha512 layer")
)

// desc renders a descriptor as JSON.
func desc(mediaType string, d digest.Digest, size int64, extra ...string) string {
	s := fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d`, mediaType, d, size)
	for _, e := range extra {
		s += "," + e
	}
	return s + "}"
}

func layer(d digest.Digest, extra ...string) string {
	return desc(v1.MediaTypeImageLayerGzip, d, 1234, extra...)
}

func configDesc(extra ...string) string {
	return desc(v1.MediaTypeImageConfig, dConfig, int64(len(configBlob)), extra...)
}

// ociManifest renders an OCI image manifest; fields are extra top-level
// members, already JSON.
func ociManifest(config string, layers []string, fields ...string) string {
	s := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"`
	if config != "" {
		s += `,"config":` + config
	}
	if layers != nil {
		s += `,"layers":[` + strings.Join(layers, ",") + "]"
	}
	for _, f := range fields {
		s += "," + f
	}
	return s + "}"
}

func ociIndex(children []string, fields ...string) string {
	s := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Join(children, ",") + "]"
	for _, f := range fields {
		s += "," + f
	}
	return s + "}"
}

func dockerManifest(layers ...string) string {
	return `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",` +
		`"config":` + desc("application/vnd.docker.container.image.v1+json", dConfig, int64(len(configBlob))) +
		`,"layers":[` + strings.Join(layers, ",") + "]}"
}

func dockerList(children ...string) string {
	return `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[` +
		strings.Join(children, ",") + "]}"
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

const schema1 = `{"schemaVersion":1,"name":"library/hello","tag":"latest","architecture":"amd64",` +
	`"fsLayers":[{"blobSum":"sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],` +
	`"history":[{"v1Compatibility":"{}"}],"signatures":[]}`

func specsVersioned() specs.Versioned { return specs.Versioned{SchemaVersion: 2} }
