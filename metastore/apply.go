package metastore

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// txn applies one command inside the batch of its log entries. Every command
// reads and checks first and writes only once nothing can refuse it.
type txn struct {
	b   *pebble.Batch
	now int64
}

// requestTTL is how long a request id is remembered for deduplication,
// measured in proposer time. Retries come within seconds; this is generous.
const requestTTL = int64(10 * 60 * 1e9)

// applyOnce applies cmd unless its request id was applied before, in which
// case the first result is returned again. Errors that are not refusals of
// the command (the batch itself failing) are not remembered.
func (t *txn) applyOnce(cmd *pb.Command) error {
	if cmd.RequestId == "" {
		return t.apply(cmd)
	}
	var prev pb.RequestRecord
	found, err := t.load(reqKey(cmd.RequestId), &prev)
	if err != nil {
		return err
	}
	if found {
		if r := prev.Result; r != nil {
			return ErrorFromCode(r.ErrorCode, r.ErrorDetail)
		}
		return nil
	}
	res := t.apply(cmd)
	rec := &pb.RequestRecord{Result: &pb.ApplyResult{}, TimeUnixNano: t.now}
	if res != nil {
		code := ErrorCode(res)
		if code == "" {
			return res // not a refusal: nothing to remember
		}
		rec.Result.ErrorCode, rec.Result.ErrorDetail = code, res.Error()
	}
	if err := t.put(reqKey(cmd.RequestId), rec); err != nil {
		return err
	}
	if err := t.set(timeKey(pfxReqTime, t.now, cmd.RequestId)); err != nil {
		return err
	}
	if err := t.expireRequests(); err != nil {
		return err
	}
	return res
}

// expireRequests forgets a bounded number of request ids older than
// requestTTL before this command's time.
func (t *txn) expireRequests() error {
	return t.dropByTime(pfxReqTime, t.now-requestTTL, 64, reqKey)
}

// dropByTime deletes up to limit entries of the time index pfx (timeKey)
// older than before, each with the record key(id) it indexes.
func (t *txn) dropByTime(pfx string, before int64, limit int, key func(id string) []byte) error {
	it, err := t.b.NewIter(&pebble.IterOptions{LowerBound: []byte(pfx), UpperBound: timeKey(pfx, before, "")})
	if err != nil {
		return err
	}
	var keys [][]byte
	for ok := it.First(); ok && len(keys) < limit; ok = it.Next() {
		keys = append(keys, append([]byte(nil), it.Key()...))
	}
	if err := it.Close(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := t.del(key(string(k[len(pfx)+9:]))); err != nil {
			return err
		}
		if err := t.del(k); err != nil {
			return err
		}
	}
	return nil
}

func (t *txn) apply(cmd *pb.Command) error {
	switch op := cmd.Op.(type) {
	case *pb.Command_OpenUpload:
		return t.openUpload(op.OpenUpload)
	case *pb.Command_UpdateUpload:
		return t.updateUpload(op.UpdateUpload)
	case *pb.Command_CancelUpload:
		return t.cancelUpload(op.CancelUpload)
	case *pb.Command_CommitBlob:
		return t.commitBlob(op.CommitBlob)
	case *pb.Command_MountBlob:
		return t.mountBlob(op.MountBlob)
	case *pb.Command_UnlinkBlob:
		return t.unlinkBlob(op.UnlinkBlob)
	case *pb.Command_PutManifest:
		return t.putManifest(op.PutManifest)
	case *pb.Command_DeleteManifest:
		return t.deleteManifest(op.DeleteManifest)
	case *pb.Command_DeleteTag:
		return t.deleteTag(op.DeleteTag)
	case *pb.Command_RegisterNode:
		return t.registerNode(op.RegisterNode)
	case *pb.Command_RemoveNode:
		return t.removeNode(op.RemoveNode)
	case *pb.Command_SetNodeState:
		return t.setNodeState(op.SetNodeState)
	case *pb.Command_ReplaceShard:
		return t.replaceShard(op.ReplaceShard)
	case *pb.Command_ReportShard:
		return t.reportShard(op.ReportShard)
	case *pb.Command_CollectBlob:
		return t.collectBlob(op.CollectBlob)
	case *pb.Command_DropOrphans:
		return t.dropOrphans(op.DropOrphans)
	case *pb.Command_DeleteRepository:
		return t.deleteRepository(op.DeleteRepository)
	case *pb.Command_SetRepositoryPolicy:
		return t.setRepositoryPolicy(op.SetRepositoryPolicy)
	case *pb.Command_RecordPulls:
		return t.recordPulls(op.RecordPulls)
	case *pb.Command_CreateRepository:
		return t.createRepository(op.CreateRepository)
	case *pb.Command_SetWrappedKeys:
		return t.setWrappedKeys(op.SetWrappedKeys)
	case *pb.Command_DropUploadEnds:
		return t.dropUploadEnds(op.DropUploadEnds)
	case nil:
		return fmt.Errorf("%w: empty command", ErrCommandInvalid)
	default:
		return fmt.Errorf("%w: unknown command %T", ErrCommandInvalid, op)
	}
}

