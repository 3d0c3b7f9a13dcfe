package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var (
	dockerPushDigestRe = regexp.MustCompile(`digest: (sha256:[0-9a-f]{64}) size: \d+`)
	dockerPullDigestRe = regexp.MustCompile(`Digest: (sha256:[0-9a-f]{64})`)
)

// TestDocker builds an image FROM scratch with the docker CLI, pushes it,
// removes it locally, pulls it back and compares image ID, repository digest
// and file content. It runs only where `docker info` succeeds: the daemon does
// the pushing, and it treats 127.0.0.0/8 as an insecure registry by default.
func TestDocker(t *testing.T) {
	t.Parallel()
	bin := lookTool("docker")
	if bin == "" {
		t.Skip("docker CLI not found on PATH")
	}
	if reg.plain && !isLoopbackHost(reg.host) {
		t.Skipf("registry %s is plain HTTP and not on 127.0.0.0/8, which the docker daemon would refuse as insecure", reg.host)
	}
	c := newCLIAt(t, "docker", bin, 5*time.Minute)
	if _, errOut, err := c.exec("info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Skipf("docker info failed, no usable daemon: %v: %s", err, strings.TrimSpace(string(errOut)))
	}

	// Build context: a Dockerfile FROM scratch and one random file.
	content := randomBytes(t, 512<<10+99)
	ctxDir := filepath.Join(t.TempDir(), "context")
	writeFile(t, filepath.Join(ctxDir, "random.bin"), content)
	writeFile(t, filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nCOPY random.bin /random.bin\nLABEL dev.strata.e2e.run="+runID+"\n"))

	repo := c.repo("scratch")
	local := "strata-e2e-" + c.id + ":build"
	remote := reg.ref(repo) + ":e2e"
	container := "strata-e2e-" + c.id
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, args := range [][]string{{"rm", "-f", container}, {"rmi", "-f", local, remote}} {
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = mergeEnv(os.Environ(), c.env)
			_ = cmd.Run()
		}
	})

	c.run("build", "-q", "-t", local, ctxDir)
	imageID := c.runStr("image", "inspect", "--format", "{{.Id}}", local)
	c.run("tag", local, remote)

	out := string(c.run("push", remote))
	m := dockerPushDigestRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no digest in docker push output:\n%s", out)
	}
	pushed := m[1]

	// The registry serves the tag with the digest docker reported.
	resp, body := reg.do(t, c.ctx, http.MethodHead, "/v2/"+repo+"/manifests/e2e", manifestAccept)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD /v2/%s/manifests/e2e: %s %s", repo, resp.Status, body)
	}
	equal(t, "Docker-Content-Digest of the pushed tag", resp.Header.Get("Docker-Content-Digest"), pushed)

	// Forget the image locally, then pull it back.
	c.run("rmi", local, remote)
	c.mustFail("image", "inspect", remote)
	out = string(c.run("pull", remote))
	if m := dockerPullDigestRe.FindStringSubmatch(out); m == nil || m[1] != pushed {
		t.Fatalf("docker pull output does not show digest %s:\n%s", pushed, out)
	}
	equal(t, "image ID after the round trip", c.runStr("image", "inspect", "--format", "{{.Id}}", remote), imageID)
	repoDigests := c.runStr("image", "inspect", "--format", `{{join .RepoDigests "\n"}}`, remote)
	wantRepoDigest := reg.ref(repo) + "@" + pushed
	if !strings.Contains("\n"+repoDigests+"\n", "\n"+wantRepoDigest+"\n") {
		t.Fatalf("RepoDigests = %q, want %s among them", repoDigests, wantRepoDigest)
	}

	// The file inside the pulled image is the one we built with.
	c.run("create", "--name", container, remote, "/none")
	got := filepath.Join(t.TempDir(), "random.bin")
	c.run("cp", container+":/random.bin", got)
	sameBytes(t, "/random.bin from the pulled image", readFile(t, got), content)
}

func isLoopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
