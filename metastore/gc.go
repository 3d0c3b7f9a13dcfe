package metastore

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Garbage collection, repository policies and pull times. The collector
// (gc/) decides what to collect from the queries at the end of this file and
// proposes commands; the commands re-check everything atomically, so a push
// and a collection can never race.

// More sentinels of the collection path.
var (
	ErrBlobInUse    = errors.New("metastore: blob is referenced")
	ErrRepoNotEmpty = errors.New("metastore: repository is not empty")
	ErrRepoExists   = errors.New("metastore: repository already exists")
)

func init() {
	errorCodes["BLOB_IN_USE"] = ErrBlobInUse
	errorCodes["REPO_NOT_EMPTY"] = ErrRepoNotEmpty
	errorCodes["REPO_EXISTS"] = ErrRepoExists
}

func validMutability(mode string) error {
	switch mode {
	case "", Mutable, Immutable, MutableWithExclusion, ImmutableWithExclusion:
		return nil
	}
	return fmt.Errorf("%w: tag mutability %q", ErrCommandInvalid, mode)
}

// validDurability checks a durability class: none (0+0), or k >= 1 data
// shards and m parity shards with k+m at most 32.
func validDurability(k, m uint32) error {
	if (k == 0 && m == 0) || (k >= 1 && k+m <= 32) {
		return nil
	}
	return fmt.Errorf("%w: durability class %d+%d (want k >= 1, k+m <= 32)", ErrCommandInvalid, k, m)
}

func (t *txn) createRepository(c *pb.CreateRepository) error {
	if c.Repo == "" {
		return fmt.Errorf("%w: repository needs a name", ErrCommandInvalid)
	}
	if err := validMutability(c.TagMutability); err != nil {
		return err
	}
	if ok, err := t.has(repoKey(c.Repo)); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("%w: %s", ErrRepoExists, c.Repo)
	}
	if err := validDurability(c.DurabilityK, c.DurabilityM); err != nil {
		return err
	}
	switch {
	case c.EncryptionType == EncryptionKMS && c.KmsKey == "":
		return fmt.Errorf("%w: encryption type KMS needs a key name", ErrCommandInvalid)
	case c.EncryptionType == EncryptionKMS:
	case c.EncryptionType == "" || c.EncryptionType == EncryptionAES256:
		if c.KmsKey != "" {
			return fmt.Errorf("%w: a key name goes with encryption type KMS, not %q", ErrCommandInvalid, c.EncryptionType)
		}
	default:
		return fmt.Errorf("%w: encryption type %q (want AES256 or KMS)", ErrCommandInvalid, c.EncryptionType)
	}
	if err := t.put(repoKey(c.Repo), &pb.Repository{Name: c.Repo, CreatedUnixNano: t.now,
		TagMutability: c.TagMutability, MutabilityExclusions: c.MutabilityExclusions,
		DurabilityK: c.DurabilityK, DurabilityM: c.DurabilityM,
		EncryptionType: c.EncryptionType, KmsKey: c.KmsKey}); err != nil {
		return err
	}
	return t.emit(&pb.Event{Type: "repository.create", Repo: c.Repo})
}

// Encryption types of a repository (ECR's encryptionConfiguration).
const (
	EncryptionAES256 = "AES256" // the server's default key-encryption key
	EncryptionKMS    = "KMS"    // a key of its own, named by kms_key
)

// Tag mutability modes (ECR's imageTagMutability).
const (
	Mutable                = "MUTABLE"
	Immutable              = "IMMUTABLE"
	MutableWithExclusion   = "MUTABLE_WITH_EXCLUSION"
	ImmutableWithExclusion = "IMMUTABLE_WITH_EXCLUSION"
)

// tagImmutable reports whether the repository's settings forbid moving tag.
func tagImmutable(r *pb.Repository, tag string) bool {
	excluded := slices.ContainsFunc(r.MutabilityExclusions, func(f string) bool { return MatchWildcard(f, tag) })
	switch r.TagMutability {
	case Immutable:
		return true
	case ImmutableWithExclusion:
		return !excluded
	case MutableWithExclusion:
		return excluded
	}
	return false
}

// MatchWildcard reports whether s matches pattern, where '*' matches any run
// of characters (including none) and every other character itself.
func MatchWildcard(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return strings.HasSuffix(s, last)
}