// ---- record helpers ----

func (t *txn) has(key []byte) (bool, error) {
	_, c, err := t.b.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	c.Close()
	return true, nil
}

// load reads key into m; found is false when the key is absent.
func (t *txn) load(key []byte, m proto.Message) (found bool, err error) {
	v, c, err := t.b.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer c.Close()
	if err := proto.Unmarshal(v, m); err != nil {
		return false, fmt.Errorf("%w: %q: %v", ErrCorrupt, key, err)
	}
	return true, nil
}

func (t *txn) put(key []byte, m proto.Message) error {
	v, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return t.b.Set(key, v, nil)
}

func (t *txn) set(key []byte) error { return t.b.Set(key, nil, nil) }
func (t *txn) del(key []byte) error { return t.b.Delete(key, nil) }

func (t *txn) ensureRepo(repo string) error {
	ok, err := t.has(repoKey(repo))
	if err != nil || ok {
		return err
	}
	return t.put(repoKey(repo), &pb.Repository{Name: repo, CreatedUnixNano: t.now})
}

// addRefs adjusts a digest's reference counts. A blob (a digest with a
// layout) keeps its record while the layout exists, and enters the garbage
// collector's queue (gcq/) whenever no manifest references it.
func (t *txn) addRefs(dgst string, links, manifestRefs int64) error {
	var rc pb.RefCount
	if _, err := t.load(refCountKey(dgst), &rc); err != nil {
		return err
	}
	wasQueued := rc.UnreferencedSinceUnixNano != 0
	rc.Links += links
	rc.ManifestRefs += manifestRefs
	isBlob, err := t.has(blobKey(dgst))
	if err != nil {
		return err
	}
	switch {
	case rc.ManifestRefs > 0 && wasQueued:
		if err := t.del(gcqKey(rc.UnreferencedSinceUnixNano, dgst)); err != nil {
			return err
		}
		rc.UnreferencedSinceUnixNano = 0
	case rc.ManifestRefs <= 0 && !wasQueued && isBlob:
		rc.UnreferencedSinceUnixNano = max(t.now, 1)
		if err := t.set(gcqKey(rc.UnreferencedSinceUnixNano, dgst)); err != nil {
			return err
		}
	}
	if !isBlob && rc.Links <= 0 && rc.ManifestRefs <= 0 {
		return t.del(refCountKey(dgst))
	}
	return t.put(refCountKey(dgst), &rc)
}

func (t *txn) emit(ev *pb.Event) error {
	var seq uint64
	v, c, err := t.b.Get([]byte(keyOutboxSeq))
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return err
	default:
		if len(v) == 8 {
			seq = beUint64(v)
		}
		c.Close()
	}
	seq++
	ev.Seq = seq
	ev.TimeUnixNano = t.now
	if err := t.b.Set([]byte(keyOutboxSeq), be64(nil, seq), nil); err != nil {
		return err
	}
	return t.put(outboxKey(seq), ev)
}

func segmentsLength(segs []*pb.Segment) uint64 {
	var n uint64
	for _, s := range segs {
		n += s.Length
	}
	return n
}

// ---- uploads ----

func (t *txn) openUpload(c *pb.OpenUpload) error {
	u, err := t.newUpload(c)
	if err != nil {
		return err
	}
	return t.put(uploadKey(c.Id), u)
}

