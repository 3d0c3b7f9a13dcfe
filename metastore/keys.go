package metastore

import "encoding/binary"

// The Pebble key layout. Repository names never contain a NUL byte, so NUL
// separates a repository name from what follows it, and a prefix scan of
// "tag/<repo>\x00" cannot run into repository "<repo>/sub".
//
//	meta/applied                          last applied Raft index (8 bytes BE)
//	meta/outbox-seq                       last outbox sequence (8 bytes BE)
//	repo/<repo>                           Repository
//	manifest/<repo>\0<digest>             ManifestRecord
//	tag/<repo>\0<tag>                     TagRecord
//	tagrev/<repo>\0<digest>\0<tag>        (empty) tags pointing at a manifest
//	taghist/<repo>\0<tag>\0<seq BE>       TagHistoryEntry
//	referrer/<repo>\0<subject>\0<digest>  Descriptor of a manifest whose subject is <subject>
//	blob/<digest>                         BlobLayout
//	link/<repo>\0<digest>                 (empty) the repository may serve the blob
//	blobrepo/<digest>\0<repo>             (empty) reverse of link/
//	tomb/<repo>\0<digest>                 (8 bytes BE time) the repository deleted the blob
//	rc/<digest>                           RefCount
//	upload/<id>                           Upload
//	orphan/<segment id>                   Segment whose shards no blob references
//	outbox/<seq BE>                       Event
//	node/<id>                             NodeRecord
//	seg/<segment id>                      digest of the blob whose layout holds the segment
//	nodeshard/<node>\0<segment id>\0<index BE32>  (empty) shards a storage node holds
//	repair/<segment id>                   RepairItem: a segment below full redundancy
//	gcq/<time BE>\0<digest>               (empty) blobs no manifest references, by since when
//	upseg/<segment id>                    upload id: segments of open upload sessions
//	pull/<repo>\0<digest>                 last pull time (8 bytes BE)
//	req/<request id>                      RequestRecord (deduplication of retried proposals)
//	req-by-time/<time BE>\0<request id>   (empty) expiry index of req/
//	keyneed/<digest>\0<key name>          (empty) an encrypted blob needs a copy of its data key wrapped by that KEK
const (
	sep = "\x00"

	keyApplied   = "meta/applied"
	keyOutboxSeq = "meta/outbox-seq"

	pfxRepo     = "repo/"
	pfxManifest = "manifest/"
	pfxTag      = "tag/"
	pfxTagRev   = "tagrev/"
	pfxTagHist  = "taghist/"
	pfxReferrer = "referrer/"
	pfxBlob     = "blob/"
	pfxLink     = "link/"
	pfxBlobRepo = "blobrepo/"
	pfxTomb     = "tomb/"
	pfxRefCount = "rc/"
	pfxUpload   = "upload/"
	pfxOrphan   = "orphan/"
	pfxOutbox   = "outbox/"
	pfxNode     = "node/"
	pfxSeg      = "seg/"
	pfxNodeShrd = "nodeshard/"
	pfxRepair   = "repair/"
	pfxGCQueue  = "gcq/"
	pfxUpSeg    = "upseg/"
	pfxPull     = "pull/"
	pfxReq      = "req/"
	pfxReqTime  = "req-by-time/"
	pfxKeyNeed  = "keyneed/"
	pfxUpEnd    = "upend/"
	pfxUpEndT   = "upend-by-time/"
)

func k(parts ...string) []byte {
	n := 0
	for _, p := range parts {
		n += len(p) + 1
	}
	b := make([]byte, 0, n)
	for i, p := range parts {
		if i > 1 {
			b = append(b, 0)
		}
		b = append(b, p...)
	}
	return b
}

func repoKey(repo string) []byte              { return k(pfxRepo, repo) }
func manifestKey(repo, dgst string) []byte    { return k(pfxManifest, repo, dgst) }
func manifestPrefix(repo string) []byte       { return append(k(pfxManifest, repo), 0) }
func tagKey(repo, tag string) []byte          { return k(pfxTag, repo, tag) }
func tagPrefix(repo string) []byte            { return append(k(pfxTag, repo), 0) }
func tagRevKey(repo, dgst, tag string) []byte { return k(pfxTagRev, repo, dgst, tag) }
func tagRevPrefix(repo, dgst string) []byte   { return append(k(pfxTagRev, repo, dgst), 0) }
func referrerKey(repo, subj, dgst string) []byte {
	return k(pfxReferrer, repo, subj, dgst)
}
func referrerPrefix(repo, subj string) []byte { return append(k(pfxReferrer, repo, subj), 0) }
func blobKey(dgst string) []byte              { return k(pfxBlob, dgst) }
func linkKey(repo, dgst string) []byte        { return k(pfxLink, repo, dgst) }
func blobRepoKey(dgst, repo string) []byte    { return k(pfxBlobRepo, dgst, repo) }
func blobRepoPrefix(dgst string) []byte       { return append(k(pfxBlobRepo, dgst), 0) }
func tombKey(repo, dgst string) []byte        { return k(pfxTomb, repo, dgst) }
func refCountKey(dgst string) []byte          { return k(pfxRefCount, dgst) }
func uploadKey(id string) []byte              { return k(pfxUpload, id) }
func orphanKey(segID string) []byte           { return k(pfxOrphan, segID) }
func outboxKey(seq uint64) []byte             { return be64(k(pfxOutbox), seq) }

func nodeKey(id string) []byte           { return k(pfxNode, id) }
func segKey(id string) []byte            { return k(pfxSeg, id) }
func repairKey(id string) []byte         { return k(pfxRepair, id) }
func nodeShardPrefix(node string) []byte { return append(k(pfxNodeShrd, node), 0) }
func nodeShardKey(node, seg string, index uint32) []byte {
	return binary.BigEndian.AppendUint32(append(k(pfxNodeShrd, node, seg), 0), index)
}
func upSegKey(id string) []byte        { return k(pfxUpSeg, id) }
func pullKey(repo, dgst string) []byte { return k(pfxPull, repo, dgst) }
func gcqKey(since int64, dgst string) []byte {
	if since < 0 {
		since = 0
	}
	return append(be64([]byte(pfxGCQueue), uint64(since)), append([]byte{0}, dgst...)...)
}
func reqKey(id string) []byte { return k(pfxReq, id) }

// upEndKey records that upload id has ended (committed, cancelled or
// expired), so that its id is not taken for a deferred session that has not
// started; the time index pfxUpEndT orders those records for DropUploadEnds.
func upEndKey(id string) []byte { return k(pfxUpEnd, id) }

// timeKey is the key of id in the time index pfx (request ids, upload
// ends): "<pfx><t, 8 bytes big-endian>\0<id>", negative times first.
func timeKey(pfx string, t int64, id string) []byte {
	if t < 0 {
		t = 0
	}
	return append(be64([]byte(pfx), uint64(t)), append([]byte{0}, id...)...)
}

func tagHistKey(repo, tag string, seq uint64) []byte {
	return be64(append(k(pfxTagHist, repo, tag), 0), seq)
}

func be64(prefix []byte, v uint64) []byte {
	return binary.BigEndian.AppendUint64(prefix, v)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

func beUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
