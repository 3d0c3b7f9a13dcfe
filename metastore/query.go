package metastore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// The queries read the local database. Whether what they read is current is
// the caller's business (cluster/ fences linearizable reads).

func (s *Store) load(key []byte, m proto.Message, notFound error) error {
	v, c, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return notFound
	}
	if err != nil {
		return err
	}
	defer c.Close()
	if err := proto.Unmarshal(v, m); err != nil {
		return fmt.Errorf("%w: %q: %v", ErrCorrupt, key, err)
	}
	return nil
}

func (s *Store) has(key []byte) (bool, error) {
	_, c, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	c.Close()
	return true, nil
}

// Blob returns a blob's layout wherever it is linked.
func (s *Store) Blob(dgst string) (*pb.BlobLayout, error) {
	var l pb.BlobLayout
	if err := s.load(blobKey(dgst), &l, fmt.Errorf("%w: %s", ErrBlobUnknown, dgst)); err != nil {
		return nil, err
	}
	return &l, nil
}

// RepoBlob returns a blob's layout if repo links it.
func (s *Store) RepoBlob(repo, dgst string) (*pb.BlobLayout, error) {
	ok, err := s.has(linkKey(repo, dgst))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s in %s", ErrBlobUnknown, dgst, repo)
	}
	return s.Blob(dgst)
}

// BlobRepositories lists up to limit repositories that link the blob.
func (s *Store) BlobRepositories(dgst string, limit int) ([]string, error) {
	pfx := blobRepoPrefix(dgst)
	var out []string
	err := s.scan(pfx, nil, func(key, _ []byte) bool {
		out = append(out, string(key[len(pfx):]))
		return len(out) < limit
	})
	return out, err
}

// RefCount returns what keeps a digest alive (zero values when nothing does).
func (s *Store) RefCount(dgst string) (*pb.RefCount, error) {
	var rc pb.RefCount
	if err := s.load(refCountKey(dgst), &rc, nil); err != nil {
		return nil, err
	}
	return &rc, nil
}

// Upload returns an open upload session: ErrUploadUnknown when one was and
// has ended, ErrUploadNotStarted when none was ever recorded under id.
func (s *Store) Upload(id string) (*pb.Upload, error) {
	var u pb.Upload
	err := s.load(uploadKey(id), &u, fmt.Errorf("%w: %s", ErrUploadUnknown, id))
	if errors.Is(err, ErrUploadUnknown) {
		if ended, herr := s.has(upEndKey(id)); herr != nil {
			return nil, herr
		} else if !ended {
			return nil, fmt.Errorf("%w: %s", ErrUploadNotStarted, id)
		}
	}
	if err != nil {
		return nil, err
	}
	return &u, nil
}

// Manifest returns a manifest of repo by digest.
func (s *Store) Manifest(repo, dgst string) (*pb.ManifestRecord, error) {
	var m pb.ManifestRecord
	if err := s.load(manifestKey(repo, dgst), &m, fmt.Errorf("%w: %s in %s", ErrManifestUnknown, dgst, repo)); err != nil {
		return nil, err
	}
	return &m, nil
}

// ManifestByTag returns the manifest a tag of repo points at.
func (s *Store) ManifestByTag(repo, tag string) (*pb.ManifestRecord, error) {
	t, err := s.Tag(repo, tag)
	if err != nil {
		return nil, err
	}
	return s.Manifest(repo, t.Digest)
}

// Tag returns a tag of repo.
func (s *Store) Tag(repo, tag string) (*pb.TagRecord, error) {
	var t pb.TagRecord
	if err := s.load(tagKey(repo, tag), &t, fmt.Errorf("%w: %s in %s", ErrTagUnknown, tag, repo)); err != nil {
		return nil, err
	}
	return &t, nil
}

// Repository returns a repository's record.
func (s *Store) Repository(repo string) (*pb.Repository, error) {
	var r pb.Repository
	if err := s.load(repoKey(repo), &r, fmt.Errorf("%w: %s", ErrRepoUnknown, repo)); err != nil {
		return nil, err
	}
	return &r, nil
}

