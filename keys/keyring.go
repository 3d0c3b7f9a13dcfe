package keys

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
)

// DefaultKeyName is the key a new keyring file starts with: the KEK of
// repositories that ask for no key of their own (ECR's AES256 setting).
const DefaultKeyName = "default"

var (
	// ErrKeyringPermissions: the keyring file may be read by group or
	// others. It is refused rather than used: a leaked keyring is every key.
	ErrKeyringPermissions = errors.New("keys: keyring file permissions too open")
	// ErrKeyringCorrupt: the keyring file does not parse or fails its
	// checksum.
	ErrKeyringCorrupt = errors.New("keys: keyring file corrupt")
)

// Keyring is the local key provider: versioned 256-bit KEKs kept in one file.
//
// The file is JSON:
//
//	{
//	  "format": "strata-keyring/1",
//	  "keyring": {"keys": [{"name": "default", "current": 2, "versions": [
//	      {"version": 1, "created_unix": ..., "retired_unix": ...},
//	      {"version": 2, "created_unix": ..., "material": "<base64 of 32 bytes>"}]}]},
//	  "sha256": "<hex SHA-256 of the compact JSON of the keyring object>"
//	}
//
// It must have mode 0600 or stricter (no access for group or others): a file
// with looser permissions, that fails its checksum or does not validate is
// refused with a clear error, so a wrong or damaged keyring stops a node at
// start. Every change (Create, Rotate, Retire, Destroy) takes an exclusive
// lock on <path>.lock, re-reads the file, and replaces it atomically (write a
// temporary file, fsync, rename, fsync the directory), so that a command-line
// rotation and a running server on the same host never lose each other's
// changes. Every operation first checks (one stat) whether the file changed
// under it and reloads it if so, so that a running server never wraps with a
// version another process retired.
//
// Wrapping: AES-256-GCM under a one-time subkey, HKDF-SHA256(KEK, random
// 128-bit salt), with a random 96-bit nonce, and the key name and version
// bound as associated data. The per-wrap subkey means a KEK version may wrap
// any number of data keys without any bound on nonce collisions.
//
// Limits: a destroyed key's bytes are gone from the current file, but older
// copies of the file (backups, a copy-on-write filesystem's old blocks) still
// hold them; keep backups of the keyring apart from backups of the data and
// expire them. In a cluster every node that wraps or unwraps needs the same
// file; distribute it (a secret) and change it in one place.
type Keyring struct {
	path string

	mu    sync.Mutex
	body  *keyringBody
	stamp os.FileInfo // of the file body was read from
}

var _ Provider = (*Keyring)(nil)

// keyringFile is the outer JSON object of the file.
type keyringFile struct {
	Format  string          `json:"format"`
	Keyring json.RawMessage `json:"keyring"`
	SHA256  string          `json:"sha256"`
}

const keyringFormat = "strata-keyring/1"

type keyringBody struct {
	Keys []*keyEntry `json:"keys"`
}

type keyEntry struct {
	Name string `json:"name"`
	// Current is the version Encrypt uses; 0 once destroyed.
	Current       uint32        `json:"current"`
	Versions      []*keyVersion `json:"versions"`
	DestroyedUnix int64         `json:"destroyed_unix,omitempty"`
}

type keyVersion struct {
	Version     uint32 `json:"version"`
	CreatedUnix int64  `json:"created_unix"`
	RetiredUnix int64  `json:"retired_unix,omitempty"`
	// Material is the 256-bit key; absent once retired or destroyed.
	Material []byte `json:"material,omitempty"`
}

// KeyInfo describes a key without its material.
type KeyInfo struct {
	Name      string
	Current   string // "" once destroyed
	Versions  []VersionInfo
	Destroyed time.Time // zero unless destroyed
}

// VersionInfo describes one version of a key.
type VersionInfo struct {
	Version string
	Created time.Time
	Retired time.Time // zero unless retired
}

