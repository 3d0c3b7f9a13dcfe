package e2e

import (
	"strings"
	"testing"
	"time"
)

// Encryption keys through the CLI against the running server (serve --dev
// encrypts with its keyring): a rotation rewraps every data key while the
// images stay pullable, the old version is retired, and a repository with
// a key of its own loses that key when it is deleted (crypto-shredding).
func TestKeysRotateRetireAndShred(t *testing.T) {
	if strataBin == "" {
		t.Skip("keys are Strata's own; STRATA_E2E_URL targets another registry")
	}
	crane := newCLI(t, "crane", 3*time.Minute)
	strata := newCLIAt(t, "strata", strataBin, 3*time.Minute)
	server := "--server=" + reg.url
	repo := crane.repo("keys")
	img := makeImage(t, 3000, 500)
	dir := t.TempDir()
	img.writeLayout(t, dir, "v1")
	crane.run("push", "--insecure", dir, reg.ref(repo)+":v1")

	out := strata.runStr("keys", "rotate", server)
	if !strings.Contains(out, "is current; rewrapping") || !strings.Contains(out, "done (rotation of key default") {
		t.Fatalf("keys rotate:\n%s", out)
	}
	crane.run("validate", "--insecure", "--remote", reg.ref(repo)+":v1")
	list := strata.runStr("keys", "list", server)
	if !strings.Contains(list, "default") {
		t.Fatalf("keys list:\n%s", list)
	}
	var oldVersion string
	for _, l := range lines(list) {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "default" {
			vs := strings.Split(f[2], ",")
			if len(vs) < 2 {
				t.Fatalf("default has one version after a rotation:\n%s", list)
			}
			oldVersion = strings.TrimSuffix(vs[len(vs)-2], "(retired)")
		}
	}
	if msg := strata.mustFail("keys", "retire", "default", "99", server); !strings.Contains(msg, "not found") {
		t.Fatalf("retiring a version that does not exist: %s", msg)
	}
	strata.run("keys", "retire", "default", oldVersion, server)
	if list := strata.runStr("keys", "list", server); !strings.Contains(list, oldVersion+"(retired)") {
		t.Fatalf("after retire:\n%s", list)
	}
	crane.run("validate", "--insecure", "--remote", reg.ref(repo)+":v1")
	if st := strata.runStr("keys", "status", server); !strings.Contains(st, "done") {
		t.Fatalf("keys status:\n%s", st)
	}

	// A repository with its own key, shredded with it.
	own := crane.repo("keys-own")
	key := strings.ReplaceAll(own, "/", "-")
	strata.run("repo", "create", own, "--kms-key", key, server)
	crane.run("push", "--insecure", dir, reg.ref(own)+":v1")
	crane.run("validate", "--insecure", "--remote", reg.ref(own)+":v1")
	if out := strata.runStr("repo", "delete", own, "--force", server); !strings.Contains(out, "destroyed its key \""+key+"\"") {
		t.Fatalf("repo delete:\n%s", out)
	}
	if list := strata.runStr("keys", "list", server); !strings.Contains(list, key) || !strings.Contains(list, "destroyed") {
		t.Fatalf("keys list after shredding:\n%s", list)
	}
	// The image pushed to both repositories still pulls from the first.
	crane.run("validate", "--insecure", "--remote", reg.ref(repo)+":v1")
}
