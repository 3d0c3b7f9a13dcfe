package e2e

import (
	"path/filepath"
	"testing"
	"time"
)

// TestRegctl copies an OCI layout into the registry and between repositories
// with regctl, and reads back the manifest, the tags and every blob. One layer
// is larger than Strata's 8 MiB segment so that blob spans several segments.
func TestRegctl(t *testing.T) {
	t.Parallel()
	c := newCLI(t, "regctl", 4*time.Minute)
	if reg.plain {
		c.run("registry", "set", "--tls", "disabled", reg.host)
	}

	img := makeImage(t, 9<<20+12345, 1024)
	layout := filepath.Join(t.TempDir(), "layout")
	img.writeLayout(t, layout, "v1")

	src := reg.ref(c.repo("src"))
	c.run("image", "copy", "ocidir://"+layout+":v1", src+":v1")
	equal(t, "regctl image digest "+src+":v1", c.runStr("image", "digest", src+":v1"), img.digest)
	sameBytes(t, "regctl manifest get "+src+":v1", c.run("manifest", "get", src+":v1", "--format", "raw-body"), img.manifest)

	// Registry to registry: same bytes under two tags of another repository.
	dst := reg.ref(c.repo("dst"))
	c.run("image", "copy", src+":v1", dst+":v1")
	c.run("image", "copy", src+":v1", dst+":v2")
	sameBytes(t, "regctl manifest get "+dst+":v2", c.run("manifest", "get", dst+":v2", "--format", "raw-body"), img.manifest)
	sameStrings(t, "regctl tag ls "+dst, lines(c.runStr("tag", "ls", dst)), []string{"v1", "v2"})

	for d, want := range img.blobs() {
		got := c.run("blob", "get", dst, d)
		equal(t, "digest of regctl blob get "+d, digestOf(got), d)
		sameBytes(t, "regctl blob get "+d, got, want)
	}

	c.run("tag", "delete", dst+":v2")
	sameStrings(t, "regctl tag ls "+dst+" after deleting v2", lines(c.runStr("tag", "ls", dst)), []string{"v1"})
	equal(t, "regctl image digest "+dst+":v1", c.runStr("image", "digest", dst+":v1"), img.digest)
}
