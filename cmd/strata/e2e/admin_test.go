package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The admin CLI against the running server: lifecycle policies with a
// preview and an applied expiry, tag immutability refusing a moved tag with
// DENIED, repository deletion, and a garbage collection that reclaims the
// deleted images' blobs.
func TestAdminLifecycleImmutabilityAndGC(t *testing.T) {
	if strataBin == "" {
		t.Skip("the admin API is Strata's own; STRATA_E2E_URL targets another registry")
	}
	crane := newCLI(t, "crane", 3*time.Minute)
	strata := newCLIAt(t, "strata", strataBin, 3*time.Minute)
	server := "--server=" + reg.url
	repo := crane.repo("admin")
	var digests []string
	for i, tag := range []string{"v1", "v2", "v3"} {
		img := makeImage(t, 2000+i, 300)
		dir := t.TempDir()
		img.writeLayout(t, dir, tag)
		crane.run("push", "--insecure", dir, reg.ref(repo)+":"+tag)
		digests = append(digests, strings.TrimSpace(crane.runStr("digest", "--insecure", reg.ref(repo)+":"+tag)))
		time.Sleep(20 * time.Millisecond) // distinct push times
	}

	// A policy that breaks ECR's rules is refused with a message naming the field.
	writeFile(t, strata.home+"/bad.json", []byte(`{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`))
	if msg := strata.mustFail("lifecycle", "put", repo, strata.home+"/bad.json", server); !strings.Contains(msg, "InvalidParameterException") || !strings.Contains(msg, "tagPrefixList") {
		t.Fatalf("bad policy: %s", msg)
	}
	policy := `{"rules":[{"rulePriority":1,"description":"keep the newest","selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`
	writeFile(t, strata.home+"/policy.json", []byte(policy))
	strata.run("lifecycle", "put", repo, strata.home+"/policy.json", server)
	if got := strings.TrimSpace(strata.runStr("lifecycle", "get", repo, server)); got != policy {
		t.Fatalf("policy read back as %s", got)
	}
	preview := strata.runStr("lifecycle", "preview", repo, server)
	if !strings.Contains(preview, digests[0]) || !strings.Contains(preview, digests[1]) || strings.Contains(preview, digests[2]) ||
		!strings.Contains(preview, "2 images would expire") {
		t.Fatalf("preview:\n%s", preview)
	}
	// Nothing was expired by the preview.
	crane.run("manifest", "--insecure", reg.ref(repo)+"@"+digests[0])

	// Immutable tags: moving v3 is refused with DENIED; "latest" stays mutable.
	strata.run("repo", "immutability", repo, "IMMUTABLE_WITH_EXCLUSION", "--exclude", "latest", server)
	if msg := crane.mustFail("tag", "--insecure", reg.ref(repo)+"@"+digests[0], "v3"); !strings.Contains(msg, "DENIED") || !strings.Contains(msg, `"v3"`) {
		t.Fatalf("moving an immutable tag: %s", msg)
	}
	crane.run("tag", "--insecure", reg.ref(repo)+"@"+digests[0], "latest")
	crane.run("tag", "--insecure", reg.ref(repo)+"@"+digests[1], "latest")
	var desc struct {
		Repositories []struct {
			RepositoryName     string `json:"repositoryName"`
			ImageTagMutability string `json:"imageTagMutability"`
		} `json:"repositories"`
	}
	mustJSON(t, strata.run("repo", "describe", repo, server), &desc)
	if len(desc.Repositories) != 1 || desc.Repositories[0].ImageTagMutability != "IMMUTABLE_WITH_EXCLUSION" {
		t.Fatalf("describe: %+v", desc)
	}

	// Deleting the repository needs --force; then a collection with no
	// grace reclaims what its images held.
	if msg := strata.mustFail("repo", "delete", repo, server); !strings.Contains(msg, "RepositoryNotEmptyException") {
		t.Fatalf("delete without force: %s", msg)
	}
	strata.run("repo", "delete", repo, "--force", server)
	var st struct {
		BlobsCollected int64  `json:"blobs_collected"`
		BytesReclaimed uint64 `json:"bytes_reclaimed"`
		Error          string `json:"error"`
	}
	if err := json.Unmarshal(strata.run("gc", "run", "--grace", "0s", "--wait", "--json", server), &st); err != nil {
		t.Fatal(err)
	}
	if st.BlobsCollected < 6 || st.BytesReclaimed == 0 || st.Error != "" {
		t.Fatalf("gc run: %+v", st)
	}
	if msg := crane.mustFail("manifest", "--insecure", reg.ref(repo)+"@"+digests[2]); !strings.Contains(msg, "MANIFEST_UNKNOWN") {
		t.Fatalf("manifest of a deleted repository: %s", msg)
	}
	if out := strata.runStr("gc", "status", server); !strings.Contains(out, "last run:") {
		t.Fatalf("gc status: %s", out)
	}
}
