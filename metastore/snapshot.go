package metastore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cockroachdb/pebble/v2"

	"github.com/strata-registry/strata/chaos/failpoint"
)

// Snapshot format: the magic line, then for every key in order a record of
// uvarint(len(key)) key uvarint(len(value)) value, then uvarint(0) uvarint(0)
// as the end mark. The applied index travels inside as meta/applied.
const snapshotMagic = "strata-metastore-snapshot-v1\n"

// maxRecord bounds a key or value read from a snapshot (manifests are at most
// a few MiB), so that a corrupt stream cannot ask for unbounded memory.
const maxRecord = 64 << 20

// Snapshot is a point-in-time view of the whole state.
type Snapshot struct {
	snap *pebble.Snapshot
}

// Snapshot takes a consistent view of the state at the applied index. It is
// cheap; the copying happens in WriteTo, which may run concurrently with
// further Apply calls.
func (s *Store) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &Snapshot{snap: s.db.NewSnapshot()}
}

// WriteTo streams the snapshot to w.
func (sn *Snapshot) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := &countWriter{w: bw}
	if _, err := io.WriteString(cw, snapshotMagic); err != nil {
		return cw.n, err
	}
	it, err := sn.snap.NewIter(nil)
	if err != nil {
		return cw.n, err
	}
	var hdr [binary.MaxVarintLen64]byte
	for ok := it.First(); ok; ok = it.Next() {
		for _, b := range [][]byte{it.Key(), it.Value()} {
			if _, err := cw.Write(hdr[:binary.PutUvarint(hdr[:], uint64(len(b)))]); err != nil {
				it.Close()
				return cw.n, err
			}
			if _, err := cw.Write(b); err != nil {
				it.Close()
				return cw.n, err
			}
		}
	}
	if err := it.Close(); err != nil {
		return cw.n, err
	}
	if _, err := cw.Write([]byte{0, 0}); err != nil {
		return cw.n, err
	}
	return cw.n, bw.Flush()
}

// Release frees the snapshot.
func (sn *Snapshot) Release() { sn.snap.Close() }

// Restore replaces the whole state with a snapshot written by WriteTo, in one
// atomic, synced batch: a crash during Restore leaves the old state.
func (s *Store) Restore(r io.Reader) error {
	br := bufio.NewReaderSize(r, 1<<20)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != snapshotMagic {
		return fmt.Errorf("%w: not a metastore snapshot", ErrCorrupt)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange([]byte{}, []byte{0xff}, nil); err != nil {
		return err
	}
	var applied uint64
	for {
		key, err := readRecord(br)
		if err != nil {
			return err
		}
		val, err := readRecord(br)
		if err != nil {
			return err
		}
		if len(key) == 0 {
			break
		}
		if string(key) == keyApplied && len(val) == 8 {
			applied = beUint64(val)
		}
		if err := b.Set(key, val, nil); err != nil {
			return err
		}
	}
	if failpoint.Enabled {
		if err := failpoint.Eval(failpoint.SnapshotRestore); err != nil {
			return err
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("metastore: restore: %w", err)
	}
	s.applied = applied
	return nil
}

func readRecord(br *bufio.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, fmt.Errorf("%w: truncated snapshot: %v", ErrCorrupt, err)
	}
	if n > maxRecord {
		return nil, fmt.Errorf("%w: snapshot record of %d bytes", ErrCorrupt, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: truncated snapshot: %v", ErrCorrupt, err)
	}
	return b, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// RestoreAsNew replaces the state with a snapshot for a cluster that starts a
// new Raft log (disaster recovery from a backup): the content is restored
// and the applied index is reset, so that the new log's first entries are
// not mistaken for ones already applied.
func (s *Store) RestoreAsNew(r io.Reader) error {
	if err := s.Restore(r); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.db.Set([]byte(keyApplied), be64(nil, 0), pebble.Sync); err != nil {
		return err
	}
	s.applied = 0
	return nil
}