// newUpload checks that c may open an upload (a new id, never ended) and
// returns it.
func (t *txn) newUpload(c *pb.OpenUpload) (*pb.Upload, error) {
	if c.Id == "" || c.Repo == "" {
		return nil, fmt.Errorf("%w: upload needs an id and a repository", ErrCommandInvalid)
	}
	if ok, err := t.has(uploadKey(c.Id)); err != nil {
		return nil, err
	} else if ok {
		return nil, fmt.Errorf("%w: upload %s exists", ErrCommandInvalid, c.Id)
	}
	if err := t.checkNotEnded(c.Id); err != nil {
		return nil, err
	}
	return &pb.Upload{Id: c.Id, Repo: c.Repo, StartedUnixNano: t.now, UpdatedUnixNano: t.now, Key: c.Key}, nil
}

// checkNotEnded refuses an upload id that has ended.
func (t *txn) checkNotEnded(id string) error {
	if ended, err := t.has(upEndKey(id)); err != nil {
		return err
	} else if ended {
		return fmt.Errorf("%w: %s has ended", ErrUploadUnknown, id)
	}
	return nil
}

// endUpload records that upload id has ended.
func (t *txn) endUpload(id string) error {
	if err := t.set(upEndKey(id)); err != nil {
		return err
	}
	return t.set(timeKey(pfxUpEndT, t.now, id))
}

func (t *txn) dropUploadEnds(c *pb.DropUploadEnds) error {
	return t.dropByTime(pfxUpEndT, c.BeforeUnixNano, int(max(c.Limit, 1)), upEndKey)
}

func (t *txn) loadUpload(id string) (*pb.Upload, error) {
	var u pb.Upload
	ok, err := t.load(uploadKey(id), &u)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUploadUnknown, id)
	}
	return &u, nil
}

func (t *txn) updateUpload(c *pb.UpdateUpload) error {
	u, err := t.loadUpload(c.Id)
	if errors.Is(err, ErrUploadUnknown) && c.Open != nil {
		// A deferred session's first write opens it.
		if c.Open.Id != c.Id {
			return fmt.Errorf("%w: opening upload %s for %s", ErrCommandInvalid, c.Open.Id, c.Id)
		}
		u, err = t.newUpload(c.Open)
	}
	if err != nil {
		return err
	}
	if u.Offset != c.ExpectOffset {
		return fmt.Errorf("%w: upload %s is at %d, request started at %d", ErrUploadOffset, c.Id, u.Offset, c.ExpectOffset)
	}
	if c.NewOffset != u.Offset+segmentsLength(c.Segments) {
		return fmt.Errorf("%w: new offset %d does not match %d bytes of segments", ErrCommandInvalid, c.NewOffset, segmentsLength(c.Segments))
	}
	for _, s := range c.Segments {
		if err := t.b.Set(upSegKey(s.Id), []byte(c.Id), nil); err != nil {
			return err
		}
	}
	u.Offset = c.NewOffset
	u.Sha256State = c.Sha256State
	u.Segments = append(u.Segments, c.Segments...)
	u.UpdatedUnixNano = t.now
	return t.put(uploadKey(c.Id), u)
}

func (t *txn) cancelUpload(c *pb.CancelUpload) error {
	u, err := t.loadUpload(c.Id)
	if errors.Is(err, ErrUploadUnknown) && c.Deferred && c.Id != "" {
		// A deferred session cancelled before its first write.
		if err := t.checkNotEnded(c.Id); err != nil {
			return err
		}
		return t.endUpload(c.Id)
	}
	if err != nil {
		return err
	}
	if err := t.endUpload(c.Id); err != nil {
		return err
	}
	for _, s := range u.Segments {
		if err := t.del(upSegKey(s.Id)); err != nil {
			return err
		}
	}
	if err := t.orphan(u.Repo, "", u.Segments); err != nil {
		return err
	}
	return t.del(uploadKey(c.Id))
}