func (t *txn) collectBlob(c *pb.CollectBlob) error {
	var l pb.BlobLayout
	ok, err := t.load(blobKey(c.Digest), &l)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrBlobUnknown, c.Digest)
	}
	var rc pb.RefCount
	if _, err := t.load(refCountKey(c.Digest), &rc); err != nil {
		return err
	}
	if rc.ManifestRefs > 0 || rc.UnreferencedSinceUnixNano == 0 || rc.UnreferencedSinceUnixNano > c.CutoffUnixNano {
		return fmt.Errorf("%w: %s (%d manifest references, unreferenced since %d, cutoff %d)",
			ErrBlobInUse, c.Digest, rc.ManifestRefs, rc.UnreferencedSinceUnixNano, c.CutoffUnixNano)
	}
	// Every repository that links it loses it, with a tombstone.
	pfx := blobRepoPrefix(c.Digest)
	var repos []string
	it, err := t.b.NewIter(&pebble.IterOptions{LowerBound: pfx, UpperBound: prefixEnd(pfx)})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		repos = append(repos, string(it.Key()[len(pfx):]))
	}
	if err := it.Close(); err != nil {
		return err
	}
	for _, repo := range repos {
		for _, key := range [][]byte{linkKey(repo, c.Digest), blobRepoKey(c.Digest, repo)} {
			if err := t.del(key); err != nil {
				return err
			}
		}
		if err := t.b.Set(tombKey(repo, c.Digest), be64(nil, uint64(t.now)), nil); err != nil {
			return err
		}
	}
	for _, seg := range l.Segments {
		if err := t.del(segKey(seg.Id)); err != nil {
			return err
		}
		if err := t.del(repairKey(seg.Id)); err != nil {
			return err
		}
		for _, r := range seg.Shards {
			if err := t.del(nodeShardKey(r.Node, seg.Id, r.Index)); err != nil {
				return err
			}
		}
	}
	if err := t.del(gcqKey(rc.UnreferencedSinceUnixNano, c.Digest)); err != nil {
		return err
	}
	if err := t.del(refCountKey(c.Digest)); err != nil {
		return err
	}
	if err := t.del(blobKey(c.Digest)); err != nil {
		return err
	}
	if err := t.delPrefix(keyNeedPrefix(c.Digest)); err != nil {
		return err
	}
	if err := t.emit(&pb.Event{Type: "blob.collect", Digest: c.Digest, Size: l.Size}); err != nil {
		return err
	}
	return t.orphan("", c.Digest, l.Segments)
}

func (t *txn) dropOrphans(c *pb.DropOrphans) error {
	for _, id := range c.SegmentIds {
		if err := t.del(orphanKey(id)); err != nil {
			return err
		}
	}
	return nil
}

func (t *txn) deleteRepository(c *pb.DeleteRepository) error {
	if ok, err := t.has(repoKey(c.Repo)); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("%w: %s", ErrRepoUnknown, c.Repo)
	}
	var manifests []string
	pfx := manifestPrefix(c.Repo)
	it, err := t.b.NewIter(&pebble.IterOptions{LowerBound: pfx, UpperBound: prefixEnd(pfx)})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		manifests = append(manifests, string(it.Key()[len(pfx):]))
	}
	if err := it.Close(); err != nil {
		return err
	}
	if len(manifests) > 0 && !c.Force {
		return fmt.Errorf("%w: %s holds %d manifests (delete with force)", ErrRepoNotEmpty, c.Repo, len(manifests))
	}
	for _, d := range manifests {
		if err := t.deleteManifest(&pb.DeleteManifest{Repo: c.Repo, Digest: d, Reason: "repository deleted"}); err != nil {
			return err
		}
	}
	var blobs []string
	lpfx := append(k(pfxLink, c.Repo), 0)
	it, err = t.b.NewIter(&pebble.IterOptions{LowerBound: lpfx, UpperBound: prefixEnd(lpfx)})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		blobs = append(blobs, string(it.Key()[len(lpfx):]))
	}
	if err := it.Close(); err != nil {
		return err
	}
	for _, d := range blobs {
		if err := t.unlinkBlob(&pb.UnlinkBlob{Repo: c.Repo, Digest: d}); err != nil {
			return err
		}
	}
	if err := t.del(repoKey(c.Repo)); err != nil {
		return err
	}
	return t.emit(&pb.Event{Type: "repository.delete", Repo: c.Repo})
}

func (t *txn) setRepositoryPolicy(c *pb.SetRepositoryPolicy) error {
	var r pb.Repository
	ok, err := t.load(repoKey(c.Repo), &r)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrRepoUnknown, c.Repo)
	}
	for _, field := range c.Set {
		switch field {
		case "tag_mutability":
			if err := validMutability(c.TagMutability); err != nil {
				return err
			}
			r.TagMutability, r.MutabilityExclusions = c.TagMutability, c.MutabilityExclusions
		case "lifecycle_policy":
			r.LifecyclePolicy, r.LifecyclePolicyUpdatedUnixNano = c.LifecyclePolicy, t.now
		case "lifecycle_preview_policy":
			r.LifecyclePreviewPolicy = c.LifecyclePreviewPolicy
		case "durability":
			if err := validDurability(c.DurabilityK, c.DurabilityM); err != nil {
				return err
			}
			r.DurabilityK, r.DurabilityM = c.DurabilityK, c.DurabilityM
		default:
			return fmt.Errorf("%w: unknown repository setting %q", ErrCommandInvalid, field)
		}
	}
	return t.put(repoKey(c.Repo), &r)
}

