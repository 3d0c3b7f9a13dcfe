package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// The admin API's key operations (Strata's own; ECR leaves keys to KMS):
//
//	RotateKey            {"keyName": "default", "rotate": true}
//	GetKeyRotationStatus {}
//	RetireKeyVersion     {"keyName": "default", "keyVersion": "1", "force": false}
//	ListKeys             {}
//
// and the encryption configuration of CreateRepository and the
// crypto-shredding of DeleteRepository.

func (s *Server) keyAdminOp(ctx context.Context, op string, req *adminRequest) (any, error) {
	if s.cfg.Keys == nil {
		return nil, adminErr("KmsException", 400, "encryption at rest is off on this frontend (no keyring or KMS configured)")
	}
	name := req.KeyName
	if name == "" {
		name = s.cfg.KeyName
	}
	mgr := s.cfg.KeyManager
	switch op {
	case "RotateKey":
		// A keyring key gets a new version here; a KMS key rotates in
		// the KMS, and the pass rewraps to whatever it now calls current.
		version := ""
		if mgr != nil && (req.Rotate == nil || *req.Rotate) {
			v, err := mgr.Rotate(name)
			if err != nil {
				return nil, keyAdminErr(err)
			}
			version = v
			s.log.Info("key rotated", "key", name, "version", v)
		} else if v, err := s.cfg.Keys.CurrentVersion(ctx, name); err != nil {
			return nil, keyAdminErr(err)
		} else {
			version = v
		}
		s.StartKeyPass("rotation of key " + name + " to version " + version)
		return map[string]any{"keyName": name, "keyVersion": version, "job": s.KeyJobStatus()}, nil
	case "GetKeyRotationStatus":
		return map[string]any{"job": s.KeyJobStatus()}, nil
	case "RetireKeyVersion":
		if mgr == nil {
			return nil, adminErr("KmsException", 400, "keys of a KMS are retired in the KMS")
		}
		if req.KeyVersion == "" {
			return nil, adminErr("InvalidParameterException", 400, "keyVersion is required")
		}
		if !req.Force {
			// A full pass first: it rewraps whatever the version still
			// wraps, and the version may go only if that all succeeded.
			select {
			case <-s.StartKeyPass("retirement of key " + name + " version " + req.KeyVersion):
			case <-ctx.Done():
				return nil, adminErr("KmsException", 409, "key %s version %s not retired yet: the rewrap pass it needs first is still running; retire again once 'strata keys status' says done", name, req.KeyVersion)
			}
			st := s.KeyJobStatus()
			if st.State != "done" {
				return nil, adminErr("KmsException", 409, "key %s version %s not retired: the rewrap pass did not finish cleanly (%s)", name, req.KeyVersion, st.Error)
			}
			if cur, err := s.cfg.Keys.CurrentVersion(ctx, name); err != nil {
				return nil, keyAdminErr(err)
			} else if cur == req.KeyVersion {
				return nil, adminErr("InvalidParameterException", 400, "key %s version %s is current: rotate first", name, req.KeyVersion)
			}
		}
		if err := mgr.Retire(name, req.KeyVersion); err != nil {
			return nil, keyAdminErr(err)
		}
		s.purgeKeyCache()
		s.log.Info("key version retired", "key", name, "version", req.KeyVersion)
		return map[string]any{"keyName": name, "keyVersion": req.KeyVersion, "retired": true}, nil
	case "ListKeys":
		if mgr == nil {
			return nil, adminErr("KmsException", 400, "keys of a KMS are listed in the KMS")
		}
		infos, err := mgr.Keys()
		if err != nil {
			return nil, keyAdminErr(err)
		}
		return map[string]any{"keys": infos}, nil
	}
	return nil, adminErr("UnknownOperationException", 400, "unknown operation %q", op)
}

func keyAdminErr(err error) error {
	switch {
	case errors.Is(err, keys.ErrKeyNotFound), errors.Is(err, keys.ErrKeyVersionNotFound):
		return adminErr("KmsException", 404, "%v", err)
	case errors.Is(err, keys.ErrKeyDestroyed), errors.Is(err, keys.ErrKeyVersionRetired), errors.Is(err, keys.ErrInvalidKey):
		return adminErr("KmsException", 400, "%v", err)
	case errors.Is(err, keys.ErrUnavailable):
		return adminErr("ServiceUnavailableException", 503, "%v", err)
	}
	return err
}