// orphan records segments that no blob will reference, for the sweeper.
func (t *txn) orphan(repo, dgst string, segs []*pb.Segment) error {
	if len(segs) == 0 {
		return nil
	}
	ids := make([]string, 0, len(segs))
	for _, s := range segs {
		if err := t.put(orphanKey(s.Id), s); err != nil {
			return err
		}
		ids = append(ids, s.Id)
	}
	return t.emit(&pb.Event{Type: "blob.orphan", Repo: repo, Digest: dgst, Segments: ids})
}

// ---- blobs ----

func (t *txn) commitBlob(c *pb.CommitBlob) error {
	if c.Repo == "" || c.Digest == "" {
		return fmt.Errorf("%w: commit needs a repository and a digest", ErrCommandInvalid)
	}
	segs := c.Segments
	key := c.Key
	var u *pb.Upload // nil for a single-request push or a deferred session's only request
	if c.UploadId != "" {
		var err error
		u, err = t.loadUpload(c.UploadId)
		if errors.Is(err, ErrUploadUnknown) && c.Deferred {
			if err := t.checkNotEnded(c.UploadId); err != nil {
				return err
			}
			if c.ExpectOffset != 0 {
				return fmt.Errorf("%w: upload %s is at 0, request started at %d", ErrUploadOffset, c.UploadId, c.ExpectOffset)
			}
			err = nil
		}
		if err != nil {
			return err
		}
	}
	if u != nil {
		if u.Repo != c.Repo {
			return fmt.Errorf("%w: upload %s belongs to another repository", ErrUploadUnknown, c.UploadId)
		}
		if u.Offset != c.ExpectOffset {
			return fmt.Errorf("%w: upload %s is at %d, request started at %d", ErrUploadOffset, c.UploadId, u.Offset, c.ExpectOffset)
		}
		segs = append(slices.Clip(u.Segments), c.Segments...)
		key = u.Key
	}
	if n := segmentsLength(segs); n != c.Size {
		return fmt.Errorf("%w: %d bytes stored, %d declared", ErrSizeInvalid, n, c.Size)
	}
	var existing pb.BlobLayout
	exists, err := t.load(blobKey(c.Digest), &existing)
	if err != nil {
		return err
	}
	linked, err := t.has(linkKey(c.Repo, c.Digest))
	if err != nil {
		return err
	}
	// Checks done; write.
	if c.UploadId != "" { // the session, recorded or deferred, ends here
		if err := t.endUpload(c.UploadId); err != nil {
			return err
		}
	}
	if u != nil {
		if err := t.del(uploadKey(u.Id)); err != nil {
			return err
		}
		for _, s := range u.Segments {
			if err := t.del(upSegKey(s.Id)); err != nil {
				return err
			}
		}
	}
	if exists {
		// Content is stored once: the new copy's shards are orphans (but
		// never segments the stored layout itself uses).
		kept := make(map[string]bool, len(existing.Segments))
		for _, s := range existing.Segments {
			kept[s.Id] = true
		}
		var extra []*pb.Segment
		for _, s := range segs {
			if !kept[s.Id] {
				extra = append(extra, s)
			}
		}
		if err := t.orphan(c.Repo, c.Digest, extra); err != nil {
			return err
		}
		// Linked under this repository's key, the stored data key needs a
		// copy wrapped by it.
		if key != nil {
			if err := t.noteKeyNeed(&existing, key.KeyName); err != nil {
				return err
			}
		}
	} else {
		layout := &pb.BlobLayout{Digest: c.Digest, Size: c.Size, Segments: segs, CreatedUnixNano: t.now}
		if key != nil {
			layout.Keys = []*pb.WrappedKey{key}
		}
		if err := t.put(blobKey(c.Digest), layout); err != nil {
			return err
		}
		if err := t.indexSegments(c.Digest, segs); err != nil {
			return err
		}
	}
	if err := t.ensureRepo(c.Repo); err != nil {
		return err
	}
	if !linked {
		if err := t.link(c.Repo, c.Digest); err != nil {
			return err
		}
	}
	return t.emit(&pb.Event{Type: "blob.push", Repo: c.Repo, Digest: c.Digest, Size: c.Size})
}

func (t *txn) link(repo, dgst string) error {
	if err := t.del(tombKey(repo, dgst)); err != nil {
		return err
	}
	if err := t.set(linkKey(repo, dgst)); err != nil {
		return err
	}
	if err := t.set(blobRepoKey(dgst, repo)); err != nil {
		return err
	}
	return t.addRefs(dgst, 1, 0)
}

