package metastore

import (
	"bytes"
	"fmt"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
	"google.golang.org/protobuf/proto"
)

// Wrapped data keys. Every encrypted record keeps its data key wrapped by a
// key-encryption key (KEK): blob layouts (one copy per KEK of the
// repositories that link the blob), manifests (and the referrer descriptors
// that share their key) and open uploads. The state machine never sees a
// plaintext key; it only stores wrapped ones, swaps them when the frontends
// rewrap them (rotation), and notes where a copy is missing.

// Kinds of record that hold a wrapped key.
const (
	KeyKindBlob     = "blob"
	KeyKindManifest = "manifest"
	KeyKindUpload   = "upload"
	// KeyKindNeed is a blob linked into a repository whose KEK has no
	// wrapped copy in its layout yet (Need names the KEK).
	KeyKindNeed = "need"
)

func keyNeedKey(dgst, keyName string) []byte { return k(pfxKeyNeed, dgst, keyName) }
func keyNeedPrefix(dgst string) []byte       { return append(k(pfxKeyNeed, dgst), 0) }

// delPrefix deletes every key under pfx.
func (t *txn) delPrefix(pfx []byte) error {
	return t.b.DeleteRange(pfx, prefixEnd(pfx), nil)
}

// hasKeyCopy reports whether a layout has a wrapped copy under keyName.
func hasKeyCopy(l *pb.BlobLayout, keyName string) bool {
	for _, wk := range l.Keys {
		if wk.KeyName == keyName {
			return true
		}
	}
	return false
}

// noteKeyNeed records that an encrypted blob, now linked into a repository
// whose KEK is keyName, has no copy of its data key wrapped by it.
func (t *txn) noteKeyNeed(l *pb.BlobLayout, keyName string) error {
	if keyName == "" || len(l.Keys) == 0 || hasKeyCopy(l, keyName) {
		return nil
	}
	return t.set(keyNeedKey(l.Digest, keyName))
}

func sameWrapped(a, b *pb.WrappedKey) bool {
	return a.KeyName == b.KeyName && a.KeyVersion == b.KeyVersion && bytes.Equal(a.Ciphertext, b.Ciphertext)
}

// replaceWrapped swaps old for new in keys; false if old is not there.
func replaceWrapped(keys []*pb.WrappedKey, old, new *pb.WrappedKey) bool {
	for i, wk := range keys {
		if sameWrapped(wk, old) {
			keys[i] = new
			return true
		}
	}
	return false
}

