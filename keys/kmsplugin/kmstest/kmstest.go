// Package kmstest runs a real Kubernetes KMS v2 plugin process for tests: the
// test binary itself, started again, serving k8s.io/kms's pkg/service
// GRPCService on a unix socket with a toy key service (AES-256-GCM under keys
// derived from a random seed and the key id). Its state is read from files
// in a directory on every call, so a test can rotate the key ("current"),
// destroy key ids ("destroyed", space separated) and make it unhealthy
// ("healthz").
//
// A test binary that uses it calls MaybeServe first thing in TestMain.
package kmstest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/kms/pkg/service"
)

const (
	envSocket = "STRATA_TEST_KMS_PLUGIN_SOCKET"
	envDir    = "STRATA_TEST_KMS_PLUGIN_DIR"
	envSeed   = "STRATA_TEST_KMS_PLUGIN_SEED"
	// NonceAnnotation is where the plugin keeps each ciphertext's nonce.
	NonceAnnotation = "nonce.kms.strata.test"
)

// MaybeServe serves the plugin and exits when this process was started as
// one by Start; otherwise it returns at once.
func MaybeServe() {
	sock := os.Getenv(envSocket)
	if sock == "" {
		return
	}
	seed, err := hex.DecodeString(os.Getenv(envSeed))
	if err != nil || len(seed) == 0 {
		fmt.Fprintln(os.Stderr, "plugin: bad seed")
		os.Exit(2)
	}
	os.Remove(sock) // a stale socket from a previous run
	svc := service.NewGRPCService(sock, 5*time.Second, &toyKMS{dir: os.Getenv(envDir), seed: seed})
	if err := svc.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "plugin:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// toyKMS implements service.Service.
type toyKMS struct {
	dir  string
	seed []byte
}

func (k *toyKMS) file(name, def string) string {
	b, err := os.ReadFile(filepath.Join(k.dir, name))
	if err != nil {
		return def
	}
	return strings.TrimSpace(string(b))
}

func (k *toyKMS) aead(keyID string) (cipher.AEAD, error) {
	for _, d := range strings.Fields(k.file("destroyed", "")) {
		if d == keyID {
			return nil, fmt.Errorf("key %s destroyed", keyID)
		}
	}
	mac := hmac.New(sha256.New, k.seed)
	mac.Write([]byte(keyID))
	block, err := aes.NewCipher(mac.Sum(nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func (k *toyKMS) Status(context.Context) (*service.StatusResponse, error) {
	return &service.StatusResponse{Version: "v2", Healthz: k.file("healthz", "ok"), KeyID: k.file("current", "key-1")}, nil
}

func (k *toyKMS) Encrypt(_ context.Context, _ string, data []byte) (*service.EncryptResponse, error) {
	id := k.file("current", "key-1")
	a, err := k.aead(id)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, a.NonceSize())
	rand.Read(nonce)
	return &service.EncryptResponse{
		Ciphertext:  a.Seal(nil, nonce, data, []byte(id)),
		KeyID:       id,
		Annotations: map[string][]byte{NonceAnnotation: nonce},
	}, nil
}

func (k *toyKMS) Decrypt(_ context.Context, _ string, req *service.DecryptRequest) ([]byte, error) {
	a, err := k.aead(req.KeyID)
	if err != nil {
		return nil, err
	}
	nonce := req.Annotations[NonceAnnotation]
	if len(nonce) != a.NonceSize() {
		return nil, errors.New("missing nonce annotation")
	}
	return a.Open(nil, nonce, req.Ciphertext, []byte(req.KeyID))
}

// Plugin is a running plugin process.
type Plugin struct {
	Sock string // its unix socket
	Dir  string // its state files
	tb   testing.TB
	seed string
	cmd  *exec.Cmd
}

// Start starts a plugin process (stopped when the test ends) and waits
// until it listens.
func Start(tb testing.TB) *Plugin {
	tb.Helper()
	dir := tb.TempDir()
	seed := make([]byte, 32)
	rand.Read(seed)
	p := &Plugin{tb: tb, Sock: filepath.Join(dir, "kms.sock"), Dir: dir, seed: hex.EncodeToString(seed)}
	p.Start()
	tb.Cleanup(p.Stop)
	return p
}

// Start starts the plugin again after Stop, with the same seed and state.
func (p *Plugin) Start() {
	p.tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envSocket+"="+p.Sock, envDir+"="+p.Dir, envSeed+"="+p.seed)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		p.tb.Fatal(err)
	}
	p.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(p.Sock); err == nil {
			return
		}
		if time.Now().After(deadline) {
			p.tb.Fatal("plugin did not start listening")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop kills the plugin process.
func (p *Plugin) Stop() {
	if p.cmd != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		p.cmd = nil
	}
}

// Set writes one of the plugin's state files ("current", "destroyed",
// "healthz").
func (p *Plugin) Set(name, value string) {
	p.tb.Helper()
	if err := os.WriteFile(filepath.Join(p.Dir, name), []byte(value), 0o600); err != nil {
		p.tb.Fatal(err)
	}
}
