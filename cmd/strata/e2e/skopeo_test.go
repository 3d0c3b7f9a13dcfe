package e2e

import (
	"path/filepath"
	"testing"
	"time"
)

// TestSkopeo copies an OCI layout into the registry with skopeo, inspects it
// there, and copies it back into another OCI layout.
func TestSkopeo(t *testing.T) {
	t.Parallel()
	c := newCLI(t, "skopeo", 3*time.Minute)
	// No signature policy file is needed for these copies.
	skopeo := func(args ...string) []string { return append([]string{"--insecure-policy"}, args...) }
	tls := "true"
	if reg.plain {
		tls = "false"
	}

	img := makeImage(t, 2<<20+4321, 4096)
	srcDir := filepath.Join(t.TempDir(), "src")
	img.writeLayout(t, srcDir, "v1")
	dst := "docker://" + reg.ref(c.repo("img")) + ":v1"

	c.run(skopeo("copy", "--preserve-digests", "--dest-tls-verify="+tls, "oci:"+srcDir+":v1", dst)...)

	var info struct {
		Name   string   `json:"Name"`
		Digest string   `json:"Digest"`
		Layers []string `json:"Layers"`
	}
	mustJSON(t, c.run(skopeo("inspect", "--tls-verify="+tls, dst)...), &info)
	equal(t, "skopeo inspect Digest", info.Digest, img.digest)
	equal(t, "skopeo inspect Name", info.Name, reg.ref(c.repo("img")))
	sameStrings(t, "skopeo inspect Layers", info.Layers, []string{img.layers[0].digest, img.layers[1].digest})
	sameBytes(t, "skopeo inspect --raw", c.run(skopeo("inspect", "--raw", "--tls-verify="+tls, dst)...), img.manifest)
	sameBytes(t, "skopeo inspect --config --raw", c.run(skopeo("inspect", "--config", "--raw", "--tls-verify="+tls, dst)...), img.config)

	backDir := filepath.Join(t.TempDir(), "back")
	c.run(skopeo("copy", "--preserve-digests", "--src-tls-verify="+tls, dst, "oci:"+backDir+":v1")...)
	idx := readLayoutIndex(t, backDir)
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != img.digest || idx.Manifests[0].Annotations[annRefName] != "v1" {
		t.Fatalf("index.json of the copied-back layout = %+v, want one manifest %s tagged v1", idx.Manifests, img.digest)
	}
	checkLayoutHasImage(t, backDir, img)
}
