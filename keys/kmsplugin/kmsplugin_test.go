package kmsplugin_test

import (
	"bytes"
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

	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/keys/kmsplugin"
)

var bg = context.Background()

// The tests run a real KMS v2 plugin: this test binary, started again as a
// separate process, serving k8s.io/kms's pkg/service GRPCService on a unix
// socket with the toy key service below. Its state is read from files in a
// directory on every call, so a test can rotate the key ("current"), destroy
// versions ("destroyed") and make it unhealthy ("healthz").
const (
	envSocket = "STRATA_TEST_KMS_PLUGIN_SOCKET"
	envDir    = "STRATA_TEST_KMS_PLUGIN_DIR"
	envSeed   = "STRATA_TEST_KMS_PLUGIN_SEED"
	nonceAnno = "nonce.kms.strata.test"
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(envSocket); sock != "" {
		os.Exit(servePlugin(sock))
	}
	os.Exit(m.Run())
}

func servePlugin(sock string) int {
	seed, err := hex.DecodeString(os.Getenv(envSeed))
	if err != nil || len(seed) == 0 {
		fmt.Fprintln(os.Stderr, "plugin: bad seed")
		return 2
	}
	os.Remove(sock) // a stale socket from a previous run
	svc := service.NewGRPCService(sock, 5*time.Second, &toyKMS{dir: os.Getenv(envDir), seed: seed})
	if err := svc.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "plugin:", err)
		return 1
	}
	return 0
}

// toyKMS implements service.Service: AES-256-GCM under keys derived from a
// seed and the key id, the nonce returned as an annotation.
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
		Annotations: map[string][]byte{nonceAnno: nonce},
	}, nil
}

func (k *toyKMS) Decrypt(_ context.Context, _ string, req *service.DecryptRequest) ([]byte, error) {
	a, err := k.aead(req.KeyID)
	if err != nil {
		return nil, err
	}
	nonce := req.Annotations[nonceAnno]
	if len(nonce) != a.NonceSize() {
		return nil, errors.New("missing nonce annotation")
	}
	return a.Open(nil, nonce, req.Ciphertext, []byte(req.KeyID))
}

// plugin is a running plugin process.
type plugin struct {
	t    *testing.T
	sock string
	dir  string
	seed string
	cmd  *exec.Cmd
}

func startPlugin(t *testing.T) *plugin {
	t.Helper()
	dir := t.TempDir()
	seed := make([]byte, 32)
	rand.Read(seed)
	p := &plugin{t: t, sock: filepath.Join(dir, "kms.sock"), dir: dir, seed: hex.EncodeToString(seed)}
	p.start()
	t.Cleanup(p.stop)
	return p
}

func (p *plugin) start() {
	p.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envSocket+"="+p.sock, envDir+"="+p.dir, envSeed+"="+p.seed)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(p.sock); err == nil {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatal("plugin did not start listening")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *plugin) stop() {
	if p.cmd != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		p.cmd = nil
	}
}

func (p *plugin) set(name, value string) {
	p.t.Helper()
	if err := os.WriteFile(filepath.Join(p.dir, name), []byte(value), 0o600); err != nil {
		p.t.Fatal(err)
	}
}

