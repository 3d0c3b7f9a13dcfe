package api

import (
	"context"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/keys"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Encryption at rest of blob data: with a key provider configured, every
// blob (every upload session) gets its own data key, drawn here and stored
// only wrapped by a key-encryption key (in the upload session, then in the
// layout); each segment is sealed with AES-256-GCM under it before erasure
// coding, so shards on storage nodes are ciphertext. Without a provider,
// blobs are stored in the clear (and layouts carry no key).

// newBlobKey draws a data key for a new blob or upload: the sealer to write
// with and the wrapped key to record. Both are nil without a provider.
func (s *Server) newBlobKey(ctx context.Context) (blobstore.Sealer, *pb.WrappedKey, error) {
	if s.cfg.Keys == nil {
		return nil, nil, nil
	}
	dk := keys.NewDataKey()
	defer clear(dk)
	wk, err := keys.Wrap(ctx, s.cfg.Keys, s.cfg.KeyName, dk)
	if err != nil {
		return nil, nil, err
	}
	sealer, err := blobstore.NewAESGCMSealer(dk)
	if err != nil {
		return nil, nil, err
	}
	return sealer, wrappedToPB(wk), nil
}

// sealerFor opens a recorded wrapped key; nil (plaintext) when there is none.
func (s *Server) sealerFor(ctx context.Context, wk *pb.WrappedKey) (blobstore.Sealer, error) {
	if wk == nil || len(wk.Ciphertext) == 0 {
		return nil, nil
	}
	if s.cfg.Keys == nil {
		return nil, blobstore.ErrKeyRequired
	}
	dk, err := keys.Unwrap(ctx, s.cfg.Keys, wrappedFromPB(wk))
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	return blobstore.NewAESGCMSealer(dk)
}

// layoutSealer is the sealer of a stored blob.
func (s *Server) layoutSealer(ctx context.Context, l *pb.BlobLayout) (blobstore.Sealer, error) {
	if len(l.Keys) == 0 {
		return nil, nil
	}
	return s.sealerFor(ctx, l.Keys[0])
}

func wrappedToPB(wk keys.WrappedKey) *pb.WrappedKey {
	return &pb.WrappedKey{KeyName: wk.KeyName, KeyVersion: wk.KeyVersion, Ciphertext: wk.Ciphertext, Annotations: wk.Annotations}
}

func wrappedFromPB(wk *pb.WrappedKey) keys.WrappedKey {
	return keys.WrappedKey{KeyName: wk.KeyName, KeyVersion: wk.KeyVersion, Ciphertext: wk.Ciphertext, Annotations: wk.Annotations}
}