// OpenKeyring opens the keyring file at path. When the file does not exist
// it is created (with a DefaultKeyName key, its directory with mode 0700 if
// missing) if create is true, and otherwise an error wrapping
// fs.ErrNotExist is returned. A file readable by group or others, or one
// that fails its checksum or validation, is refused (ErrKeyringPermissions,
// ErrKeyringCorrupt).
func OpenKeyring(path string, create bool) (*Keyring, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("keys: keyring %s: %w", path, err)
	}
	k := &Keyring{path: abs}
	body, st, err := readKeyring(abs)
	switch {
	case err == nil:
	case errors.Is(err, fs.ErrNotExist) && create:
		if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
			return nil, fmt.Errorf("keys: create keyring %s: %w", abs, err)
		}
		err = k.update(func(b *keyringBody) error {
			if len(b.Keys) == 0 { // nobody created it meanwhile
				b.Keys = append(b.Keys, newKeyEntry(DefaultKeyName))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		return k, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("keys: keyring %s does not exist (create it on first start): %w", abs, err)
	default:
		return nil, err
	}
	k.body, k.stamp = body, st
	return k, nil
}

// Path returns the absolute path of the keyring file.
func (k *Keyring) Path() string { return k.path }

func newKeyEntry(name string) *keyEntry {
	return &keyEntry{Name: name, Current: 1, Versions: []*keyVersion{newVersion(1)}}
}

func newVersion(v uint32) *keyVersion {
	return &keyVersion{Version: v, CreatedUnix: time.Now().Unix(), Material: NewDataKey()}
}

// readKeyring reads, checks and parses the keyring file.
func readKeyring(path string) (*keyringBody, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("keys: keyring %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("keys: keyring %s: %w", path, err)
	}
	if err := checkMode(path, st); err != nil {
		return nil, nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(f, 64<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("keys: keyring %s: %w", path, err)
	}
	body, err := parseKeyring(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrKeyringCorrupt, path, err)
	}
	return body, st, nil
}

func checkMode(path string, st os.FileInfo) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrKeyringCorrupt, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %#o, but a keyring must be accessible to its owner only (chmod 600 %s)",
			ErrKeyringPermissions, path, perm, path)
	}
	return nil
}

func parseKeyring(raw []byte) (*keyringBody, error) {
	var f keyringFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not a keyring file: %v", err)
	}
	if f.Format != keyringFormat {
		return nil, fmt.Errorf("format %q, want %q", f.Format, keyringFormat)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, f.Keyring); err != nil {
		return nil, fmt.Errorf("keyring object: %v", err)
	}
	sum := sha256.Sum256(compact.Bytes())
	if f.SHA256 != hex.EncodeToString(sum[:]) {
		return nil, errors.New("checksum mismatch (the file was damaged or edited by hand)")
	}
	var body keyringBody
	dec = json.NewDecoder(bytes.NewReader(compact.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return nil, fmt.Errorf("keyring object: %v", err)
	}
	if err := body.validate(); err != nil {
		return nil, err
	}
	return &body, nil
}

func (b *keyringBody) validate() error {
	seen := map[string]bool{}
	for _, e := range b.Keys {
		if e == nil {
			return errors.New("null key")
		}
		if err := ValidKeyName(e.Name); err != nil {
			return err
		}
		if seen[e.Name] {
			return fmt.Errorf("key %q appears twice", e.Name)
		}
		seen[e.Name] = true
		if len(e.Versions) == 0 {
			return fmt.Errorf("key %q has no versions", e.Name)
		}
		var last uint32
		for _, v := range e.Versions {
			switch {
			case v == nil:
				return fmt.Errorf("key %q: null version", e.Name)
			case v.Version <= last:
				return fmt.Errorf("key %q: versions not increasing at %d", e.Name, v.Version)
			case (v.RetiredUnix != 0 || e.DestroyedUnix != 0) && v.Material != nil:
				return fmt.Errorf("key %q version %d: retired or destroyed but still has material", e.Name, v.Version)
			case v.RetiredUnix == 0 && e.DestroyedUnix == 0 && len(v.Material) != DataKeySize:
				return fmt.Errorf("key %q version %d: material of %d bytes, want %d", e.Name, v.Version, len(v.Material), DataKeySize)
			}
			last = v.Version
		}
		if e.DestroyedUnix != 0 {
			if e.Current != 0 {
				return fmt.Errorf("key %q: destroyed but has a current version", e.Name)
			}
			continue
		}
		cur := e.version(e.Current)
		if cur == nil || cur.Material == nil {
			return fmt.Errorf("key %q: current version %d is missing or retired", e.Name, e.Current)
		}
	}
	return nil
}

