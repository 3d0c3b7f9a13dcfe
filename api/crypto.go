package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Encryption at rest. With a key provider configured:
//   - every blob (every upload session) gets its own data key, drawn here and
//     stored only wrapped by a key-encryption key (in the upload session,
//     then in the layout); each segment is sealed with AES-256-GCM under it
//     before erasure coding, so shards on storage nodes are ciphertext;
//   - every manifest gets its own data key too, which seals its body and its
//     annotations before they are proposed, so the Raft log, Pebble and
//     snapshots hold them only as ciphertext (keys.SealRecord);
//   - an open upload's SHA-256 state (which holds up to 63 bytes of its
//     plaintext) is sealed under the upload's data key.
//
// Without a provider everything is stored in the clear and records carry no
// key. Records written before encryption was turned on stay readable.

// newDataKey draws a data key for content of repo and wraps it under the
// repository's key-encryption key: the key itself (nil without a provider;
// the caller clears it) and its wrapped form to record.
func (s *Server) newDataKey(ctx context.Context, repo string) ([]byte, *pb.WrappedKey, error) {
	if s.cfg.Keys == nil {
		return nil, nil, nil
	}
	name, err := s.keyName(ctx, repo)
	if err != nil {
		return nil, nil, err
	}
	dk := keys.NewDataKey()
	wk, err := keys.Wrap(ctx, s.cfg.Keys, name, dk)
	if err != nil {
		clear(dk)
		return nil, nil, err
	}
	return dk, wrappedToPB(wk), nil
}

// newBlobKey draws a data key for a new blob or upload: the sealer to write
// with and the wrapped key to record. Both are nil without a provider.
func (s *Server) newBlobKey(ctx context.Context, repo string) (blobstore.Sealer, *pb.WrappedKey, error) {
	dk, wk, err := s.newDataKey(ctx, repo)
	if err != nil || dk == nil {
		return nil, nil, err
	}
	defer clear(dk)
	sealer, err := blobstore.NewAESGCMSealer(dk)
	if err != nil {
		return nil, nil, err
	}
	return sealer, wk, nil
}

// dataKey unwraps a recorded wrapped key; nil (plaintext) when there is none.
func (s *Server) dataKey(ctx context.Context, wk *pb.WrappedKey) ([]byte, error) {
	if wk == nil || len(wk.Ciphertext) == 0 {
		return nil, nil
	}
	if s.cfg.Keys == nil {
		return nil, blobstore.ErrKeyRequired
	}
	return keys.Unwrap(ctx, s.cfg.Keys, wrappedFromPB(wk))
}

// sealerOf is the segment sealer of a data key; nil for none.
func sealerOf(dk []byte) (blobstore.Sealer, error) {
	if dk == nil {
		return nil, nil
	}
	return blobstore.NewAESGCMSealer(dk)
}

// sealerFor opens a recorded wrapped key; nil (plaintext) when there is none.
func (s *Server) sealerFor(ctx context.Context, wk *pb.WrappedKey) (blobstore.Sealer, error) {
	dk, err := s.dataKey(ctx, wk)
	if err != nil || dk == nil {
		return nil, err
	}
	defer clear(dk)
	return sealerOf(dk)
}