// Tags lists up to n tags of repo in lexical order, starting after last.
// more reports whether tags remain after the page. n <= 0 means no limit.
// A repository that does not exist is ErrRepoUnknown, so that a listing
// needs one read, not a second one for the repository.
func (s *Store) Tags(repo, last string, n int) (tags []string, more bool, err error) {
	ok, err := s.has(repoKey(repo))
	if err != nil {
		return nil, false, err
	}
	if !ok {
		return nil, false, fmt.Errorf("%w: %s", ErrRepoUnknown, repo)
	}
	return s.page(tagPrefix(repo), last, n)
}

// Repositories lists up to n repository names in lexical order, after last.
func (s *Store) Repositories(last string, n int) (names []string, more bool, err error) {
	return s.page([]byte(pfxRepo), last, n)
}

// page lists the suffixes of keys under pfx after last, n at most.
func (s *Store) page(pfx []byte, last string, n int) ([]string, bool, error) {
	var start []byte
	if last != "" {
		start = append(append(append([]byte(nil), pfx...), last...), 0)
	}
	out := []string{}
	more := false
	err := s.scan(pfx, start, func(key, _ []byte) bool {
		if n > 0 && len(out) == n {
			more = true
			return false
		}
		out = append(out, string(key[len(pfx):]))
		return true
	})
	return out, more, err
}

// Referrers lists the descriptors of manifests in repo whose subject is subj.
func (s *Store) Referrers(repo, subj string) ([]*pb.Descriptor, error) {
	var out []*pb.Descriptor
	err := scanRecords(s, referrerPrefix(repo, subj), nil, func(_ []byte, d *pb.Descriptor) bool {
		out = append(out, d)
		return true
	})
	return out, err
}

// Events returns up to n outbox events with sequence greater than after.
func (s *Store) Events(after uint64, n int) ([]*pb.Event, error) {
	var out []*pb.Event
	err := scanRecords(s, []byte(pfxOutbox), outboxKey(after+1), func(_ []byte, e *pb.Event) bool {
		out = append(out, e)
		return len(out) < n
	})
	return out, err
}

// Orphans returns up to n segments that no blob references, after the
// segment id after.
func (s *Store) Orphans(after string, n int) ([]*pb.Segment, error) {
	var start []byte
	if after != "" {
		start = append(orphanKey(after), 0)
	}
	var out []*pb.Segment
	err := scanRecords(s, []byte(pfxOrphan), start, func(_ []byte, seg *pb.Segment) bool {
		out = append(out, seg)
		return len(out) < n
	})
	return out, err
}

// scan calls fn for each key under pfx from start (or the prefix's first key)
// until fn returns false. key and value are valid only during the call.
func (s *Store) scan(pfx, start []byte, fn func(key, value []byte) bool) error {
	opts := &pebble.IterOptions{LowerBound: pfx, UpperBound: prefixEnd(pfx)}
	if len(pfx) == 0 {
		opts = nil // the whole keyspace (an empty, non-nil bound trips pebble's invariants)
	}
	it, err := s.db.NewIter(opts)
	if err != nil {
		return err
	}
	var ok bool
	if start != nil {
		ok = it.SeekGE(start)
	} else {
		ok = it.First()
	}
	for ; ok; ok = it.Next() {
		if !fn(it.Key(), it.Value()) {
			break
		}
	}
	return it.Close()
}

// Fingerprint hashes the whole replicated state except the applied index
// and the request-deduplication records:
// two replicas that applied the same log have the same fingerprint, and a
// refused command leaves it unchanged.
func (s *Store) Fingerprint() ([32]byte, error) {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	err := s.scan([]byte{}, nil, func(k, v []byte) bool {
		if string(k) == keyApplied || bytes.HasPrefix(k, []byte(pfxReq)) || bytes.HasPrefix(k, []byte(pfxReqTime)) {
			return true
		}
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(k)))])
		h.Write(k)
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(v)))])
		h.Write(v)
		return true
	})
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out, err
}

