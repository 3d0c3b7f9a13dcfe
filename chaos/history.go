package chaos

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// BlobOp is a blob push as the history records it.
type BlobOp struct {
	Repo  string
	Blob  Blob
	Style string // upload style
	Phase int    // History phase when it was sent (or acknowledged)
	At    time.Time
}

// ManifestOp is a manifest push as the history records it.
type ManifestOp struct {
	Repo      string
	Tag       string
	Digest    string
	MediaType string
	Body      []byte
	// Blobs are the digests the manifest references (config first), when
	// the workload knows them: they must stay readable while it lives.
	Blobs []string `json:",omitempty"`
	Phase int
	At    time.Time
}

type blobKey struct{ repo, digest string }
type manifestKey struct{ repo, tag string }

// History records what a workload sent and what the server acknowledged,
// so that checkers can hold the server to it. It is safe for concurrent use.
//
// Each operation is first recorded as attempted (before the request is
// sent), then as acknowledged once a 2xx answer arrives. An acknowledged
// operation must survive anything; an attempted but unacknowledged one may
// or may not have taken effect, but if it did, its content must be right.
type History struct {
	mu         sync.Mutex
	ackBlobs   map[blobKey]BlobOp
	tryBlobs   map[blobKey]BlobOp
	ackMans    map[manifestKey]ManifestOp
	tryMans    map[manifestKey]ManifestOp
	violations []string
	unexpected []string
	serverErrs []string // 5xx answers other than 503 (the first 100)
	serverErrN int
	notes      map[string]int
	ackTimes   []time.Time // when each push was acknowledged
	// Manifest deletions: sent (outcome unknown) and acknowledged.
	delTry map[manifestKey]ManifestOp
	delAck map[manifestKey]ManifestOp

	phase     atomic.Int64
	acks      atomic.Int64 // acknowledged operations (blobs and manifests)
	phaseAcks atomic.Int64
	inflight  atomic.Int64 // requests carrying blob bytes in flight
}

// NewHistory returns an empty history in phase 0.
func NewHistory() *History {
	return &History{
		ackBlobs: map[blobKey]BlobOp{}, tryBlobs: map[blobKey]BlobOp{},
		ackMans: map[manifestKey]ManifestOp{}, tryMans: map[manifestKey]ManifestOp{},
		notes:  map[string]int{},
		delTry: map[manifestKey]ManifestOp{}, delAck: map[manifestKey]ManifestOp{},
	}
}

// SetPhase starts a new phase (e.g. the time between two kills) and resets
// the phase's acknowledgement count.
func (h *History) SetPhase(p int) {
	h.phase.Store(int64(p))
	h.phaseAcks.Store(0)
}

// Phase is the current phase.
func (h *History) Phase() int { return int(h.phase.Load()) }

// Acks is the number of acknowledged operations so far.
func (h *History) Acks() int64 { return h.acks.Load() }

// PhaseAcks is the number of operations acknowledged in the current phase.
func (h *History) PhaseAcks() int64 { return h.phaseAcks.Load() }

// InFlight is how many blob-carrying requests are in flight right now.
func (h *History) InFlight() int64 { return h.inflight.Load() }

// TrackInFlight counts a blob-carrying request until the returned func is
// called.
func (h *History) TrackInFlight() func() {
	h.inflight.Add(1)
	return func() { h.inflight.Add(-1) }
}

// AttemptBlob records that b is about to be pushed to repo.
func (h *History) AttemptBlob(repo string, b Blob, style string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := blobKey{repo, b.Digest}
	if _, ok := h.ackBlobs[k]; ok {
		return
	}
	h.tryBlobs[k] = BlobOp{Repo: repo, Blob: b, Style: style, Phase: h.Phase(), At: time.Now()}
}

// AckBlob records that the server acknowledged b in repo.
func (h *History) AckBlob(repo string, b Blob, style string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := blobKey{repo, b.Digest}
	delete(h.tryBlobs, k)
	now := time.Now()
	if _, ok := h.ackBlobs[k]; !ok {
		h.ackBlobs[k] = BlobOp{Repo: repo, Blob: b, Style: style, Phase: h.Phase(), At: now}
	}
	h.ackTimes = append(h.ackTimes, now)
	h.acks.Add(1)
	h.phaseAcks.Add(1)
}

// AttemptManifest records that a manifest is about to be pushed.
func (h *History) AttemptManifest(m ManifestOp) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := manifestKey{m.Repo, m.Tag}
	if _, ok := h.ackMans[k]; ok {
		return
	}
	m.Phase, m.At = h.Phase(), time.Now()
	h.tryMans[k] = m
}

// AckManifest records that the server acknowledged a manifest push.
func (h *History) AckManifest(m ManifestOp) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := manifestKey{m.Repo, m.Tag}
	delete(h.tryMans, k)
	m.Phase, m.At = h.Phase(), time.Now()
	h.ackMans[k] = m
	h.ackTimes = append(h.ackTimes, m.At)
	h.acks.Add(1)
	h.phaseAcks.Add(1)
}

