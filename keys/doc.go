// Package keys holds Strata's encryption keys: the key-encryption keys (KEKs)
// that protect the per-blob (and per-record) data keys, behind one small
// interface, Provider, and the helpers that make, wrap and unwrap data keys.
//
// It is a package of its own because encryption keys are a capability of
// their own, used by more than one layer: blobstore seals segments with data
// keys, metastore will seal manifest bodies and other customer content with
// them, the API layer decides which key protects which repository, and the
// command line rotates, retires and destroys keys. None of those should own
// key storage, and key storage must not depend on any of them: keys imports
// nothing from Strata.
//
// # Envelope encryption
//
// Every blob gets its own data key (NewDataKey: 32 random bytes, an
// AES-256 key). The data key seals the blob's bytes and is stored only
// wrapped, that is encrypted by a KEK (Wrap), as a WrappedKey next to the
// blob's metadata. Reading unwraps it again (Unwrap). A KEK never leaves its
// provider; a data key never reaches a disk in the clear.
//
// # Key names and versions
//
// A KEK is addressed by a name (an alias: "default", a repository's own key,
// a KMS key configured under a name) and has versions. Encrypt always uses
// the name's current version and records it in the WrappedKey; Decrypt uses
// the version recorded. Rotation therefore never rewrites data: it adds a
// version (Keyring.Rotate, or the KMS's own rotation, which shows up as a new
// key id), rewraps every data key whose KeyVersion is not CurrentVersion
// (Rewrap), and then retires the old version (Keyring.Retire). Destroying a
// name (Keyring.Destroy, or deleting the key in the KMS) makes every data
// key wrapped by it, and so every blob sealed under those data keys,
// unreadable for good: crypto-shredding.
//
// # Providers
//
//   - Keyring (the default): a local file, created on first start with mode
//     0600, holding versioned 256-bit keys; it wraps with AES-256-GCM and
//     binds the key name and version as associated data.
//   - kmsplugin.Provider (package keys/kmsplugin): a client of the Kubernetes
//     KMS v2 plugin gRPC protocol over a unix socket, so the existing plugins
//     for Vault, cloud KMSs and HSMs work unchanged. A plugin serves one KEK,
//     so it is registered under one key name.
//   - Mux routes key names to providers, so the rest of Strata sees one
//     Provider whatever the mix.
//   - Cache remembers unwrapped data keys for a while, so reading a hot blob
//     does not cost a KMS round trip each time.
package keys