// layoutSealer is the sealer of a stored blob read through repo: its data
// key as wrapped by repo's key-encryption key, or else by any other (a copy
// under repo's key may still be on its way, see the key reconciler).
func (s *Server) layoutSealer(ctx context.Context, l *pb.BlobLayout, repo string) (blobstore.Sealer, error) {
	switch len(l.Keys) {
	case 0:
		return nil, nil
	case 1: // the common case: no choice to make, no settings to look up
		return s.sealerFor(ctx, l.Keys[0])
	}
	name, err := s.keyName(ctx, repo)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, wk := range orderKeys(l.Keys, name) {
		sealer, err := s.sealerFor(ctx, wk)
		if err == nil {
			return sealer, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// orderKeys puts the copies wrapped under name first.
func orderKeys(wks []*pb.WrappedKey, name string) []*pb.WrappedKey {
	out := make([]*pb.WrappedKey, 0, len(wks))
	for _, wk := range wks {
		if wk.KeyName == name {
			out = append(out, wk)
		}
	}
	for _, wk := range wks {
		if wk.KeyName != name {
			out = append(out, wk)
		}
	}
	return out
}

// Associated data of sealed records: what the record is and whose.
func manifestBodyAD(dgst string) []byte { return []byte("strata/manifest-body\x00" + dgst) }
func manifestAnnotationsAD(dgst string) []byte {
	return []byte("strata/manifest-annotations\x00" + dgst)
}
func uploadHashAD(id string) []byte { return []byte("strata/upload-sha256-state\x00" + id) }

// sealManifest seals a manifest's body and annotations in the command that
// puts it, under a data key of its own.
func (s *Server) sealManifest(ctx context.Context, c *pb.PutManifest) error {
	dk, wk, err := s.newDataKey(ctx, c.Repo)
	if err != nil || dk == nil {
		return err
	}
	defer clear(dk)
	c.Size = uint64(len(c.Body))
	if c.Body, err = keys.SealRecord(dk, manifestBodyAD(c.Digest), c.Body); err != nil {
		return err
	}
	if len(c.AnnotationsJson) > 0 {
		if c.AnnotationsJson, err = keys.SealRecord(dk, manifestAnnotationsAD(c.Digest), c.AnnotationsJson); err != nil {
			return err
		}
	}
	c.Key = wk
	return nil
}

// manifestBody returns a stored manifest's body, opened if it is sealed. A
// record that does not authenticate is corrupt and never served.
func (s *Server) manifestBody(ctx context.Context, rec *pb.ManifestRecord) ([]byte, error) {
	dk, err := s.dataKey(ctx, rec.Key)
	if err != nil || dk == nil {
		return rec.Body, err
	}
	defer clear(dk)
	body, err := keys.OpenRecord(dk, manifestBodyAD(rec.Digest), rec.Body)
	if err != nil {
		return nil, fmt.Errorf("%w: manifest %s: %v", metastore.ErrCorrupt, rec.Digest, err)
	}
	return body, nil
}

// manifestSize is a stored manifest's size in bytes.
func manifestSize(rec *pb.ManifestRecord) uint64 {
	if rec.Key == nil {
		return uint64(len(rec.Body))
	}
	return rec.Size
}

// descriptorAnnotations returns a referrer's annotations, opened if they
// are sealed.
func (s *Server) descriptorAnnotations(ctx context.Context, d *pb.Descriptor) (map[string]string, error) {
	if len(d.AnnotationsJson) == 0 {
		return nil, nil
	}
	raw := d.AnnotationsJson
	if dk, err := s.dataKey(ctx, d.Key); err != nil {
		return nil, err
	} else if dk != nil {
		defer clear(dk)
		if raw, err = keys.OpenRecord(dk, manifestAnnotationsAD(d.Digest), raw); err != nil {
			return nil, fmt.Errorf("%w: annotations of referrer %s: %v", metastore.ErrCorrupt, d.Digest, err)
		}
	}
	var out map[string]string
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("%w: annotations of referrer %s: %v", metastore.ErrCorrupt, d.Digest, err)
	}
	return out, nil
}

// sealHashState seals an upload's SHA-256 state under its data key (dk nil:
// in the clear).
func sealHashState(dk []byte, uploadID string, state []byte) ([]byte, error) {
	if dk == nil {
		return state, nil
	}
	return keys.SealRecord(dk, uploadHashAD(uploadID), state)
}

// openHashState opens what sealHashState stored.
func openHashState(dk []byte, u *pb.Upload) ([]byte, error) {
	if dk == nil || len(u.Sha256State) == 0 {
		return u.Sha256State, nil
	}
	state, err := keys.OpenRecord(dk, uploadHashAD(u.Id), u.Sha256State)
	if err != nil {
		return nil, fmt.Errorf("%w: hash state of upload %s: %v", metastore.ErrCorrupt, u.Id, err)
	}
	return state, nil
}

func wrappedToPB(wk keys.WrappedKey) *pb.WrappedKey {
	return &pb.WrappedKey{KeyName: wk.KeyName, KeyVersion: wk.KeyVersion, Ciphertext: wk.Ciphertext, Annotations: wk.Annotations}
}

func wrappedFromPB(wk *pb.WrappedKey) keys.WrappedKey {
	return keys.WrappedKey{KeyName: wk.KeyName, KeyVersion: wk.KeyVersion, Ciphertext: wk.Ciphertext, Annotations: wk.Annotations}
}