func (t *txn) mountBlob(c *pb.MountBlob) error {
	if c.Repo == "" || c.Digest == "" {
		return fmt.Errorf("%w: mount needs a repository and a digest", ErrCommandInvalid)
	}
	var layout pb.BlobLayout
	ok, err := t.load(blobKey(c.Digest), &layout)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrBlobUnknown, c.Digest)
	}
	if c.From != "" {
		src, err := t.has(linkKey(c.From, c.Digest))
		if err != nil {
			return err
		}
		if !src {
			return fmt.Errorf("%w: %s in %s", ErrBlobUnknown, c.Digest, c.From)
		}
	}
	linked, err := t.has(linkKey(c.Repo, c.Digest))
	if err != nil || linked {
		return err
	}
	if err := t.ensureRepo(c.Repo); err != nil {
		return err
	}
	if err := t.link(c.Repo, c.Digest); err != nil {
		return err
	}
	if err := t.noteKeyNeed(&layout, c.KeyName); err != nil {
		return err
	}
	return t.emit(&pb.Event{Type: "blob.mount", Repo: c.Repo, Digest: c.Digest, Size: layout.Size})
}

func (t *txn) unlinkBlob(c *pb.UnlinkBlob) error {
	linked, err := t.has(linkKey(c.Repo, c.Digest))
	if err != nil {
		return err
	}
	if !linked {
		return fmt.Errorf("%w: %s in %s", ErrBlobUnknown, c.Digest, c.Repo)
	}
	if err := t.del(linkKey(c.Repo, c.Digest)); err != nil {
		return err
	}
	if err := t.del(blobRepoKey(c.Digest, c.Repo)); err != nil {
		return err
	}
	if err := t.b.Set(tombKey(c.Repo, c.Digest), be64(nil, uint64(t.now)), nil); err != nil {
		return err
	}
	if err := t.addRefs(c.Digest, -1, 0); err != nil {
		return err
	}
	return t.emit(&pb.Event{Type: "blob.delete", Repo: c.Repo, Digest: c.Digest})
}

// ---- manifests and tags ----

func (t *txn) putManifest(c *pb.PutManifest) error {
	if c.Repo == "" || c.Digest == "" || len(c.Body) == 0 {
		return fmt.Errorf("%w: manifest needs a repository, a digest and a body", ErrCommandInvalid)
	}
	for _, d := range c.Blobs {
		ok, err := t.has(linkKey(c.Repo, d))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: blob %s is not in %s", ErrManifestBlobUnknown, d, c.Repo)
		}
	}
	for _, d := range c.OptionalBlobs {
		ok, err := t.has(tombKey(c.Repo, d))
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("%w: blob %s was deleted from %s", ErrManifestBlobUnknown, d, c.Repo)
		}
	}
	for _, d := range c.Manifests {
		ok, err := t.has(manifestKey(c.Repo, d))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: manifest %s is not in %s", ErrManifestBlobUnknown, d, c.Repo)
		}
	}
	exists, err := t.has(manifestKey(c.Repo, c.Digest))
	if err != nil {
		return err
	}
	// Tag moves: read the current records before writing anything.
	type move struct {
		tag string
		old *pb.TagRecord
		had bool
	}
	var repo pb.Repository
	if _, err := t.load(repoKey(c.Repo), &repo); err != nil {
		return err
	}
	moves := make([]move, 0, len(c.Tags))
	for _, tag := range c.Tags {
		mv := move{tag: tag, old: &pb.TagRecord{}}
		if mv.had, err = t.load(tagKey(c.Repo, tag), mv.old); err != nil {
			return err
		}
		if mv.had && mv.old.Digest != c.Digest && tagImmutable(&repo, tag) {
			return fmt.Errorf("%w: tag %q in %s already points at %s and the repository's tags are immutable (%s)",
				ErrTagImmutable, tag, c.Repo, mv.old.Digest, repo.TagMutability)
		}
		moves = append(moves, mv)
	}

	// Checks done; write.
	if err := t.ensureRepo(c.Repo); err != nil {
		return err
	}
	if !exists {
		size := c.Size // sealed bodies carry their plaintext size
		if c.Key == nil {
			size = uint64(len(c.Body))
		}
		rec := &pb.ManifestRecord{
			Digest: c.Digest, MediaType: c.MediaType, Body: c.Body, PushedUnixNano: t.now, Size: size, Key: c.Key,
			Blobs: append(slices.Clip(c.Blobs), c.OptionalBlobs...), Manifests: append(slices.Clip(c.Manifests), c.OptionalManifests...),
			Subject: c.Subject, ArtifactType: c.ArtifactType, AnnotationsJson: c.AnnotationsJson,
		}
		if err := t.put(manifestKey(c.Repo, c.Digest), rec); err != nil {
			return err
		}
		for _, d := range rec.Blobs {
			if err := t.addRefs(d, 0, 1); err != nil {
				return err
			}
		}
		for _, d := range rec.Manifests {
			if err := t.addRefs(d, 0, 1); err != nil {
				return err
			}
		}
		if c.Subject != "" {
			if err := t.put(referrerKey(c.Repo, c.Subject, c.Digest), &pb.Descriptor{
				MediaType: c.MediaType, Digest: c.Digest, Size: size,
				ArtifactType: c.ArtifactType, AnnotationsJson: c.AnnotationsJson, Key: c.Key,
			}); err != nil {
				return err
			}
		}
		if err := t.emit(&pb.Event{Type: "manifest.push", Repo: c.Repo, Digest: c.Digest,
			MediaType: c.MediaType, Size: size}); err != nil {
			return err
		}
	}
	for _, mv := range moves {
		if mv.had && mv.old.Digest == c.Digest {
			continue
		}
		if err := t.moveTag(c.Repo, mv.tag, c.Digest, mv.had, mv.old); err != nil {
			return err
		}
	}
	return nil
}

