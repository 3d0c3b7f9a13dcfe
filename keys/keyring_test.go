package keys_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/strata-registry/strata/keys"
)

var bg = context.Background()

func openNew(t *testing.T) (*keys.Keyring, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sub", "keyring.json")
	k, err := keys.OpenKeyring(path, true)
	if err != nil {
		t.Fatal(err)
	}
	return k, path
}

func TestKeyringCreatedPrivate(t *testing.T) {
	k, path := openNew(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring mode %#o, want 0600", st.Mode().Perm())
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("keyring directory: %v, %v", st.Mode(), err)
	}
	if v, err := k.CurrentVersion(bg, keys.DefaultKeyName); err != nil || v != "1" {
		t.Fatalf("default key current version %q, %v", v, err)
	}
	if err := k.Status(bg); err != nil {
		t.Fatal(err)
	}
	// Reopening reads the same keys.
	wk, err := keys.Wrap(bg, k, keys.DefaultKeyName, keys.NewDataKey())
	if err != nil {
		t.Fatal(err)
	}
	k2, err := keys.OpenKeyring(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Unwrap(bg, k2, wk); err != nil {
		t.Fatal(err)
	}
	// No temporary files are left beside it.
	entries, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range entries {
		if e.Name() != "keyring.json" && e.Name() != "keyring.json.lock" {
			t.Fatalf("left over: %s", e.Name())
		}
	}
}

func TestKeyringMissing(t *testing.T) {
	_, err := keys.OpenKeyring(filepath.Join(t.TempDir(), "nope.json"), false)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("got %v, want a clear not-exist error", err)
	}
}

func TestKeyringRefusesLoosePermissions(t *testing.T) {
	k, path := openNew(t)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o666} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := keys.OpenKeyring(path, true)
		if !errors.Is(err, keys.ErrKeyringPermissions) || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %#o: got %v, want ErrKeyringPermissions", mode, err)
		}
		// A running provider notices too, and stops serving.
		if err := k.Status(bg); !errors.Is(err, keys.ErrKeyringPermissions) {
			t.Fatalf("mode %#o: Status %v", mode, err)
		}
		if _, err := keys.Wrap(bg, k, keys.DefaultKeyName, keys.NewDataKey()); !errors.Is(err, keys.ErrKeyringPermissions) {
			t.Fatalf("mode %#o: Wrap %v", mode, err)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.OpenKeyring(path, false); err != nil {
		t.Fatalf("read-only for the owner is fine: %v", err)
	}
}

