package metastore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"google.golang.org/protobuf/proto"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Store is the metadata state machine on a Pebble database. Apply and
// ApplyBatch must be called from one goroutine at a time (Raft's FSM
// goroutine); the query methods may be called concurrently with them.
type Store struct {
	db *pebble.DB

	mu      sync.Mutex // serialises Apply, Snapshot and Restore
	applied uint64
}

// Entry is one Raft log entry to apply.
type Entry struct {
	Index uint64
	Data  []byte // a marshalled pb.Command
}

// CacheSize is the block cache of the state machine's database. Pebble's
// default (8 MiB) is far smaller than the metadata of a registry: every
// command's reads of the records it checks then missed the cache and read the
// blocks from the files (a pread per block: 17-20% of a single-node
// registry's CPU on small-image pushes). The cache fills as blocks are read;
// an idle or small store uses no more than its data.
const CacheSize = 64 << 20

// Open opens (or creates) the state machine's database in dir.
func Open(dir string) (*Store, error) {
	cache := pebble.NewCache(CacheSize)
	defer cache.Unref() // the database holds its own reference
	opts := &pebble.Options{Logger: quietLogger{}, Cache: cache}
	// Most reads of a command are of keys that do not exist yet (a new
	// blob, a new link, a new tag): bloom filters answer those without
	// reading a data block. Every level inherits L0's policy.
	opts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("metastore: open %s: %w", dir, err)
	}
	s := &Store{db: db}
	v, err := s.get(nil, []byte(keyApplied))
	if err != nil && !errors.Is(err, pebble.ErrNotFound) {
		db.Close()
		return nil, err
	}
	if len(v) == 8 {
		s.applied = binary.BigEndian.Uint64(v)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// AppliedIndex is the index of the last Raft entry applied.
func (s *Store) AppliedIndex() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied
}

// Apply applies one entry; see ApplyBatch.
func (s *Store) Apply(e Entry) error {
	return s.ApplyBatch([]Entry{e})[0]
}

// ApplyBatch applies entries in order and returns one result per entry: nil,
// or the error that refused the command (a refused command changes nothing).
// Entries at or below the applied index are skipped (replay after restart)
// and return nil. The whole batch is committed atomically in one Pebble
// batch, with the applied index, without an fsync of its own: the Raft log
// holds every entry durably before it is applied, so the state machine need
// not. After a crash that loses the tail of Pebble's write-ahead log (only a
// crash of the machine can: a killed process leaves it in the page cache),
// the store is at an earlier applied index, consistently, and Raft applies
// the entries after it again (those at or below it are skipped); a store
// left behind the latest Raft snapshot is restored from it when the node
// starts (cluster.Open). Restores (snapshot.go) are synced.
// It returns an error for every entry if the batch cannot be committed; the
// caller (Raft) must then stop, because the state no longer follows the log.
func (s *Store) ApplyBatch(entries []Entry) []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	res := make([]error, len(entries))
	b := s.db.NewIndexedBatch()
	defer b.Close()
	last := s.applied
	for i, e := range entries {
		if e.Index != 0 && e.Index <= last {
			continue
		}
		var cmd pb.Command
		if err := proto.Unmarshal(e.Data, &cmd); err != nil {
			res[i] = fmt.Errorf("%w: undecodable command at index %d: %v", ErrCommandInvalid, e.Index, err)
		} else {
			tx := &txn{b: b, now: cmd.TimeUnixNano}
			res[i] = tx.applyOnce(&cmd)
		}
		if e.Index > last {
			last = e.Index
		}
	}
	if err := b.Set([]byte(keyApplied), be64(nil, last), nil); err != nil {
		return fillErr(res, err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fillErr(res, fmt.Errorf("metastore: commit: %w", err))
	}
	s.applied = last
	return res
}

func fillErr(res []error, err error) []error {
	for i := range res {
		res[i] = err
	}
	return res
}

// get returns a copy of the value at key, or pebble.ErrNotFound.
func (s *Store) get(b *pebble.Batch, key []byte) ([]byte, error) {
	var (
		v      []byte
		closer interface{ Close() error }
		err    error
	)
	if b != nil {
		var c2 ioCloser
		v, c2, err = b.Get(key)
		closer = c2
	} else {
		var c2 ioCloser
		v, c2, err = s.db.Get(key)
		closer = c2
	}
	if err != nil {
		return nil, err
	}
	out := append([]byte(nil), v...)
	closer.Close()
	return out, nil
}

type ioCloser = interface{ Close() error }

// quietLogger keeps Pebble's informational chatter out of the server's log.
type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{}) {}
func (quietLogger) Errorf(format string, args ...interface{}) {
	pebble.DefaultLogger.Errorf(format, args...)
}
func (quietLogger) Fatalf(format string, args ...interface{}) {
	pebble.DefaultLogger.Fatalf(format, args...)
}