// moveTag points tag at dgst ("" deletes it), recording the move in the
// tag's history and the outbox.
func (t *txn) moveTag(repo, tag, dgst string, had bool, old *pb.TagRecord) error {
	seq := uint64(1)
	if had {
		seq = old.Seq + 1
		if err := t.del(tagRevKey(repo, old.Digest, tag)); err != nil {
			return err
		}
	}
	if err := t.put(tagHistKey(repo, tag, seq), &pb.TagHistoryEntry{Digest: dgst, TimeUnixNano: t.now}); err != nil {
		return err
	}
	if dgst == "" {
		if err := t.del(tagKey(repo, tag)); err != nil {
			return err
		}
		return t.emit(&pb.Event{Type: "tag.delete", Repo: repo, Tag: tag, Digest: old.Digest})
	}
	if err := t.put(tagKey(repo, tag), &pb.TagRecord{Digest: dgst, UpdatedUnixNano: t.now, Seq: seq}); err != nil {
		return err
	}
	if err := t.set(tagRevKey(repo, dgst, tag)); err != nil {
		return err
	}
	return t.emit(&pb.Event{Type: "tag.push", Repo: repo, Tag: tag, Digest: dgst})
}

func (t *txn) deleteManifest(c *pb.DeleteManifest) error {
	var rec pb.ManifestRecord
	ok, err := t.load(manifestKey(c.Repo, c.Digest), &rec)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s in %s", ErrManifestUnknown, c.Digest, c.Repo)
	}
	// Tags pointing at it go with it.
	var tags []string
	pfx := tagRevPrefix(c.Repo, c.Digest)
	it, err := t.b.NewIter(&pebble.IterOptions{LowerBound: pfx, UpperBound: prefixEnd(pfx)})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		tags = append(tags, string(it.Key()[len(pfx):]))
	}
	if err := it.Close(); err != nil {
		return err
	}
	olds := make([]*pb.TagRecord, len(tags))
	for i, tag := range tags {
		olds[i] = &pb.TagRecord{}
		if _, err := t.load(tagKey(c.Repo, tag), olds[i]); err != nil {
			return err
		}
	}
	// Checks done; write.
	for i, tag := range tags {
		if err := t.moveTag(c.Repo, tag, "", true, olds[i]); err != nil {
			return err
		}
	}
	for _, d := range rec.Blobs {
		if err := t.addRefs(d, 0, -1); err != nil {
			return err
		}
	}
	for _, d := range rec.Manifests {
		if err := t.addRefs(d, 0, -1); err != nil {
			return err
		}
	}
	if rec.Subject != "" {
		if err := t.del(referrerKey(c.Repo, rec.Subject, c.Digest)); err != nil {
			return err
		}
	}
	if err := t.del(manifestKey(c.Repo, c.Digest)); err != nil {
		return err
	}
	if err := t.del(pullKey(c.Repo, c.Digest)); err != nil {
		return err
	}
	return t.emit(&pb.Event{Type: "manifest.delete", Repo: c.Repo, Digest: c.Digest, MediaType: rec.MediaType, Reason: c.Reason})
}