func TestKeyringRefusesBadChecksum(t *testing.T) {
	_, path := openNew(t)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Change one character of the key material (base64), keeping the JSON
	// valid.
	i := bytes.Index(orig, []byte(`"material": "`)) + len(`"material": "`)
	bad := bytes.Clone(orig)
	if bad[i] == 'A' {
		bad[i] = 'B'
	} else {
		bad[i] = 'A'
	}
	for name, data := range map[string][]byte{
		"flipped material": bad,
		"truncated":        orig[:len(orig)/2],
		"not json":         []byte("hello"),
		"empty":            nil,
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := keys.OpenKeyring(path, true); !errors.Is(err, keys.ErrKeyringCorrupt) {
			t.Fatalf("%s: got %v, want ErrKeyringCorrupt", name, err)
		}
	}
	// Whitespace is not content: a reformatted file is still good.
	var loose bytes.Buffer
	loose.Write(bytes.ReplaceAll(orig, []byte("\n"), []byte("\n\n  ")))
	if err := os.WriteFile(path, loose.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.OpenKeyring(path, false); err != nil {
		t.Fatalf("reformatted keyring: %v", err)
	}
}

func TestKeyringWrapBindsNameAndVersion(t *testing.T) {
	k, _ := openNew(t)
	if err := k.Create("repo/a"); err != nil {
		t.Fatal(err)
	}
	if err := k.Create("repo/b"); err != nil {
		t.Fatal(err)
	}
	if err := k.Create("repo/a"); !errors.Is(err, keys.ErrKeyExists) {
		t.Fatalf("second Create: %v", err)
	}
	if err := k.Create("bad name"); !errors.Is(err, keys.ErrInvalidKey) {
		t.Fatalf("Create of a bad name: %v", err)
	}
	dk := keys.NewDataKey()
	wk, err := keys.Wrap(bg, k, "repo/a", dk)
	if err != nil {
		t.Fatal(err)
	}
	if wk.KeyName != "repo/a" || wk.KeyVersion != "1" || bytes.Contains(wk.Ciphertext, dk) {
		t.Fatalf("wrapped: %+v", wk)
	}
	got, err := keys.Unwrap(bg, k, wk)
	if err != nil || !bytes.Equal(got, dk) {
		t.Fatalf("Unwrap: %x, %v", got, err)
	}
	// Two wraps of one key differ (fresh salt and nonce).
	wk2, _ := keys.Wrap(bg, k, "repo/a", dk)
	if bytes.Equal(wk.Ciphertext, wk2.Ciphertext) {
		t.Fatal("two wraps gave the same ciphertext")
	}

	if _, err := k.Rotate("repo/a"); err != nil {
		t.Fatal(err)
	}
	bad := map[string]keys.WrappedKey{}
	w := wk.Clone()
	w.KeyName = "repo/b"
	bad["other name"] = w
	w = wk.Clone()
	w.KeyVersion = "2"
	bad["other version"] = w
	for i := range wk.Ciphertext {
		w = wk.Clone()
		w.Ciphertext[i] ^= 1
		bad[fmt.Sprintf("flipped byte %d", i)] = w
	}
	w = wk.Clone()
	w.Ciphertext = w.Ciphertext[:len(w.Ciphertext)-1]
	bad["truncated"] = w
	for name, w := range bad {
		if _, err := keys.Unwrap(bg, k, w); !errors.Is(err, keys.ErrDecrypt) {
			t.Fatalf("%s: got %v, want ErrDecrypt", name, err)
		}
	}
	if _, err := keys.Unwrap(bg, k, keys.WrappedKey{KeyName: "nope", KeyVersion: "1", Ciphertext: wk.Ciphertext}); !errors.Is(err, keys.ErrKeyNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := keys.Unwrap(bg, k, keys.WrappedKey{KeyName: "repo/a", KeyVersion: "9", Ciphertext: wk.Ciphertext}); !errors.Is(err, keys.ErrKeyVersionNotFound) {
		t.Fatalf("unknown version: %v", err)
	}
	if _, err := keys.Wrap(bg, k, "repo/a", dk[:16]); !errors.Is(err, keys.ErrInvalidKey) {
		t.Fatalf("short data key: %v", err)
	}
	// A wrapped secret of the wrong size is not a data key.
	odd, err := k.Encrypt(bg, "repo/a", []byte("short"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Unwrap(bg, k, odd); !errors.Is(err, keys.ErrDecrypt) {
		t.Fatalf("5-byte secret unwrapped as a data key: %v", err)
	}
}

func TestKeyringRotateRetire(t *testing.T) {
	k, _ := openNew(t)
	name := keys.DefaultKeyName
	dk := keys.NewDataKey()
	old, err := keys.Wrap(bg, k, name, dk)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := k.Rotate(name)
	if err != nil || v2 != "2" {
		t.Fatalf("Rotate: %q, %v", v2, err)
	}
	if stale, err := keys.Stale(bg, k, old); err != nil || !stale {
		t.Fatalf("old wrap stale = %v, %v", stale, err)
	}
	// The old version still decrypts until it is retired.
	if got, err := keys.Unwrap(bg, k, old); err != nil || !bytes.Equal(got, dk) {
		t.Fatalf("old version after rotation: %v", err)
	}
	if err := k.Retire(name, "2"); err == nil {
		t.Fatal("retired the current version")
	}
	fresh, err := keys.Rewrap(bg, k, old, name)
	if err != nil || fresh.KeyVersion != "2" {
		t.Fatalf("Rewrap: %+v, %v", fresh, err)
	}
	if stale, _ := keys.Stale(bg, k, fresh); stale {
		t.Fatal("rewrapped key is stale")
	}
	if err := k.Retire(name, "1"); err != nil {
		t.Fatal(err)
	}
	if err := k.Retire(name, "1"); err != nil {
		t.Fatalf("retiring twice: %v", err)
	}
	if _, err := keys.Unwrap(bg, k, old); !errors.Is(err, keys.ErrKeyVersionRetired) {
		t.Fatalf("retired version: %v", err)
	}
	if got, err := keys.Unwrap(bg, k, fresh); err != nil || !bytes.Equal(got, dk) {
		t.Fatalf("rewrapped: %v", err)
	}
	infos, err := k.Keys()
	if err != nil || len(infos) != 1 || infos[0].Current != "2" || len(infos[0].Versions) != 2 ||
		infos[0].Versions[0].Retired.IsZero() || !infos[0].Versions[1].Retired.IsZero() {
		t.Fatalf("Keys: %+v, %v", infos, err)
	}
}

func TestKeyringDestroy(t *testing.T) {
	k, path := openNew(t)
	if err := k.Create("repo/x"); err != nil {
		t.Fatal(err)
	}
	wk, err := keys.Wrap(bg, k, "repo/x", keys.NewDataKey())
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if err := k.Destroy("repo/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Unwrap(bg, k, wk); !errors.Is(err, keys.ErrKeyDestroyed) {
		t.Fatalf("unwrap with a destroyed key: %v", err)
	}
	if _, err := keys.Wrap(bg, k, "repo/x", keys.NewDataKey()); !errors.Is(err, keys.ErrKeyDestroyed) {
		t.Fatalf("wrap with a destroyed key: %v", err)
	}
	if err := k.Create("repo/x"); !errors.Is(err, keys.ErrKeyExists) {
		t.Fatalf("re-creating a destroyed name: %v", err)
	}
	if err := k.Destroy("repo/x"); err != nil {
		t.Fatalf("destroying twice: %v", err)
	}
	if err := k.Destroy("nope"); !errors.Is(err, keys.ErrKeyNotFound) {
		t.Fatalf("destroying an unknown key: %v", err)
	}
	// Its material is gone from the file; the default key's is not.
	after, _ := os.ReadFile(path)
	if n, m := bytes.Count(before, []byte(`"material"`)), bytes.Count(after, []byte(`"material"`)); n != 2 || m != 1 {
		t.Fatalf("material entries before %d, after %d", n, m)
	}
	// Even a fresh process cannot use it.
	k2, err := keys.OpenKeyring(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Unwrap(bg, k2, wk); !errors.Is(err, keys.ErrKeyDestroyed) {
		t.Fatalf("fresh process: %v", err)
	}
}

// Two Keyrings on one file, as a server and a command-line rotation would
// be: each sees the other's changes, and concurrent changes are all kept.
func TestKeyringSharedFile(t *testing.T) {
	server, path := openNew(t)
	cli, err := keys.OpenKeyring(path, false)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := keys.Wrap(bg, server, keys.DefaultKeyName, keys.NewDataKey())
	if _, err := cli.Rotate(keys.DefaultKeyName); err != nil {
		t.Fatal(err)
	}
	wk, err := keys.Wrap(bg, server, keys.DefaultKeyName, keys.NewDataKey())
	if err != nil || wk.KeyVersion != "2" {
		t.Fatalf("server wraps with %q after the CLI rotated (%v)", wk.KeyVersion, err)
	}
	if err := cli.Retire(keys.DefaultKeyName, "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Unwrap(bg, server, old); !errors.Is(err, keys.ErrKeyVersionRetired) {
		t.Fatalf("server unwraps a version the CLI retired: %v", err)
	}

	var wg sync.WaitGroup
	const n = 8
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kr := server
			if i%2 == 1 {
				kr = cli
			}
			if _, err := kr.Rotate(keys.DefaultKeyName); err != nil {
				t.Error(err)
			}
			if err := kr.Create(fmt.Sprintf("k%d", i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, kr := range []*keys.Keyring{server, cli} {
		infos, err := kr.Keys()
		if err != nil {
			t.Fatal(err)
		}
		if len(infos) != n+1 || infos[0].Name != keys.DefaultKeyName || len(infos[0].Versions) != n+2 || infos[0].Current != fmt.Sprint(n+2) {
			t.Fatalf("after concurrent changes: %+v", infos)
		}
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode after rewrites %#o", st.Mode().Perm())
	}
}

func TestMux(t *testing.T) {
	local, _ := openNew(t)
	other, _ := openNew(t)
	if err := other.Create("kms-prod"); err != nil {
		t.Fatal(err)
	}
	m := keys.NewMux(local)
	m.Handle("kms-prod", other)
	for _, name := range []string{keys.DefaultKeyName, "kms-prod"} {
		dk := keys.NewDataKey()
		wk, err := keys.Wrap(bg, m, name, dk)
		if err != nil {
			t.Fatal(err)
		}
		got, err := keys.Unwrap(bg, m, wk)
		if err != nil || !bytes.Equal(got, dk) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	wk, _ := keys.Wrap(bg, m, "kms-prod", keys.NewDataKey())
	if _, err := keys.Unwrap(bg, local, wk); !errors.Is(err, keys.ErrKeyNotFound) {
		t.Fatalf("routed to the wrong provider: %v", err)
	}
	if err := m.Status(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.NewMux(nil).CurrentVersion(bg, "x"); !errors.Is(err, keys.ErrKeyNotFound) {
		t.Fatalf("no fallback: %v", err)
	}
}
