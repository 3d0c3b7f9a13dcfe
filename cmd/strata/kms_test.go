package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-registry/strata/keys/kmsplugin/kmstest"
)

func TestMain(m *testing.M) {
	kmstest.MaybeServe() // this binary is also a KMS v2 plugin for TestServeWithKMSPlugin
	os.Exit(m.Run())
}

// serve --dev with a real KMS v2 plugin as the default key: pushes wrap
// their data keys with the plugin, a rotation in the KMS is followed by
// `strata keys rotate --no-new-version`, and a plugin that is down makes
// pushes UNAVAILABLE (retryable) until it is back.
func TestServeWithKMSPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts strata")
	}
	plugin := kmstest.Start(t)
	bin := buildStrata(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	url := "http://" + addr
	var out syncBuffer
	srv := exec.Command(bin, "serve", "--dev", "--data-dir", t.TempDir(), "--http-addr", addr,
		"--kms-plugin", "vault=unix://"+plugin.Sock, "--key-name", "vault")
	srv.Stdout, srv.Stderr = &out, &out
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Kill()
		srv.Wait()
		if t.Failed() {
			t.Logf("strata serve:\n%s", out.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		if resp, err := http.Get(url + "/v2/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-ctx.Done():
			t.Fatal("strata serve not ready")
		case <-time.After(50 * time.Millisecond):
		}
	}
	strata := func(args ...string) string {
		t.Helper()
		b, err := exec.CommandContext(ctx, bin, append(args, "--server", url)...).CombinedOutput()
		if err != nil {
			t.Fatalf("strata %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	blobs := [][]byte{bytes.Repeat([]byte("kms layer "), 100000), []byte(`{"os":"linux"}`)}
	for _, b := range blobs {
		if err := pushBlob(ctx, url, "kms/app", b); err != nil {
			t.Fatal(err)
		}
	}
	if st := strata("keys", "rotate", "--no-new-version"); !strings.Contains(st, "key vault, copies seen before the pass: version key-1: 2") {
		t.Fatalf("data keys not wrapped by the plugin's key-1:\n%s", st)
	}
	plugin.Set("current", "key-2") // the KMS rotates its key
	if st := strata("keys", "rotate", "--no-new-version"); !strings.Contains(st, "2 stale copies, 2 rewrapped") {
		t.Fatalf("rewrap after the KMS rotated:\n%s", st)
	}
	if st := strata("keys", "status"); !strings.Contains(st, "done") {
		t.Fatalf("status:\n%s", st)
	}
	if st := strata("keys", "rotate", "--no-new-version"); !strings.Contains(st, "version key-2: 2") || !strings.Contains(st, "0 stale") {
		t.Fatalf("after the rewrap:\n%s", st)
	}
	for _, b := range blobs {
		if status, got, _ := do(t, ctx, http.MethodGet, url+"/v2/kms/app/blobs/"+sha256Digest(b), "", nil); status != 200 || !bytes.Equal(got, b) {
			t.Fatalf("read back: %d, %d bytes", status, len(got))
		}
	}

	// The plugin goes down: a push is refused as retryable, then succeeds.
	plugin.Stop()
	err = pushBlob(ctx, url, "kms/app", []byte("while the KMS is down"))
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("push with the KMS down: %v", err)
	}
	plugin.Start()
	var perr error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if perr = pushBlob(ctx, url, "kms/app", []byte("after the KMS came back")); perr == nil {
			break
		}
	}
	if perr != nil {
		t.Fatalf("push after the KMS came back: %v", perr)
	}
	// A bad --kms-plugin stops serve with the reason.
	b, err := exec.CommandContext(ctx, bin, "serve", "--dev", "--data-dir", filepath.Join(t.TempDir(), "x"), "--http-addr", "127.0.0.1:0",
		"--kms-plugin", "novalue").CombinedOutput()
	if err == nil || !strings.Contains(string(b), "want NAME=SOCKET") {
		t.Fatalf("serve with a bad --kms-plugin: %v\n%s", err, b)
	}
}