// Node returns a node of the registry.
func (s *Store) Node(id string) (*pb.NodeRecord, error) {
	var n pb.NodeRecord
	if err := s.load(nodeKey(id), &n, fmt.Errorf("%w: %s", ErrNodeUnknown, id)); err != nil {
		return nil, err
	}
	return &n, nil
}

// Nodes returns every node of the registry, ordered by id.
func (s *Store) Nodes() ([]*pb.NodeRecord, error) {
	var out []*pb.NodeRecord
	err := scanRecords(s, []byte(pfxNode), nil, func(_ []byte, n *pb.NodeRecord) bool {
		out = append(out, n)
		return true
	})
	return out, err
}

// ShardLoc names one shard of a segment.
type ShardLoc struct {
	Segment string
	Index   uint32
}

// ShardsOnNode lists up to limit shards the registry places on node, after
// the shard after (zero value: from the start).
func (s *Store) ShardsOnNode(node string, after ShardLoc, limit int) ([]ShardLoc, error) {
	pfx := nodeShardPrefix(node)
	var start []byte
	if after.Segment != "" {
		start = append(nodeShardKey(node, after.Segment, after.Index), 0)
	}
	var out []ShardLoc
	err := s.scan(pfx, start, func(key, _ []byte) bool {
		rest := key[len(pfx):]
		if len(rest) < 5 {
			return true
		}
		out = append(out, ShardLoc{Segment: string(rest[:len(rest)-5]), Index: binary.BigEndian.Uint32(rest[len(rest)-4:])})
		return len(out) < limit
	})
	return out, err
}

// CountShardsOnNode counts the shards the registry places on node.
func (s *Store) CountShardsOnNode(node string) (int, error) {
	n := 0
	err := s.scan(nodeShardPrefix(node), nil, func(_, _ []byte) bool { n++; return true })
	return n, err
}

// Segment returns a segment by id and the digest of the blob it belongs to.
func (s *Store) Segment(id string) (string, *pb.Segment, error) {
	v, c, err := s.db.Get(segKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return "", nil, fmt.Errorf("%w: segment %s", ErrBlobUnknown, id)
	}
	if err != nil {
		return "", nil, err
	}
	dgst := string(v)
	c.Close()
	l, err := s.Blob(dgst)
	if err != nil {
		return "", nil, err
	}
	for _, seg := range l.Segments {
		if seg.Id == id {
			return dgst, seg, nil
		}
	}
	return "", nil, fmt.Errorf("%w: segment %s not in %s", ErrCorrupt, id, dgst)
}

// RepairQueue lists up to limit segments waiting for repair, after the
// segment id after.
func (s *Store) RepairQueue(after string, limit int) ([]*pb.RepairItem, error) {
	var start []byte
	if after != "" {
		start = append(repairKey(after), 0)
	}
	var out []*pb.RepairItem
	err := scanRecords(s, []byte(pfxRepair), start, func(_ []byte, it *pb.RepairItem) bool {
		out = append(out, it)
		return len(out) < limit
	})
	return out, err
}

// CountRepairQueue counts the segments waiting for repair.
func (s *Store) CountRepairQueue() (int, error) {
	n := 0
	err := s.scan([]byte(pfxRepair), nil, func(_, _ []byte) bool { n++; return true })
	return n, err
}

// scanRecords decodes each record under pfx (from start) into a fresh T and
// calls fn until it returns false. A record that does not decode stops the
// scan with ErrCorrupt.
func scanRecords[T any, PT interface {
	*T
	proto.Message
}](s *Store, pfx, start []byte, fn func(key []byte, rec PT) bool) error {
	var derr error
	err := s.scan(pfx, start, func(key, v []byte) bool {
		rec := PT(new(T))
		if derr = unmarshal(key, v, rec); derr != nil {
			return false
		}
		return fn(key, rec)
	})
	if err == nil {
		err = derr
	}
	return err
}

func unmarshal(key, v []byte, m proto.Message) error {
	if err := proto.Unmarshal(v, m); err != nil {
		return fmt.Errorf("%w: %q: %v", ErrCorrupt, key, err)
	}
	return nil
}
