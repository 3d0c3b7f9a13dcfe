package e2e

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	orasArtifactType = "application/vnd.strata.e2e.bundle.v1"
	orasSigType      = "application/vnd.strata.e2e.signature.v1"
	orasSBOMType     = "application/vnd.strata.e2e.sbom.v1"
)

// orasPushOutput is the subset of `oras push|attach --format json` we check.
type orasPushOutput struct {
	Reference    string `json:"reference"`
	MediaType    string `json:"mediaType"`
	Digest       string `json:"digest"`
	Size         int64  `json:"size"`
	ArtifactType string `json:"artifactType"`
}

// orasDiscoverOutput is `oras discover --format json`.
type orasDiscoverOutput struct {
	Digest    string `json:"digest"`
	Referrers []struct {
		Digest       string `json:"digest"`
		MediaType    string `json:"mediaType"`
		ArtifactType string `json:"artifactType"`
	} `json:"referrers"`
}

// TestOras pushes an artifact with files, attaches a signature and an SBOM to
// it (OCI 1.1 subject), discovers them (all, and filtered by artifact type),
// and pulls the files back.
func TestOras(t *testing.T) {
	t.Parallel()
	c := newCLI(t, "oras", 3*time.Minute)
	c.dir = t.TempDir() // oras takes file names relative to the working directory
	var plain []string
	if reg.plain {
		plain = []string{"--plain-http"}
	}
	oras := func(args ...string) []string { return append(args, plain...) }

	files := map[string][]byte{
		"readme.txt": []byte("strata e2e artifact " + runID + "\n" + randomHex(64) + "\n"),
		"data.bin":   randomBytes(t, 700<<10),
		"sig.json":   []byte(`{"signature":"` + randomHex(32) + `"}`),
		"sbom.json":  []byte(`{"spdxVersion":"SPDX-2.3","name":"` + randomHex(8) + `"}`),
	}
	for name, b := range files {
		writeFile(t, filepath.Join(c.dir, name), b)
	}
	repo := c.repo("artifact")
	ref := reg.ref(repo) + ":v1"

	var pushed orasPushOutput
	mustJSON(t, c.run(oras("push", ref, "--artifact-type", orasArtifactType, "--format", "json",
		"readme.txt:text/plain", "data.bin:application/octet-stream")...), &pushed)
	equal(t, "pushed artifactType", pushed.ArtifactType, orasArtifactType)
	equal(t, "pushed mediaType", pushed.MediaType, mtOCIManifest)

	// The stored manifest is the one oras pushed, with both files as layers.
	raw := c.run(oras("manifest", "fetch", ref)...)
	equal(t, "digest of the fetched manifest", digestOf(raw), pushed.Digest)
	var m manifest
	mustJSON(t, raw, &m)
	equal(t, "manifest artifactType", m.ArtifactType, orasArtifactType)
	gotLayers := map[string]string{}
	for _, d := range m.Layers {
		gotLayers[d.Annotations["org.opencontainers.image.title"]] = d.Digest
	}
	equal(t, "layer digest of readme.txt", gotLayers["readme.txt"], digestOf(files["readme.txt"]))
	equal(t, "layer digest of data.bin", gotLayers["data.bin"], digestOf(files["data.bin"]))

	// Attach a signature and an SBOM to the artifact.
	var sig, sbom orasPushOutput
	mustJSON(t, c.run(oras("attach", ref, "--artifact-type", orasSigType, "--format", "json",
		"sig.json:application/vnd.strata.e2e.signature.v1+json")...), &sig)
	mustJSON(t, c.run(oras("attach", ref, "--artifact-type", orasSBOMType, "--format", "json",
		"sbom.json:application/spdx+json")...), &sbom)
	equal(t, "attached signature artifactType", sig.ArtifactType, orasSigType)

	subject := reg.ref(repo) + "@" + pushed.Digest
	discover := func(extra ...string) map[string]string {
		t.Helper()
		var out orasDiscoverOutput
		mustJSON(t, c.run(oras(append([]string{"discover", subject, "--format", "json"}, extra...)...)...), &out)
		got := map[string]string{}
		for _, r := range out.Referrers {
			got[r.Digest] = r.ArtifactType
		}
		return got
	}
	equal(t, "oras discover: referrers", len(discover()), 2)
	all := discover()
	equal(t, "artifactType of the signature referrer", all[sig.Digest], orasSigType)
	equal(t, "artifactType of the SBOM referrer", all[sbom.Digest], orasSBOMType)
	onlySig := discover("--artifact-type", orasSigType)
	if len(onlySig) != 1 || onlySig[sig.Digest] != orasSigType {
		t.Fatalf("oras discover --artifact-type %s = %v, want only %s", orasSigType, onlySig, sig.Digest)
	}

	t.Run("ReferrersAPI", func(t *testing.T) {
		if os.Getenv("STRATA_E2E_SKIP_REFERRERS_API") == "1" {
			t.Skip("STRATA_E2E_SKIP_REFERRERS_API=1")
		}
		c := c.forTest(t)
		// oras through the referrers API only (no tag-schema fallback).
		var out orasDiscoverOutput
		mustJSON(t, c.run(oras("discover", subject, "--format", "json", "--distribution-spec", "v1.1-referrers-api",
			"--artifact-type", orasSBOMType)...), &out)
		if len(out.Referrers) != 1 || out.Referrers[0].Digest != sbom.Digest {
			t.Fatalf("oras discover via the referrers API, filtered on %s: got %+v, want only %s", orasSBOMType, out.Referrers, sbom.Digest)
		}

		// The API itself: GET /v2/<name>/referrers/<digest>?artifactType=...
		path := "/v2/" + repo + "/referrers/" + pushed.Digest
		resp, body := reg.do(t, c.ctx, http.MethodGet, path+"?artifactType="+url.QueryEscape(orasSigType), nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s\n%s", path, resp.Status, clip(body))
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, mtOCIIndex) {
			t.Fatalf("GET %s: Content-Type %q, want %s", path, ct, mtOCIIndex)
		}
		var idx index
		mustJSON(t, body, &idx)
		if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != sig.Digest || idx.Manifests[0].ArtifactType != orasSigType {
			t.Fatalf("GET %s?artifactType=%s: manifests %+v, want only %s", path, orasSigType, idx.Manifests, sig.Digest)
		}

		// A registry with the API needs no referrers tag (sha256-<hex>) fallback.
		var tags struct {
			Tags []string `json:"tags"`
		}
		resp, body = reg.do(t, c.ctx, http.MethodGet, "/v2/"+repo+"/tags/list", nil)
		equal(t, "GET tags/list status", resp.StatusCode, http.StatusOK)
		mustJSON(t, body, &tags)
		sameStrings(t, "tags of "+repo, tags.Tags, []string{"v1"})
	})

	// Pull the artifact and the signature back and compare the files.
	pullDir := filepath.Join(t.TempDir(), "pull")
	c.run(oras("pull", ref, "-o", pullDir)...)
	for _, name := range []string{"readme.txt", "data.bin"} {
		sameBytes(t, "pulled "+name, readFile(t, filepath.Join(pullDir, name)), files[name])
	}
	sigDir := filepath.Join(t.TempDir(), "sig")
	c.run(oras("pull", reg.ref(repo)+"@"+sig.Digest, "-o", sigDir)...)
	sameBytes(t, "pulled sig.json", readFile(t, filepath.Join(sigDir, "sig.json")), files["sig.json"])
}
