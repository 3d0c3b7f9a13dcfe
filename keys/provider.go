package keys

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"sort"
	"sync"
)

// Errors of providers. Every provider wraps one of these, so callers can tell
// a missing key (configuration) from a failed decryption (tampering, wrong
// key) from an unreachable KMS (retry later).
var (
	// ErrKeyNotFound: the provider has no key of that name.
	ErrKeyNotFound = errors.New("keys: key not found")
	// ErrKeyExists: Create of a name that already exists.
	ErrKeyExists = errors.New("keys: key already exists")
	// ErrKeyDestroyed: the key was destroyed (crypto-shredded); nothing it
	// wrapped can be unwrapped any more.
	ErrKeyDestroyed = errors.New("keys: key destroyed")
	// ErrKeyVersionNotFound: the key has no such version.
	ErrKeyVersionNotFound = errors.New("keys: key version not found")
	// ErrKeyVersionRetired: the version was retired after rotation; data keys
	// still wrapped by it were not rewrapped in time.
	ErrKeyVersionRetired = errors.New("keys: key version retired")
	// ErrDecrypt: the ciphertext does not authenticate under the key it names
	// (tampered, truncated, or wrapped by another key).
	ErrDecrypt = errors.New("keys: decryption failed")
	// ErrInvalidKey: a data key or key name that is not well formed.
	ErrInvalidKey = errors.New("keys: invalid key")
	// ErrUnavailable: the provider cannot be reached or is unhealthy (a KMS
	// plugin that is down); the operation may succeed later.
	ErrUnavailable = errors.New("keys: provider unavailable")
)

// Provider is a source of key-encryption keys (KEKs). It encrypts and
// decrypts small secrets, data keys, under named, versioned KEKs that never
// leave it. Implementations are safe for concurrent use.
//
// The contract every implementation keeps:
//   - Encrypt uses the current version of keyName and records that version,
//     and anything else Decrypt will need, in the WrappedKey it returns.
//   - Decrypt authenticates: a ciphertext that was altered, or that was not
//     produced by the key and version it names, is refused with an error
//     wrapping ErrDecrypt, never decrypted to garbage.
//   - A version stays decryptable until it is retired; rotation adds a
//     version and changes what CurrentVersion returns.
type Provider interface {
	// Encrypt encrypts plaintext (at most MaxPlaintext bytes) under the
	// current version of the key named keyName.
	Encrypt(ctx context.Context, keyName string, plaintext []byte) (WrappedKey, error)
	// Decrypt returns the plaintext of wk, using the key and version it
	// names.
	Decrypt(ctx context.Context, wk WrappedKey) ([]byte, error)
	// CurrentVersion returns the version Encrypt uses for keyName now. A
	// WrappedKey of another version is stale: rotation rewraps it.
	CurrentVersion(ctx context.Context, keyName string) (string, error)
	// Status returns nil when the provider can serve Encrypt and Decrypt,
	// and otherwise an error saying why (for health checks and start-up).
	Status(ctx context.Context) error
}

// MaxPlaintext bounds what Provider.Encrypt accepts. Providers exist to wrap
// keys, not data; the KMS v2 protocol also bounds ciphertexts to 1 kB.
const MaxPlaintext = 512

// WrappedKey is a secret (a data key) encrypted by a KEK, with everything
// needed to decrypt it again. Its shape maps one to one onto a protobuf
// message:
//
//	message WrappedKey {
//	  string key_name = 1;
//	  string key_version = 2;
//	  bytes ciphertext = 3;
//	  map<string, bytes> annotations = 4;
//	}
//
// None of it is secret: it may be stored and replicated in the clear.
type WrappedKey struct {
	// KeyName names the KEK (a Keyring key, or the name a KMS plugin is
	// registered under).
	KeyName string
	// KeyVersion is the version of the KEK that encrypted it: a Keyring
	// version ("1", "2", ...) or a KMS plugin's key id.
	KeyVersion string
	// Ciphertext is the encrypted secret, in the provider's format.
	Ciphertext []byte
	// Annotations are whatever else the provider asked to keep (KMS v2
	// plugins may return some at Encrypt and need them back at Decrypt).
	// Usually empty.
	Annotations map[string][]byte
}

// Clone returns a deep copy of wk.
func (wk WrappedKey) Clone() WrappedKey {
	wk.Ciphertext = append([]byte(nil), wk.Ciphertext...)
	if wk.Annotations != nil {
		a := make(map[string][]byte, len(wk.Annotations))
		for k, v := range wk.Annotations {
			a[k] = append([]byte(nil), v...)
		}
		wk.Annotations = a
	}
	return wk
}

// DataKeySize is the size of a data key: an AES-256 key.
const DataKeySize = 32

// NewDataKey returns a new data key: DataKeySize bytes from crypto/rand.
func NewDataKey() []byte {
	dk := make([]byte, DataKeySize)
	rand.Read(dk) // never fails (crypto/rand since Go 1.24)
	return dk
}

// Wrap encrypts the data key dk under the current version of the KEK
// keyName of p.
func Wrap(ctx context.Context, p Provider, keyName string, dk []byte) (WrappedKey, error) {
	if len(dk) != DataKeySize {
		return WrappedKey{}, fmt.Errorf("%w: data key of %d bytes, want %d", ErrInvalidKey, len(dk), DataKeySize)
	}
	wk, err := p.Encrypt(ctx, keyName, dk)
	if err != nil {
		return WrappedKey{}, fmt.Errorf("keys: wrap data key with %q: %w", keyName, err)
	}
	return wk, nil
}