// purgeKeyCache forgets unwrapped data keys, so a retired or destroyed key
// stops working at once on this frontend.
func (s *Server) purgeKeyCache() {
	if p, ok := s.cfg.Keys.(interface{ Purge() }); ok {
		p.Purge()
	}
}

// repoEncryption checks a CreateRepository's encryption configuration and
// fills it in. KMS with a key name the keyring does not hold creates that
// key there (a repository key of its own); a name routed to a KMS plugin
// must answer.
func (s *Server) repoEncryption(ctx context.Context, cfg *encryption, c *pb.CreateRepository) error {
	if cfg == nil || cfg.EncryptionType == "" || cfg.EncryptionType == metastore.EncryptionAES256 {
		if cfg != nil && cfg.KmsKey != "" {
			return adminErr("InvalidParameterException", 400, "kmsKey goes with encryptionType KMS")
		}
		return nil
	}
	if cfg.EncryptionType != metastore.EncryptionKMS {
		return adminErr("InvalidParameterException", 400, "encryptionType %q (want AES256 or KMS)", cfg.EncryptionType)
	}
	if s.cfg.Keys == nil {
		return adminErr("KmsException", 400, "encryption type KMS needs encryption at rest on (a keyring or a KMS plugin)")
	}
	if err := keys.ValidKeyName(cfg.KmsKey); err != nil {
		return adminErr("InvalidParameterException", 400, "kmsKey: %v", err)
	}
	_, err := s.cfg.Keys.CurrentVersion(ctx, cfg.KmsKey)
	if errors.Is(err, keys.ErrKeyNotFound) && s.cfg.KeyManager != nil {
		if err = s.cfg.KeyManager.Create(cfg.KmsKey); err == nil {
			s.log.Info("repository key created", "key", cfg.KmsKey, "repository", c.Repo)
		}
	}
	if err != nil {
		return keyAdminErr(err)
	}
	c.EncryptionType, c.KmsKey = metastore.EncryptionKMS, cfg.KmsKey
	return nil
}

// shredRepositoryKey destroys the key of its own that a deleted repository
// had (crypto-shredding), unless another repository uses it too; it returns
// the name of the key destroyed, if any. Only keyring keys can be
// destroyed here; a KMS key is destroyed in the KMS.
func (s *Server) shredRepositoryKey(ctx context.Context, rec *pb.Repository) (string, error) {
	if rec.EncryptionType != metastore.EncryptionKMS || rec.KmsKey == "" || rec.KmsKey == s.cfg.KeyName || s.cfg.KeyManager == nil {
		return "", nil
	}
	infos, err := s.cfg.KeyManager.Keys()
	if err != nil {
		return "", err
	}
	held := false
	for _, ki := range infos {
		held = held || (ki.Name == rec.KmsKey && ki.Destroyed.IsZero())
	}
	if !held {
		return "", nil
	}
	for last := ""; ; {
		names, more, err := s.meta.Repositories(ctx, last, 1000)
		if err != nil {
			return "", err
		}
		for _, n := range names {
			other, err := s.meta.Repository(ctx, n)
			if errors.Is(err, metastore.ErrRepoUnknown) {
				continue
			}
			if err != nil {
				return "", err
			}
			if other.Name != rec.Name && other.EncryptionType == metastore.EncryptionKMS && other.KmsKey == rec.KmsKey {
				return "", nil // still in use
			}
		}
		if !more || len(names) == 0 {
			break
		}
		last = names[len(names)-1]
	}
	// Blobs the repository shared with repositories under other keys
	// must have their copies under those keys before this one goes.
	if failed, err := s.keyPass(ctx, true); err != nil {
		return "", err
	} else if failed > 0 {
		return "", fmt.Errorf("%d blobs shared with other repositories still lack a copy of their data key under those repositories' keys (see the log); retry the deletion's key destruction with 'strata keys destroy %s --keyring FILE --force' once they have one", failed, rec.KmsKey)
	}
	if err := s.cfg.KeyManager.Destroy(rec.KmsKey); err != nil {
		return "", err
	}
	s.purgeKeyCache()
	s.log.Warn("repository key destroyed: what it wrapped can no longer be read", "key", rec.KmsKey, "repository", rec.Name, "at", time.Now().UTC())
	return rec.KmsKey, nil
}