func (t *txn) setWrappedKeys(c *pb.SetWrappedKeys) error {
	for _, ch := range c.Changes {
		if ch.Kind == KeyKindNeed { // drop a need (its key was destroyed)
			if ch.Old == nil || ch.Old.KeyName == "" || ch.Id == "" {
				return fmt.Errorf("%w: dropping a key need takes the digest and old.key_name", ErrCommandInvalid)
			}
			if err := t.del(keyNeedKey(ch.Id, ch.Old.KeyName)); err != nil {
				return err
			}
			continue
		}
		if ch.New == nil || len(ch.New.Ciphertext) == 0 || ch.New.KeyName == "" {
			return fmt.Errorf("%w: key change for %s %s has no new wrapped key", ErrCommandInvalid, ch.Kind, ch.Id)
		}
		if ch.Old == nil && ch.Kind != KeyKindBlob {
			return fmt.Errorf("%w: only blobs take one more wrapped copy (%s %s)", ErrCommandInvalid, ch.Kind, ch.Id)
		}
		var err error
		switch ch.Kind {
		case KeyKindBlob:
			err = t.setBlobKey(ch)
		case KeyKindManifest:
			err = t.setManifestKey(ch)
		case KeyKindUpload:
			err = t.setUploadKey(ch)
		default:
			err = fmt.Errorf("%w: key change of unknown kind %q", ErrCommandInvalid, ch.Kind)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (t *txn) setBlobKey(ch *pb.KeyChange) error {
	var l pb.BlobLayout
	ok, err := t.load(blobKey(ch.Id), &l)
	if err != nil || !ok {
		return err // collected meanwhile: nothing to do
	}
	if ch.Old == nil {
		if hasKeyCopy(&l, ch.New.KeyName) {
			return t.del(keyNeedKey(ch.Id, ch.New.KeyName))
		}
		l.Keys = append(l.Keys, ch.New)
	} else if !replaceWrapped(l.Keys, ch.Old, ch.New) {
		return nil
	}
	if err := t.del(keyNeedKey(ch.Id, ch.New.KeyName)); err != nil {
		return err
	}
	return t.put(blobKey(ch.Id), &l)
}

func (t *txn) setManifestKey(ch *pb.KeyChange) error {
	var m pb.ManifestRecord
	ok, err := t.load(manifestKey(ch.Repo, ch.Id), &m)
	if err != nil || !ok || m.Key == nil || !sameWrapped(m.Key, ch.Old) {
		return err
	}
	m.Key = ch.New
	if err := t.put(manifestKey(ch.Repo, ch.Id), &m); err != nil {
		return err
	}
	if m.Subject == "" {
		return nil
	}
	// The referrer descriptor's annotations are sealed under the same key.
	var d pb.Descriptor
	rk := referrerKey(ch.Repo, m.Subject, ch.Id)
	if ok, err := t.load(rk, &d); err != nil || !ok || d.Key == nil {
		return err
	}
	d.Key = proto.Clone(ch.New).(*pb.WrappedKey)
	return t.put(rk, &d)
}

func (t *txn) setUploadKey(ch *pb.KeyChange) error {
	var u pb.Upload
	ok, err := t.load(uploadKey(ch.Id), &u)
	if err != nil || !ok || u.Key == nil || !sameWrapped(u.Key, ch.Old) {
		return err
	}
	u.Key = ch.New
	return t.put(uploadKey(ch.Id), &u)
}

// KeyItem is a record holding wrapped data keys, as WrappedKeys lists them.
type KeyItem struct {
	Kind string // KeyKindBlob, KeyKindManifest, KeyKindUpload or KeyKindNeed
	Repo string // manifests
	ID   string // blob or manifest digest, upload id
	Keys []*pb.WrappedKey
	Need string // KeyKindNeed: the KEK the blob needs a copy under
}

// keyScanPrefixes are the record kinds WrappedKeys visits, in key order.
var keyScanPrefixes = []string{pfxBlob, pfxKeyNeed, pfxManifest, pfxUpload}

// WrappedKeys lists up to n records holding wrapped keys, in key order,
// after the cursor after (empty: from the start); next is the cursor to
// continue from, empty at the end. needsOnly lists only blobs missing a
// copy (KeyKindNeed). Records stored in the clear are skipped.
func (s *Store) WrappedKeys(after string, n int, needsOnly bool) (items []KeyItem, next string, err error) {
	if n <= 0 {
		n = 500
	}
	prefixes := keyScanPrefixes
	if needsOnly {
		prefixes = []string{pfxKeyNeed}
	}
	for _, pfx := range prefixes {
		var start []byte
		if after != "" {
			if after >= pfx+"\xff" {
				continue // past this prefix
			}
			if after > pfx {
				start = append([]byte(after), 0) // the first key after the cursor
			}
		}
		var derr error
		err := s.scan([]byte(pfx), start, func(key, v []byte) bool {
			if len(items) == n {
				return false
			}
			next = string(key)
			var it *KeyItem
			if it, derr = keyItem(pfx, key, v); derr != nil {
				return false
			}
			if it != nil {
				items = append(items, *it)
			}
			return true
		})
		if err == nil {
			err = derr
		}
		if err != nil {
			return nil, "", err
		}
		if len(items) == n {
			return items, next, nil
		}
	}
	return items, "", nil
}

func keyItem(pfx string, key, v []byte) (*KeyItem, error) {
	rest := string(key[len(pfx):])
	switch pfx {
	case pfxBlob:
		var l pb.BlobLayout
		if err := unmarshal(key, v, &l); err != nil || len(l.Keys) == 0 {
			return nil, err
		}
		return &KeyItem{Kind: KeyKindBlob, ID: l.Digest, Keys: l.Keys}, nil
	case pfxKeyNeed:
		dgst, name, _ := cutNUL(rest)
		return &KeyItem{Kind: KeyKindNeed, ID: dgst, Need: name}, nil
	case pfxManifest:
		var m pb.ManifestRecord
		if err := unmarshal(key, v, &m); err != nil || m.Key == nil {
			return nil, err
		}
		repo, _, _ := cutNUL(rest)
		return &KeyItem{Kind: KeyKindManifest, Repo: repo, ID: m.Digest, Keys: []*pb.WrappedKey{m.Key}}, nil
	case pfxUpload:
		var u pb.Upload
		if err := unmarshal(key, v, &u); err != nil || u.Key == nil {
			return nil, err
		}
		return &KeyItem{Kind: KeyKindUpload, Repo: u.Repo, ID: u.Id, Keys: []*pb.WrappedKey{u.Key}}, nil
	}
	return nil, nil
}

func cutNUL(s string) (before, after string, found bool) {
	if i := bytes.IndexByte([]byte(s), 0); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}