func (b *keyringBody) key(name string) *keyEntry {
	for _, e := range b.Keys {
		if e.Name == name {
			return e
		}
	}
	return nil
}

func (e *keyEntry) version(v uint32) *keyVersion {
	for _, kv := range e.Versions {
		if kv.Version == v {
			return kv
		}
	}
	return nil
}

func marshalKeyring(b *keyringBody) ([]byte, error) {
	inner, err := json.Marshal(b) // compact: the checksum is over this
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(inner)
	out, err := json.MarshalIndent(keyringFile{Format: keyringFormat, Keyring: inner, SHA256: hex.EncodeToString(sum[:])}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// writeKeyring replaces the file at path with b atomically and durably.
func writeKeyring(path string, b *keyringBody) error {
	data, err := marshalKeyring(b)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*") // mode 0600
	if err != nil {
		return err
	}
	name := tmp.Name()
	defer os.Remove(name) // after a successful rename, there is nothing there
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(name, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// update applies change to the keyring as it is on disk now, under the file
// lock, writes the result and makes it the state in memory.
func (k *Keyring) update(change func(*keyringBody) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	unlock, err := lockFile(k.path + ".lock")
	if err != nil {
		return fmt.Errorf("keys: lock keyring %s: %w", k.path, err)
	}
	defer unlock()
	body, _, err := readKeyring(k.path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && k.body == nil:
		body = &keyringBody{} // OpenKeyring creating the file
	case err != nil:
		return err
	}
	if err := change(body); err != nil {
		return err
	}
	if err := body.validate(); err != nil {
		return fmt.Errorf("keys: keyring %s: refusing to write an invalid keyring: %w", k.path, err)
	}
	if err := writeKeyring(k.path, body); err != nil {
		return fmt.Errorf("keys: write keyring %s: %w", k.path, err)
	}
	st, err := os.Stat(k.path)
	if err != nil {
		return fmt.Errorf("keys: keyring %s: %w", k.path, err)
	}
	if k.body != nil {
		k.body.wipe()
	}
	k.body, k.stamp = body, st
	return nil
}

// wipe clears the key material of b, which is no longer in use.
func (b *keyringBody) wipe() {
	for _, e := range b.Keys {
		for _, v := range e.Versions {
			clear(v.Material)
		}
	}
}

// current returns the state of the keyring, reloading it first if the file
// changed since it was read. The caller holds k.mu.
func (k *Keyring) current() (*keyringBody, error) {
	st, err := os.Stat(k.path)
	if err != nil {
		return nil, fmt.Errorf("%w: keyring %s: %v", ErrUnavailable, k.path, err)
	}
	if os.SameFile(st, k.stamp) && st.ModTime().Equal(k.stamp.ModTime()) && st.Size() == k.stamp.Size() {
		if err := checkMode(k.path, st); err != nil {
			return nil, err
		}
		return k.body, nil
	}
	body, st, err := readKeyring(k.path)
	if err != nil {
		return nil, err
	}
	k.body.wipe()
	k.body, k.stamp = body, st
	return body, nil
}

// Reload re-reads the keyring file now. Operations reload it by themselves
// when it changed; Reload is for checking a file replaced by hand.
func (k *Keyring) Reload() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	body, st, err := readKeyring(k.path)
	if err != nil {
		return err
	}
	k.body.wipe()
	k.body, k.stamp = body, st
	return nil
}

// Create adds a key named name with one version. A name that exists, or
// existed and was destroyed, is refused with ErrKeyExists: a destroyed key's
// name is never reused, so nothing wrapped by it can ever look valid again.
func (k *Keyring) Create(name string) error {
	if err := ValidKeyName(name); err != nil {
		return err
	}
	return k.update(func(b *keyringBody) error {
		if e := b.key(name); e != nil {
			if e.DestroyedUnix != 0 {
				return fmt.Errorf("%w: %q (destroyed; names are not reused)", ErrKeyExists, name)
			}
			return fmt.Errorf("%w: %q", ErrKeyExists, name)
		}
		b.Keys = append(b.Keys, newKeyEntry(name))
		return nil
	})
}

// Rotate adds a new version to key name and makes it current; it returns the
// new version. Older versions still decrypt until they are retired.
func (k *Keyring) Rotate(name string) (string, error) {
	var version uint32
	err := k.update(func(b *keyringBody) error {
		e, err := b.live(name)
		if err != nil {
			return err
		}
		version = e.Versions[len(e.Versions)-1].Version + 1
		if version == 0 {
			return fmt.Errorf("keys: key %q has no versions left", name)
		}
		e.Versions = append(e.Versions, newVersion(version))
		e.Current = version
		return nil
	})
	if err != nil {
		return "", err
	}
	return formatVersion(version), nil
}

// Retire deletes the material of one version of key name, so nothing it
// wrapped can be unwrapped any more (ErrKeyVersionRetired). It is the last
// step of a rotation, once every data key has been rewrapped. The current
// version cannot be retired. Retiring a retired version does nothing.
func (k *Keyring) Retire(name, version string) error {
	v, err := parseVersion(version)
	if err != nil {
		return err
	}
	return k.update(func(b *keyringBody) error {
		e, err := b.live(name)
		if err != nil {
			return err
		}
		kv := e.version(v)
		switch {
		case kv == nil:
			return fmt.Errorf("%w: key %q version %s", ErrKeyVersionNotFound, name, version)
		case v == e.Current:
			return fmt.Errorf("keys: key %q version %s is current; rotate before retiring it", name, version)
		case kv.RetiredUnix != 0:
			return nil
		}
		clear(kv.Material)
		kv.Material, kv.RetiredUnix = nil, time.Now().Unix()
		return nil
	})
}

// Destroy deletes every version of key name (crypto-shredding): every data
// key it wrapped, and so all data sealed under those, becomes unreadable for
// good. The name stays recorded as destroyed and cannot be created again.
// Destroying a destroyed key does nothing.
func (k *Keyring) Destroy(name string) error {
	return k.update(func(b *keyringBody) error {
		e := b.key(name)
		if e == nil {
			return fmt.Errorf("%w: %q", ErrKeyNotFound, name)
		}
		if e.DestroyedUnix != 0 {
			return nil
		}
		for _, v := range e.Versions {
			clear(v.Material)
			v.Material = nil
		}
		e.Current, e.DestroyedUnix = 0, time.Now().Unix()
		return nil
	})
}

// live returns key name if it exists and was not destroyed.
func (b *keyringBody) live(name string) (*keyEntry, error) {
	e := b.key(name)
	switch {
	case e == nil:
		return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, name)
	case e.DestroyedUnix != 0:
		return nil, fmt.Errorf("%w: %q", ErrKeyDestroyed, name)
	}
	return e, nil
}

// Keys describes every key, destroyed ones included, sorted by name.
func (k *Keyring) Keys() ([]KeyInfo, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	body, err := k.current()
	if err != nil {
		return nil, err
	}
	out := make([]KeyInfo, 0, len(body.Keys))
	for _, e := range body.Keys {
		ki := KeyInfo{Name: e.Name}
		if e.Current != 0 {
			ki.Current = formatVersion(e.Current)
		}
		if e.DestroyedUnix != 0 {
			ki.Destroyed = time.Unix(e.DestroyedUnix, 0)
		}
		for _, v := range e.Versions {
			vi := VersionInfo{Version: formatVersion(v.Version), Created: time.Unix(v.CreatedUnix, 0)}
			if v.RetiredUnix != 0 {
				vi.Retired = time.Unix(v.RetiredUnix, 0)
			}
			ki.Versions = append(ki.Versions, vi)
		}
		out = append(out, ki)
	}
	slices.SortFunc(out, func(a, b KeyInfo) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out, nil
}

func formatVersion(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

func parseVersion(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v == 0 || formatVersion(uint32(v)) != s {
		return 0, fmt.Errorf("%w: keyring version %q", ErrKeyVersionNotFound, s)
	}
	return uint32(v), nil
}

// The wrapped form: wrapFormat, salt, nonce, then AES-256-GCM ciphertext and
// tag, under HKDF-SHA256(KEK, salt, ad) with ad = wrapAD(name, version).
const (
	wrapFormat    = 1
	wrapSaltSize  = 16
	wrapNonceSize = 12
	wrapOverhead  = 1 + wrapSaltSize + wrapNonceSize + 16
)

func wrapAD(name string, version uint32) []byte {
	ad := make([]byte, 0, 32+len(name))
	ad = append(ad, "strata-keyring-wrap/1\x00"...)
	ad = append(ad, name...)
	ad = append(ad, 0)
	return strconv.AppendUint(ad, uint64(version), 10)
}

func wrapAEAD(kek, salt, ad []byte) (cipher.AEAD, error) {
	sub, err := hkdf.Key(sha256.New, kek, salt, string(ad), 32)
	if err != nil {
		return nil, err
	}
	defer clear(sub)
	block, err := aes.NewCipher(sub)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Encrypt implements Provider.
func (k *Keyring) Encrypt(_ context.Context, keyName string, plaintext []byte) (WrappedKey, error) {
	if len(plaintext) > MaxPlaintext {
		return WrappedKey{}, fmt.Errorf("keys: %d bytes to encrypt, at most %d", len(plaintext), MaxPlaintext)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	body, err := k.current()
	if err != nil {
		return WrappedKey{}, err
	}
	e, err := body.live(keyName)
	if err != nil {
		return WrappedKey{}, err
	}
	kv := e.version(e.Current)
	ad := wrapAD(e.Name, kv.Version)
	out := make([]byte, 1+wrapSaltSize+wrapNonceSize, wrapOverhead+len(plaintext))
	out[0] = wrapFormat
	rand.Read(out[1:]) // salt and nonce; never fails
	salt, nonce := out[1:1+wrapSaltSize], out[1+wrapSaltSize:]
	aead, err := wrapAEAD(kv.Material, salt, ad)
	if err != nil {
		return WrappedKey{}, err
	}
	out = aead.Seal(out, nonce, plaintext, ad)
	return WrappedKey{KeyName: e.Name, KeyVersion: formatVersion(kv.Version), Ciphertext: out}, nil
}

// Decrypt implements Provider.
func (k *Keyring) Decrypt(_ context.Context, wk WrappedKey) ([]byte, error) {
	if len(wk.Annotations) != 0 {
		return nil, fmt.Errorf("%w: keyring ciphertexts carry no annotations", ErrDecrypt)
	}
	v, err := parseVersion(wk.KeyVersion)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	body, err := k.current()
	if err != nil {
		return nil, err
	}
	e, err := body.live(wk.KeyName)
	if err != nil {
		return nil, err
	}
	kv := e.version(v)
	switch {
	case kv == nil:
		return nil, fmt.Errorf("%w: key %q version %s", ErrKeyVersionNotFound, wk.KeyName, wk.KeyVersion)
	case kv.Material == nil:
		return nil, fmt.Errorf("%w: key %q version %s", ErrKeyVersionRetired, wk.KeyName, wk.KeyVersion)
	}
	c := wk.Ciphertext
	if len(c) < wrapOverhead || c[0] != wrapFormat {
		return nil, fmt.Errorf("%w: not a keyring ciphertext", ErrDecrypt)
	}
	salt, nonce := c[1:1+wrapSaltSize], c[1+wrapSaltSize:1+wrapSaltSize+wrapNonceSize]
	ad := wrapAD(e.Name, v)
	aead, err := wrapAEAD(kv.Material, salt, ad)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, nonce, c[1+wrapSaltSize+wrapNonceSize:], ad)
	if err != nil {
		return nil, fmt.Errorf("%w: key %q version %s: ciphertext does not authenticate", ErrDecrypt, wk.KeyName, wk.KeyVersion)
	}
	return plain, nil
}

// CurrentVersion implements Provider.
func (k *Keyring) CurrentVersion(_ context.Context, keyName string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	body, err := k.current()
	if err != nil {
		return "", err
	}
	e, err := body.live(keyName)
	if err != nil {
		return "", err
	}
	return formatVersion(e.Current), nil
}

// Status implements Provider: the file is still there, still private, and
// still valid.
func (k *Keyring) Status(context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, err := k.current()
	return err
}