// AttemptDelete records that manifest m (acknowledged) is about to be
// deleted: from now on it may or may not exist, and its blobs may be
// collected.
func (h *History) AttemptDelete(m ManifestOp) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := manifestKey{m.Repo, m.Tag}
	delete(h.ackMans, k)
	h.delTry[k] = m
}

// AckDelete records that the server acknowledged the deletion of m: it
// must stay gone.
func (h *History) AckDelete(m ManifestOp) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := manifestKey{m.Repo, m.Tag}
	delete(h.delTry, k)
	h.delAck[k] = m
}

// Deleting reports whether a deletion of the manifest tagged tag in repo
// was ever sent.
func (h *History) Deleting(repo, tag string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := manifestKey{repo, tag}
	_, a := h.delTry[k]
	_, b := h.delAck[k]
	return a || b
}

// BlobRequired reports whether blob dgst in repo must be readable: some
// manifest of repo acknowledged before since, whose deletion was never
// sent, references it.
func (h *History) BlobRequired(repo, dgst string, since time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, m := range h.ackMans {
		if k.repo == repo && m.At.Before(since) && slices.Contains(m.Blobs, dgst) {
			return true
		}
	}
	return false
}

// AckTimes are the times of every acknowledged push, in order.
func (h *History) AckTimes() []time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := slices.Clone(h.ackTimes)
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// Violation records a broken promise seen by a workload (wrong bytes, a
// lost acknowledged upload, a protocol violation). Any violation fails the
// test.
func (h *History) Violation(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.violations = append(h.violations, fmt.Sprintf("[phase %d] ", h.Phase())+fmt.Sprintf(format, args...))
}

// Unexpected records an error answer the workload did not expect from a
// healthy server (e.g. 500, or 400 to a valid request).
func (h *History) Unexpected(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unexpected = append(h.unexpected, fmt.Sprintf("[phase %d] ", h.Phase())+fmt.Sprintf(format, args...))
}

// ServerError records an error answer of the server's own making other
// than 503 (a 500 "internal error"): the client retried it, but the design
// promises 503 UNAVAILABLE while a leader or a node is missing.
func (h *History) ServerError(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.serverErrN++
	if len(h.serverErrs) < 100 {
		h.serverErrs = append(h.serverErrs, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	}
}

// Note counts an event worth reporting (e.g. "upload session lost").
func (h *History) Note(what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notes[what]++
}

// Snapshot is a copy of a History's records.
type Snapshot struct {
	AckedBlobs     []BlobOp
	AttemptedBlobs []BlobOp // sent, never acknowledged
	AckedManifests []ManifestOp
	AttemptedMans  []ManifestOp // sent, never acknowledged
	// Deletions of acknowledged manifests: acknowledged, and sent with an
	// unknown outcome.
	DeletedMans  []ManifestOp `json:",omitempty"`
	DeletingMans []ManifestOp `json:",omitempty"`
	Violations   []string
	Unexpected   []string
	// ServerErrors are the first 100 answers recorded by ServerError;
	// ServerErrorCount counts them all.
	ServerErrors     []string `json:",omitempty"`
	ServerErrorCount int
	Notes            map[string]int
}

// Snapshot copies the records.
func (h *History) Snapshot() Snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := Snapshot{Notes: map[string]int{}}
	for _, b := range h.ackBlobs {
		s.AckedBlobs = append(s.AckedBlobs, b)
	}
	for _, b := range h.tryBlobs {
		s.AttemptedBlobs = append(s.AttemptedBlobs, b)
	}
	for _, m := range h.ackMans {
		s.AckedManifests = append(s.AckedManifests, m)
	}
	for _, m := range h.tryMans {
		s.AttemptedMans = append(s.AttemptedMans, m)
	}
	for _, m := range h.delAck {
		s.DeletedMans = append(s.DeletedMans, m)
	}
	for _, m := range h.delTry {
		s.DeletingMans = append(s.DeletingMans, m)
	}
	s.Violations = append(s.Violations, h.violations...)
	s.Unexpected = append(s.Unexpected, h.unexpected...)
	s.ServerErrors = append(s.ServerErrors, h.serverErrs...)
	s.ServerErrorCount = h.serverErrN
	for k, v := range h.notes {
		s.Notes[k] = v
	}
	return s
}

// AckedBlobBytes is the total size of the acknowledged blobs.
func (s Snapshot) AckedBlobBytes() int64 {
	var n int64
	for _, b := range s.AckedBlobs {
		n += b.Blob.Size
	}
	return n
}

// LiveBlobs are the acknowledged blobs that some live acknowledged manifest
// of the same repository references: with garbage collection at zero grace
// these, and only these, must survive (a blob no manifest references may
// be collected at once).
func (s Snapshot) LiveBlobs() []BlobOp {
	type key struct{ repo, digest string }
	need := map[key]bool{}
	for _, m := range s.AckedManifests {
		for _, d := range m.Blobs {
			need[key{m.Repo, d}] = true
		}
	}
	var out []BlobOp
	for _, b := range s.AckedBlobs {
		if need[key{b.Repo, b.Blob.Digest}] {
			out = append(out, b)
		}
	}
	return out
}