func newProvider(t *testing.T, p *plugin) *kmsplugin.Provider {
	t.Helper()
	prov, err := kmsplugin.New(kmsplugin.Config{Name: "vault-prod", Socket: "unix://" + p.sock, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prov.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := prov.Status(bg)
		if err == nil {
			return prov
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin status: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPluginRoundTrip(t *testing.T) {
	p := startPlugin(t)
	prov := newProvider(t, p)

	dk := keys.NewDataKey()
	wk, err := keys.Wrap(bg, prov, "vault-prod", dk)
	if err != nil {
		t.Fatal(err)
	}
	if wk.KeyName != "vault-prod" || wk.KeyVersion != "key-1" || len(wk.Annotations[nonceAnno]) != 12 || bytes.Contains(wk.Ciphertext, dk) {
		t.Fatalf("wrapped: %+v", wk)
	}
	got, err := keys.Unwrap(bg, prov, wk)
	if err != nil || !bytes.Equal(got, dk) {
		t.Fatalf("Unwrap: %v", err)
	}
	if v, err := prov.CurrentVersion(bg, "vault-prod"); err != nil || v != "key-1" {
		t.Fatalf("CurrentVersion %q, %v", v, err)
	}

	if _, err := keys.Wrap(bg, prov, "other", dk); !errors.Is(err, keys.ErrKeyNotFound) {
		t.Fatalf("other key name: %v", err)
	}
	bad := map[string]keys.WrappedKey{}
	w := wk.Clone()
	w.Ciphertext[0] ^= 1
	bad["tampered ciphertext"] = w
	w = wk.Clone()
	w.Annotations = nil
	bad["annotations dropped"] = w
	w = wk.Clone()
	w.KeyVersion = "key-2"
	bad["other key id"] = w
	for name, w := range bad {
		if _, err := keys.Unwrap(bg, prov, w); !errors.Is(err, keys.ErrDecrypt) {
			t.Fatalf("%s: got %v, want ErrDecrypt", name, err)
		}
	}
}

func TestPluginRotationAndDestruction(t *testing.T) {
	p := startPlugin(t)
	prov := newProvider(t, p)
	dk := keys.NewDataKey()
	old, err := keys.Wrap(bg, prov, "vault-prod", dk)
	if err != nil {
		t.Fatal(err)
	}

	p.set("current", "key-2") // the KMS rotated its key
	if v, _ := prov.CurrentVersion(bg, "vault-prod"); v != "key-2" {
		t.Fatalf("CurrentVersion after rotation %q", v)
	}
	if stale, err := keys.Stale(bg, prov, old); err != nil || !stale {
		t.Fatalf("stale = %v, %v", stale, err)
	}
	fresh, err := keys.Rewrap(bg, prov, old, "vault-prod")
	if err != nil || fresh.KeyVersion != "key-2" {
		t.Fatalf("Rewrap: %+v, %v", fresh, err)
	}
	for _, w := range []keys.WrappedKey{old, fresh} {
		if got, err := keys.Unwrap(bg, prov, w); err != nil || !bytes.Equal(got, dk) {
			t.Fatalf("unwrap %s: %v", w.KeyVersion, err)
		}
	}
	p.set("destroyed", "key-1") // the old key is deleted in the KMS
	if _, err := keys.Unwrap(bg, prov, old); !errors.Is(err, keys.ErrDecrypt) {
		t.Fatalf("unwrap under a destroyed KMS key: %v", err)
	}
	if got, err := keys.Unwrap(bg, prov, fresh); err != nil || !bytes.Equal(got, dk) {
		t.Fatalf("rewrapped copy: %v", err)
	}
}

func TestPluginUnhealthyAndRestart(t *testing.T) {
	p := startPlugin(t)
	prov := newProvider(t, p)
	wk, err := keys.Wrap(bg, prov, "vault-prod", keys.NewDataKey())
	if err != nil {
		t.Fatal(err)
	}

	p.set("healthz", "vault sealed")
	if err := prov.Status(bg); !errors.Is(err, keys.ErrUnavailable) || !strings.Contains(err.Error(), "vault sealed") {
		t.Fatalf("unhealthy plugin: %v", err)
	}
	p.set("healthz", "ok")

	p.stop()
	if err := prov.Status(bg); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("plugin down: Status %v", err)
	}
	if _, err := keys.Unwrap(bg, prov, wk); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("plugin down: Unwrap %v", err)
	}
	p.start() // same seed: same keys
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := keys.Unwrap(bg, prov, wk)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the plugin restarted: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMuxWithKeyring(t *testing.T) {
	p := startPlugin(t)
	prov := newProvider(t, p)
	kr, err := keys.OpenKeyring(filepath.Join(t.TempDir(), "keyring.json"), true)
	if err != nil {
		t.Fatal(err)
	}
	m := keys.NewMux(kr)
	m.Handle(prov.Name(), prov)
	dk := keys.NewDataKey()
	for _, name := range []string{keys.DefaultKeyName, "vault-prod"} {
		wk, err := keys.Wrap(bg, m, name, dk)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := keys.Unwrap(bg, m, wk); err != nil || !bytes.Equal(got, dk) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if err := m.Status(bg); err != nil {
		t.Fatal(err)
	}
	p.stop()
	if err := m.Status(bg); err == nil || !strings.Contains(err.Error(), `"vault-prod"`) {
		t.Fatalf("Mux status with the plugin down: %v", err)
	}
}

func TestConfig(t *testing.T) {
	if _, err := kmsplugin.New(kmsplugin.Config{Name: "x"}); err == nil {
		t.Fatal("no socket accepted")
	}
	if _, err := kmsplugin.New(kmsplugin.Config{Name: "bad name", Socket: "/tmp/x.sock"}); err == nil {
		t.Fatal("bad name accepted")
	}
}
