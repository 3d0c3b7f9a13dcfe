package kmsplugin_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/keys/kmsplugin"
	"github.com/strata-registry/strata/keys/kmsplugin/kmstest"
)

var bg = context.Background()

// The tests run a real KMS v2 plugin process (kmstest).
func TestMain(m *testing.M) {
	kmstest.MaybeServe()
	os.Exit(m.Run())
}

type plugin = kmstest.Plugin

func startPlugin(t *testing.T) *plugin { return kmstest.Start(t) }

func newProvider(t *testing.T, p *plugin) *kmsplugin.Provider {
	t.Helper()
	prov, err := kmsplugin.New(kmsplugin.Config{Name: "vault-prod", Socket: "unix://" + p.Sock, Timeout: 2 * time.Second})
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
	if wk.KeyName != "vault-prod" || wk.KeyVersion != "key-1" || len(wk.Annotations[kmstest.NonceAnnotation]) != 12 || bytes.Contains(wk.Ciphertext, dk) {
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

	p.Set("current", "key-2") // the KMS rotated its key
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
	p.Set("destroyed", "key-1") // the old key is deleted in the KMS
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

	p.Set("healthz", "vault sealed")
	if err := prov.Status(bg); !errors.Is(err, keys.ErrUnavailable) || !strings.Contains(err.Error(), "vault sealed") {
		t.Fatalf("unhealthy plugin: %v", err)
	}
	p.Set("healthz", "ok")

	p.Stop()
	if err := prov.Status(bg); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("plugin down: Status %v", err)
	}
	if _, err := keys.Unwrap(bg, prov, wk); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("plugin down: Unwrap %v", err)
	}
	p.Start() // same seed: same keys
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
	p.Stop()
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
