package e2e

import (
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestCrane pushes and pulls a tarball image with crane (go-containerregistry)
// and walks the rest of its registry commands: digest, manifest, config, blob,
// tag, ls, copy (cross-repository mount) and delete.
func TestCrane(t *testing.T) {
	t.Parallel()
	c := newCLI(t, "crane", 4*time.Minute)
	var insecure []string
	if reg.plain {
		insecure = []string{"--insecure"}
	}
	crane := func(args ...string) []string { return append(args, insecure...) }
	dir := t.TempDir()

	// A random layer on a scratch base, written as a local image tarball.
	l := makeLayer(t, 3<<20+777)
	layerPath := filepath.Join(dir, "layer.tar.gz")
	writeFile(t, layerPath, l.tgz)
	src := reg.ref(c.repo("src"))
	imageTar := filepath.Join(dir, "image.tar")
	c.run(crane("append", "--oci-empty-base", "-f", layerPath, "-t", src+":v1", "-o", imageTar)...)
	want := c.runStr("digest", "--tarball", imageTar)

	// push: crane prints the pushed reference by digest.
	equal(t, "crane push output", c.runStr(crane("push", imageTar, src+":v1")...), src+"@"+want)
	equal(t, "crane digest "+src+":v1", c.runStr(crane("digest", src+":v1")...), want)

	// The manifest bytes hash to the digest and name our layer.
	raw := c.run(crane("manifest", src+":v1")...)
	equal(t, "digest of crane manifest output", digestOf(raw), want)
	var m manifest
	mustJSON(t, raw, &m)
	if len(m.Layers) != 1 {
		t.Fatalf("manifest has %d layers, want 1:\n%s", len(m.Layers), raw)
	}
	equal(t, "layer digest in manifest", m.Layers[0].Digest, l.digest)
	equal(t, "layer size in manifest", m.Layers[0].Size, int64(len(l.tgz)))

	var cfg imageConfig
	cfgRaw := c.run(crane("config", src+":v1")...)
	equal(t, "config digest", digestOf(cfgRaw), m.Config.Digest)
	mustJSON(t, cfgRaw, &cfg)
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != l.diffID {
		t.Fatalf("config diff_ids = %q, want [%s]", cfg.RootFS.DiffIDs, l.diffID)
	}

	// crane blob returns the layer exactly as the local tarball.
	sameBytes(t, "crane blob "+l.digest, c.run(crane("blob", src+"@"+l.digest)...), l.tgz)

	// pull back as a tarball and as an OCI layout.
	pulledTar := filepath.Join(dir, "pulled.tar")
	c.run(crane("pull", src+":v1", pulledTar)...)
	equal(t, "digest of pulled tarball", c.runStr("digest", "--tarball", pulledTar), want)
	ociDir := filepath.Join(dir, "oci")
	c.run(crane("pull", "--format=oci", src+":v1", ociDir)...)
	idx := readLayoutIndex(t, ociDir)
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != want {
		t.Fatalf("pulled OCI layout index = %+v, want one manifest %s", idx.Manifests, want)
	}
	sameBytes(t, "manifest in pulled OCI layout", readFile(t, layoutBlobPath(ociDir, want)), raw)
	sameBytes(t, "layer in pulled OCI layout", readFile(t, layoutBlobPath(ociDir, l.digest)), l.tgz)

	// tag and ls.
	c.run(crane("tag", src+":v1", "v2")...)
	sameStrings(t, "crane ls "+src, lines(c.runStr(crane("ls", src)...)), []string{"v1", "v2"})

	// copy to another repository of the same registry: crane mounts the blobs
	// from the source repository (POST ...?mount=<digest>&from=<repo> -> 201).
	dst := reg.ref(c.repo("dst"))
	_, verbose := c.runErr(crane("copy", "-v", src+":v1", dst+":v1")...)
	mountRe := regexp.MustCompile(`<-- (\d{3}) \S*/blobs/uploads/\?\S*mount=` + regexp.QuoteMeta(url.QueryEscape(l.digest)))
	mm := mountRe.FindSubmatch(verbose)
	if mm == nil {
		t.Fatalf("crane copy did not try to mount %s from the source repository:\n%s", l.digest, clip(verbose))
	}
	equal(t, "status of the cross-repository mount of the layer", string(mm[1]), "201")
	equal(t, "crane digest "+dst+":v1", c.runStr(crane("digest", dst+":v1")...), want)
	sameBytes(t, "crane blob from the copy", c.run(crane("blob", dst+"@"+l.digest)...), l.tgz)
	sameStrings(t, "crane ls "+dst, lines(c.runStr(crane("ls", dst)...)), []string{"v1"})

	// delete the copy's manifest by digest: it is gone there, and its tag no
	// longer resolves; the source repository is untouched.
	c.run(crane("delete", dst+"@"+want)...)
	out := c.mustFail(crane("manifest", dst+"@"+want)...)
	if !strings.Contains(out, "MANIFEST_UNKNOWN") && !strings.Contains(out, "404") {
		t.Fatalf("crane manifest of a deleted manifest: want MANIFEST_UNKNOWN/404, got:\n%s", out)
	}
	c.mustFail(crane("digest", dst+":v1")...)
	equal(t, "crane digest "+src+":v1 after deleting the copy", c.runStr(crane("digest", src+":v1")...), want)
	sameBytes(t, "crane blob from the source after deleting the copy", c.run(crane("blob", src+"@"+l.digest)...), l.tgz)

	// delete a tag: only that tag goes.
	c.run(crane("delete", src+":v2")...)
	sameStrings(t, "crane ls "+src+" after deleting v2", lines(c.runStr(crane("ls", src)...)), []string{"v1"})
}
