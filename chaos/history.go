package chaos

import (
	"fmt"
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
	Phase     int
	At        time.Time
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
	notes      map[string]int

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
		notes: map[string]int{},
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
	if _, ok := h.ackBlobs[k]; !ok {
		h.ackBlobs[k] = BlobOp{Repo: repo, Blob: b, Style: style, Phase: h.Phase(), At: time.Now()}
	}
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
	h.acks.Add(1)
	h.phaseAcks.Add(1)
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
	Violations     []string
	Unexpected     []string
	Notes          map[string]int
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
	s.Violations = append(s.Violations, h.violations...)
	s.Unexpected = append(s.Unexpected, h.unexpected...)
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