func (t *txn) deleteTag(c *pb.DeleteTag) error {
	var old pb.TagRecord
	ok, err := t.load(tagKey(c.Repo, c.Tag), &old)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s in %s", ErrTagUnknown, c.Tag, c.Repo)
	}
	return t.moveTag(c.Repo, c.Tag, "", true, &old)
}

// ---- node registry ----

// Node states.
const (
	NodeAlive    = "alive"
	NodeDead     = "dead"
	NodeDraining = "draining"
	NodeDrained  = "drained"
)

func (t *txn) registerNode(c *pb.RegisterNode) error {
	n := c.Node
	if n == nil || n.Id == "" {
		return fmt.Errorf("%w: node needs an id", ErrCommandInvalid)
	}
	var old pb.NodeRecord
	had, err := t.load(nodeKey(n.Id), &old)
	if err != nil {
		return err
	}
	rec := proto.Clone(n).(*pb.NodeRecord)
	rec.RegisteredUnixNano = t.now
	rec.State = NodeAlive
	if had {
		rec.RegisteredUnixNano = old.RegisteredUnixNano
		if old.State == NodeDraining || old.State == NodeDrained {
			rec.State = old.State // a restart does not end a drain
		}
	}
	rec.UpdatedUnixNano = t.now
	return t.put(nodeKey(n.Id), rec)
}

func (t *txn) removeNode(c *pb.RemoveNode) error {
	if ok, err := t.has(nodeKey(c.Id)); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("%w: %s", ErrNodeUnknown, c.Id)
	}
	// A storage node that the layouts still place shards on stays until
	// repair or a drain has moved them: removing it would hide them from
	// the repairer.
	pfx := nodeShardPrefix(c.Id)
	it, err := t.b.NewIter(&pebble.IterOptions{LowerBound: pfx, UpperBound: prefixEnd(pfx)})
	if err != nil {
		return err
	}
	holds := it.First()
	if err := it.Close(); err != nil {
		return err
	}
	if holds {
		return fmt.Errorf("%w: %s still holds shards; drain it (strata node drain) or let repair move them first", ErrNodeNotEmpty, c.Id)
	}
	return t.del(nodeKey(c.Id))
}

func (t *txn) setNodeState(c *pb.SetNodeState) error {
	switch c.State {
	case NodeAlive, NodeDead, NodeDraining, NodeDrained:
	default:
		return fmt.Errorf("%w: node state %q", ErrCommandInvalid, c.State)
	}
	var rec pb.NodeRecord
	ok, err := t.load(nodeKey(c.Id), &rec)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrNodeUnknown, c.Id)
	}
	if rec.State == c.State {
		return nil
	}
	rec.State = c.State
	rec.UpdatedUnixNano = t.now
	return t.put(nodeKey(c.Id), &rec)
}

// ---- shard locations and repair ----

// indexSegments records where a new layout's shards live, and queues any
// segment written below full redundancy for repair.
func (t *txn) indexSegments(dgst string, segs []*pb.Segment) error {
	for _, seg := range segs {
		if err := t.b.Set(segKey(seg.Id), []byte(dgst), nil); err != nil {
			return err
		}
		for _, r := range seg.Shards {
			if err := t.set(nodeShardKey(r.Node, seg.Id, r.Index)); err != nil {
				return err
			}
		}
		if missing := missingShards(seg); len(missing) > 0 {
			if err := t.queueRepair(seg.Id, dgst, fmt.Sprintf("written with %d of %d shards", len(seg.Shards), seg.K+seg.M)); err != nil {
				return err
			}
		}
	}
	return nil
}