// Unwrap decrypts a data key wrapped by Wrap. It refuses anything that does
// not decrypt to exactly DataKeySize bytes.
func Unwrap(ctx context.Context, p Provider, wk WrappedKey) ([]byte, error) {
	dk, err := p.Decrypt(ctx, wk)
	if err != nil {
		return nil, fmt.Errorf("keys: unwrap data key (key %q version %q): %w", wk.KeyName, wk.KeyVersion, err)
	}
	if len(dk) != DataKeySize {
		clear(dk)
		return nil, fmt.Errorf("%w: key %q version %q unwrapped %d bytes, want a %d-byte data key",
			ErrDecrypt, wk.KeyName, wk.KeyVersion, len(dk), DataKeySize)
	}
	return dk, nil
}

// Rewrap unwraps wk and wraps the same data key again under the current
// version of keyName (wk.KeyName for rotation; another name to give a blob
// one more wrapped copy, for a repository with a different key). The data
// itself is never touched.
func Rewrap(ctx context.Context, p Provider, wk WrappedKey, keyName string) (WrappedKey, error) {
	dk, err := Unwrap(ctx, p, wk)
	if err != nil {
		return WrappedKey{}, err
	}
	defer clear(dk)
	return Wrap(ctx, p, keyName, dk)
}

// Stale reports whether wk was wrapped by a version of its key other than
// the current one, i.e. whether rotation still has to rewrap it.
func Stale(ctx context.Context, p Provider, wk WrappedKey) (bool, error) {
	cur, err := p.CurrentVersion(ctx, wk.KeyName)
	if err != nil {
		return false, err
	}
	return wk.KeyVersion != cur, nil
}

// Mux is a Provider that routes each key name to the provider that holds it:
// names registered with Handle go to their provider, every other name to the
// fallback (typically the local Keyring). It is safe for concurrent use.
type Mux struct {
	fallback Provider

	mu     sync.RWMutex
	routes map[string]Provider
}

var _ Provider = (*Mux)(nil)

// NewMux returns a Mux sending unregistered names to fallback (which may be
// nil: such names are then ErrKeyNotFound).
func NewMux(fallback Provider) *Mux {
	return &Mux{fallback: fallback, routes: map[string]Provider{}}
}

// Handle routes keyName to p.
func (m *Mux) Handle(keyName string, p Provider) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.routes[keyName] = p
}

func (m *Mux) route(keyName string) (Provider, error) {
	m.mu.RLock()
	p, ok := m.routes[keyName]
	m.mu.RUnlock()
	if ok {
		return p, nil
	}
	if m.fallback == nil {
		return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, keyName)
	}
	return m.fallback, nil
}

// Encrypt implements Provider.
func (m *Mux) Encrypt(ctx context.Context, keyName string, plaintext []byte) (WrappedKey, error) {
	p, err := m.route(keyName)
	if err != nil {
		return WrappedKey{}, err
	}
	return p.Encrypt(ctx, keyName, plaintext)
}

// Decrypt implements Provider.
func (m *Mux) Decrypt(ctx context.Context, wk WrappedKey) ([]byte, error) {
	p, err := m.route(wk.KeyName)
	if err != nil {
		return nil, err
	}
	return p.Decrypt(ctx, wk)
}

// CurrentVersion implements Provider.
func (m *Mux) CurrentVersion(ctx context.Context, keyName string) (string, error) {
	p, err := m.route(keyName)
	if err != nil {
		return "", err
	}
	return p.CurrentVersion(ctx, keyName)
}

// Status implements Provider: every provider must be healthy; the error
// names each one that is not.
func (m *Mux) Status(ctx context.Context) error {
	m.mu.RLock()
	routes := maps.Clone(m.routes)
	m.mu.RUnlock()
	names := make([]string, 0, len(routes))
	for name := range routes {
		names = append(names, name)
	}
	sort.Strings(names)
	var errs []error
	if m.fallback != nil {
		if err := m.fallback.Status(ctx); err != nil {
			errs = append(errs, fmt.Errorf("default provider: %w", err))
		}
	}
	for _, name := range names {
		if err := routes[name].Status(ctx); err != nil {
			errs = append(errs, fmt.Errorf("provider of key %q: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// ValidKeyName reports whether name can name a key: 1 to 255 bytes of ASCII
// letters, digits and . _ - / : (so a repository name is a valid key name).
func ValidKeyName(name string) error {
	if len(name) == 0 || len(name) > 255 {
		return fmt.Errorf("%w: key name of %d bytes (want 1..255)", ErrInvalidKey, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '_', c == '-', c == '/', c == ':':
		default:
			return fmt.Errorf("%w: key name %q has byte %q (allowed: letters, digits, . _ - / :)", ErrInvalidKey, name, c)
		}
	}
	return nil
}

// Manager is a provider whose keys Strata manages itself (the Keyring):
// created, rotated, retired and destroyed by Strata's own commands. A KMS
// manages its keys itself and is not a Manager.
type Manager interface {
	Create(name string) error
	Rotate(name string) (string, error)
	Retire(name, version string) error
	Destroy(name string) error
	Keys() ([]KeyInfo, error)
}

var _ Manager = (*Keyring)(nil)