func (t *txn) recordPulls(c *pb.RecordPulls) error {
	for _, p := range c.Pulls {
		ok, err := t.has(manifestKey(p.Repo, p.Digest))
		if err != nil {
			return err
		}
		if !ok {
			continue // deleted since: nothing to record
		}
		if err := t.b.Set(pullKey(p.Repo, p.Digest), be64(nil, uint64(p.TimeUnixNano)), nil); err != nil {
			return err
		}
	}
	return nil
}

// ---- queries for the collector and lifecycle ----

// GCCandidate is a blob no manifest references.
type GCCandidate struct {
	Digest              string
	UnreferencedSinceNs int64
}

// GCCandidates lists up to limit blobs no manifest has referenced since
// before cutoff (Unix nanoseconds), longest unreferenced first.
func (s *Store) GCCandidates(cutoff int64, limit int) ([]GCCandidate, error) {
	pfx := []byte(pfxGCQueue)
	var out []GCCandidate
	err := s.scan(pfx, nil, func(key, _ []byte) bool {
		since := int64(beUint64(key[len(pfx) : len(pfx)+8]))
		if since > cutoff {
			return false
		}
		out = append(out, GCCandidate{Digest: string(key[len(pfx)+9:]), UnreferencedSinceNs: since})
		return len(out) < limit
	})
	return out, err
}

// CountGCQueue counts the blobs no manifest references.
func (s *Store) CountGCQueue() (int, error) {
	n := 0
	err := s.scan([]byte(pfxGCQueue), nil, func(_, _ []byte) bool { n++; return true })
	return n, err
}

// IdleUploads lists up to limit upload sessions not updated since before
// cutoff.
func (s *Store) IdleUploads(cutoff int64, limit int) ([]*pb.Upload, error) {
	var out []*pb.Upload
	err := scanRecords(s, []byte(pfxUpload), nil, func(_ []byte, u *pb.Upload) bool {
		if u.UpdatedUnixNano < cutoff {
			out = append(out, u)
		}
		return len(out) < limit
	})
	return out, err
}

// UploadEndsBefore counts, up to limit, the records of ended uploads made
// before before (what DropUploadEnds would drop).
func (s *Store) UploadEndsBefore(before int64, limit int) (int, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(pfxUpEndT), UpperBound: timeKey(pfxUpEndT, before, "")})
	if err != nil {
		return 0, err
	}
	n := 0
	for ok := it.First(); ok && n < limit; ok = it.Next() {
		n++
	}
	return n, it.Close()
}

// SegmentReferenced reports whether anything still refers to a segment id: a
// blob layout, an open upload, or an orphan record awaiting deletion.
func (s *Store) SegmentReferenced(id string) (bool, error) {
	for _, key := range [][]byte{segKey(id), upSegKey(id), orphanKey(id)} {
		ok, err := s.has(key)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

// ImageInfo is a manifest of a repository with what lifecycle rules look at.
type ImageInfo struct {
	Digest       string
	Tags         []string
	PushedNs     int64
	LastPulledNs int64
	Subject      string
}

// Images lists every manifest of repo with its tags and push and pull times.
func (s *Store) Images(repo string) ([]ImageInfo, error) {
	var out []ImageInfo
	err := scanRecords(s, manifestPrefix(repo), nil, func(_ []byte, m *pb.ManifestRecord) bool {
		out = append(out, ImageInfo{Digest: m.Digest, PushedNs: m.PushedUnixNano, Subject: m.Subject})
		return true
	})
	if err != nil {
		return nil, err
	}
	for i := range out {
		tp := tagRevPrefix(repo, out[i].Digest)
		if err := s.scan(tp, nil, func(key, _ []byte) bool {
			out[i].Tags = append(out[i].Tags, string(key[len(tp):]))
			return true
		}); err != nil {
			return nil, err
		}
		v, c, err := s.db.Get(pullKey(repo, out[i].Digest))
		if err == nil {
			if len(v) == 8 {
				out[i].LastPulledNs = int64(beUint64(v))
			}
			c.Close()
		} else if !errors.Is(err, pebble.ErrNotFound) {
			return nil, err
		}
	}
	return out, nil
}

// RepositoriesWithLifecyclePolicy lists the repositories that have a
// lifecycle policy.
func (s *Store) RepositoriesWithLifecyclePolicy() ([]*pb.Repository, error) {
	var out []*pb.Repository
	err := scanRecords(s, []byte(pfxRepo), nil, func(_ []byte, r *pb.Repository) bool {
		if r.LifecyclePolicy != "" {
			out = append(out, r)
		}
		return true
	})
	return out, err
}

// ShardReferenced reports whether a shard found on a storage node is still
// wanted: the layout places that shard on that node, or its segment belongs
// to an open upload or awaits deletion as an orphan.
func (s *Store) ShardReferenced(node, segment string, index uint32) (bool, error) {
	for _, key := range [][]byte{nodeShardKey(node, segment, index), upSegKey(segment), orphanKey(segment)} {
		ok, err := s.has(key)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}
