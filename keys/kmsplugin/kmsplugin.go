// Package kmsplugin is a keys.Provider that talks the Kubernetes KMS v2
// plugin protocol (k8s.io/kms/apis/v2: Status, Encrypt, Decrypt over gRPC on
// a unix socket), so that the existing KMS plugins for Vault, cloud KMSs and
// HSMs serve Strata's key-encryption keys unchanged.
//
// A KMS v2 plugin holds one key-encryption key: its requests name no key. So
// a Provider serves exactly one key name, chosen in Config.Name (register it
// in a keys.Mux to use it beside the local keyring). The plugin's key id, from
// Status and Encrypt responses, is the key version: the KMS rotates the key
// by itself, and Strata sees the rotation as a new key id from Status
// (CurrentVersion) and rewraps. The key id and any annotations the plugin
// returns at Encrypt travel in the WrappedKey and go back at Decrypt, as the
// protocol requires.
//
// It is a package of its own so that package keys, which blobstore and
// metastore import, does not pull in gRPC and the KMS API.
package kmsplugin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/strata-registry/strata/keys"
)

// DefaultTimeout bounds each call to the plugin when Config.Timeout is zero
// (the same default as the Kubernetes API server's).
const DefaultTimeout = 3 * time.Second

// Limits the KMS v2 protocol sets on what a plugin returns.
const (
	maxKeyIDSize       = 1024
	maxCiphertextSize  = 1024
	maxAnnotationsSize = 32 * 1024
)

// Config configures a Provider.
type Config struct {
	// Name is the key name the plugin's key is known by in Strata
	// (WrappedKey.KeyName, a repository's KMS key name). Required.
	Name string
	// Socket is the path of the plugin's unix socket ("unix://" prefix
	// optional). Required.
	Socket string
	// Timeout bounds each call; default DefaultTimeout.
	Timeout time.Duration
	// DialOptions are added to the gRPC client's (tests, interceptors).
	DialOptions []grpc.DialOption
}

// Provider is a client of one KMS v2 plugin. It is safe for concurrent use.
type Provider struct {
	name    string
	timeout time.Duration
	conn    *grpc.ClientConn
	client  kmsapi.KeyManagementServiceClient
}

var _ keys.Provider = (*Provider)(nil)

// New returns a Provider for the plugin listening on cfg.Socket. It does not
// connect yet: the first call does (and calls reconnect after a plugin
// restart), so a plugin that starts after Strata is fine. Call Status to
// check the plugin at start.
func New(cfg Config) (*Provider, error) {
	if err := keys.ValidKeyName(cfg.Name); err != nil {
		return nil, fmt.Errorf("kmsplugin: %w", err)
	}
	sock := strings.TrimPrefix(cfg.Socket, "unix://")
	if sock == "" {
		return nil, errors.New("kmsplugin: no socket path")
	}
	sock, err := filepath.Abs(sock)
	if err != nil {
		return nil, fmt.Errorf("kmsplugin: socket %s: %w", cfg.Socket, err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cfg.DialOptions...)
	conn, err := grpc.NewClient("unix://"+sock, opts...)
	if err != nil {
		return nil, fmt.Errorf("kmsplugin: %s: %w", sock, err)
	}
	return &Provider{name: cfg.Name, timeout: cfg.Timeout, conn: conn, client: kmsapi.NewKeyManagementServiceClient(conn)}, nil
}

// Close closes the connection to the plugin.
func (p *Provider) Close() error { return p.conn.Close() }

// Name returns the key name the Provider serves.
func (p *Provider) Name() string { return p.name }

func (p *Provider) checkName(keyName string) error {
	if keyName != p.name {
		return fmt.Errorf("%w: %q (this KMS plugin serves %q)", keys.ErrKeyNotFound, keyName, p.name)
	}
	return nil
}

// callErr maps a failed call: transport failures and a plugin that is down
// are keys.ErrUnavailable (try later); what the plugin refused is not.
func (p *Provider) callErr(op string, err error) error {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.ResourceExhausted, codes.Aborted:
		return fmt.Errorf("%w: kms plugin %q: %s: %v", keys.ErrUnavailable, p.name, op, err)
	}
	return fmt.Errorf("kms plugin %q: %s: %w", p.name, op, err)
}

func newUID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails
	return hex.EncodeToString(b[:])
}