// missingShards lists the shard indexes of seg that have no location.
func missingShards(seg *pb.Segment) []uint32 {
	have := make(map[uint32]bool, len(seg.Shards))
	for _, r := range seg.Shards {
		have[r.Index] = true
	}
	var out []uint32
	for i := uint32(0); i < seg.K+seg.M; i++ {
		if !have[i] {
			out = append(out, i)
		}
	}
	return out
}

func (t *txn) queueRepair(segID, dgst, reason string) error {
	var item pb.RepairItem
	had, err := t.load(repairKey(segID), &item)
	if err != nil {
		return err
	}
	if !had {
		item = pb.RepairItem{SegmentId: segID, Digest: dgst, QueuedUnixNano: t.now}
	}
	if len(item.Reasons) < 8 && !slices.Contains(item.Reasons, reason) {
		item.Reasons = append(item.Reasons, reason)
	}
	return t.put(repairKey(segID), &item)
}

// segment loads the layout holding a segment and the segment in it.
func (t *txn) segment(segID string) (*pb.BlobLayout, *pb.Segment, error) {
	v, c, err := t.b.Get(segKey(segID))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil, fmt.Errorf("%w: segment %s", ErrBlobUnknown, segID)
	}
	if err != nil {
		return nil, nil, err
	}
	dgst := string(v)
	c.Close()
	var l pb.BlobLayout
	ok, err := t.load(blobKey(dgst), &l)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		return nil, nil, fmt.Errorf("%w: %s (segment %s)", ErrBlobUnknown, dgst, segID)
	}
	for _, s := range l.Segments {
		if s.Id == segID {
			return &l, s, nil
		}
	}
	return nil, nil, fmt.Errorf("%w: segment %s not in %s", ErrCorrupt, segID, dgst)
}

func (t *txn) replaceShard(c *pb.ReplaceShard) error {
	if c.NewNode == "" || len(c.Blake3) != 32 {
		return fmt.Errorf("%w: replacement needs a node and a BLAKE3 sum", ErrCommandInvalid)
	}
	l, seg, err := t.segment(c.SegmentId)
	if err != nil {
		return err
	}
	if c.Index >= seg.K+seg.M {
		return fmt.Errorf("%w: shard %d of a %d+%d segment", ErrCommandInvalid, c.Index, seg.K, seg.M)
	}
	pos := -1
	for i, r := range seg.Shards {
		if r.Index == c.Index {
			pos = i
		}
	}
	switch {
	case pos < 0 && c.OldNode != "":
		return fmt.Errorf("%w: shard %d of %s has no location, not %s", ErrShardMoved, c.Index, c.SegmentId, c.OldNode)
	case pos >= 0 && seg.Shards[pos].Node != c.OldNode:
		return fmt.Errorf("%w: shard %d of %s is on %s, not %s", ErrShardMoved, c.Index, c.SegmentId, seg.Shards[pos].Node, c.OldNode)
	}
	ref := &pb.ShardRef{Index: c.Index, Node: c.NewNode, Blake3: c.Blake3}
	if pos >= 0 {
		if err := t.del(nodeShardKey(c.OldNode, c.SegmentId, c.Index)); err != nil {
			return err
		}
		seg.Shards[pos] = ref
	} else {
		seg.Shards = append(seg.Shards, ref)
		slices.SortFunc(seg.Shards, func(a, b *pb.ShardRef) int { return int(a.Index) - int(b.Index) })
	}
	if err := t.set(nodeShardKey(c.NewNode, c.SegmentId, c.Index)); err != nil {
		return err
	}
	if err := t.put(blobKey(l.Digest), l); err != nil {
		return err
	}
	if len(missingShards(seg)) == 0 {
		return t.del(repairKey(c.SegmentId))
	}
	return nil
}

func (t *txn) reportShard(c *pb.ReportShard) error {
	l, _, err := t.segment(c.SegmentId)
	if err != nil {
		return err
	}
	reason := c.Reason
	if c.Node != "" {
		reason = fmt.Sprintf("shard %d on %s: %s", c.Index, c.Node, c.Reason)
	}
	return t.queueRepair(c.SegmentId, l.Digest, reason)
}