// status calls Status and checks the response as the API server does.
func (p *Provider) status(ctx context.Context) (*kmsapi.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	res, err := p.client.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		return nil, p.callErr("status", err)
	}
	switch {
	case res.GetVersion() != "v2" && res.GetVersion() != "v2beta1":
		return nil, fmt.Errorf("%w: kms plugin %q speaks version %q, want v2", keys.ErrUnavailable, p.name, res.GetVersion())
	case res.GetHealthz() != "ok":
		return nil, fmt.Errorf("%w: kms plugin %q is unhealthy: %q", keys.ErrUnavailable, p.name, res.GetHealthz())
	}
	if err := checkKeyID(res.GetKeyId()); err != nil {
		return nil, fmt.Errorf("%w: kms plugin %q status: %v", keys.ErrUnavailable, p.name, err)
	}
	return res, nil
}

func checkKeyID(id string) error {
	if id == "" || len(id) >= maxKeyIDSize {
		return fmt.Errorf("key id of %d bytes (want 1..%d)", len(id), maxKeyIDSize-1)
	}
	return nil
}

// Status implements keys.Provider: the plugin answers, speaks v2, reports
// healthz "ok" and a key id.
func (p *Provider) Status(ctx context.Context) error {
	_, err := p.status(ctx)
	return err
}

// CurrentVersion implements keys.Provider: the key id the plugin reports
// in Status, the key it encrypts with now.
func (p *Provider) CurrentVersion(ctx context.Context, keyName string) (string, error) {
	if err := p.checkName(keyName); err != nil {
		return "", err
	}
	res, err := p.status(ctx)
	if err != nil {
		return "", err
	}
	return res.GetKeyId(), nil
}

// Encrypt implements keys.Provider.
func (p *Provider) Encrypt(ctx context.Context, keyName string, plaintext []byte) (keys.WrappedKey, error) {
	if err := p.checkName(keyName); err != nil {
		return keys.WrappedKey{}, err
	}
	if len(plaintext) == 0 || len(plaintext) > keys.MaxPlaintext {
		return keys.WrappedKey{}, fmt.Errorf("kmsplugin: %d bytes to encrypt (want 1..%d)", len(plaintext), keys.MaxPlaintext)
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	res, err := p.client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: plaintext, Uid: newUID()})
	if err != nil {
		return keys.WrappedKey{}, p.callErr("encrypt", err)
	}
	if err := checkEncryptResponse(res); err != nil {
		return keys.WrappedKey{}, fmt.Errorf("kms plugin %q: encrypt: %w", p.name, err)
	}
	wk := keys.WrappedKey{KeyName: p.name, KeyVersion: res.GetKeyId(), Ciphertext: res.GetCiphertext()}
	if len(res.GetAnnotations()) > 0 {
		wk.Annotations = res.GetAnnotations()
	}
	return wk, nil
}

func checkEncryptResponse(res *kmsapi.EncryptResponse) error {
	if n := len(res.GetCiphertext()); n == 0 || n >= maxCiphertextSize {
		return fmt.Errorf("ciphertext of %d bytes (want 1..%d)", n, maxCiphertextSize-1)
	}
	if err := checkKeyID(res.GetKeyId()); err != nil {
		return err
	}
	size := 0
	for k, v := range res.GetAnnotations() {
		if !isDNSSubdomain(k) {
			return fmt.Errorf("annotation key %q is not a fully qualified domain name", k)
		}
		size += len(k) + len(v)
	}
	if size >= maxAnnotationsSize {
		return fmt.Errorf("annotations of %d bytes (want under %d)", size, maxAnnotationsSize)
	}
	return nil
}

// isDNSSubdomain: RFC 1123 subdomain, at most 253 characters, of at least
// two labels (a fully qualified name).
func isDNSSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// Decrypt implements keys.Provider. A plugin that refuses the ciphertext
// (tampered, or from another key) is reported as keys.ErrDecrypt; a plugin
// that cannot be reached, as keys.ErrUnavailable.
func (p *Provider) Decrypt(ctx context.Context, wk keys.WrappedKey) ([]byte, error) {
	if err := p.checkName(wk.KeyName); err != nil {
		return nil, err
	}
	if len(wk.Ciphertext) == 0 || checkKeyID(wk.KeyVersion) != nil {
		return nil, fmt.Errorf("%w: not a KMS v2 wrapped key", keys.ErrDecrypt)
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	res, err := p.client.Decrypt(ctx, &kmsapi.DecryptRequest{
		Ciphertext:  wk.Ciphertext,
		Uid:         newUID(),
		KeyId:       wk.KeyVersion,
		Annotations: wk.Annotations,
	})
	if err != nil {
		err = p.callErr("decrypt", err)
		if !errors.Is(err, keys.ErrUnavailable) {
			err = fmt.Errorf("%w: %w", keys.ErrDecrypt, err)
		}
		return nil, err
	}
	return res.GetPlaintext(), nil
}
