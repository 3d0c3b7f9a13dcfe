package cluster

import (
	"io"

	"github.com/hashicorp/raft"

	"github.com/strata-registry/strata/metastore"
)

// fsm adapts metastore.Store to raft.BatchingFSM. It is a thin adapter: the
// meaning of commands lives in metastore.
type fsm struct {
	st *metastore.Store
}

var _ raft.BatchingFSM = (*fsm)(nil)

func (f *fsm) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies the command entries of logs in one Pebble batch. The
// response for each log is nil or the error that refused its command.
func (f *fsm) ApplyBatch(logs []*raft.Log) []interface{} {
	entries := make([]metastore.Entry, 0, len(logs))
	pos := make([]int, 0, len(logs))
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			entries = append(entries, metastore.Entry{Index: l.Index, Data: l.Data})
			pos = append(pos, i)
		}
	}
	out := make([]interface{}, len(logs))
	if len(entries) == 0 {
		return out
	}
	for j, err := range f.st.ApplyBatch(entries) {
		if err != nil {
			out[pos[j]] = err
		}
	}
	return out
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{snap: f.st.Snapshot()}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	return f.st.Restore(rc)
}

type fsmSnapshot struct {
	snap *metastore.Snapshot
}

// Persist streams the Pebble snapshot to the sink; it runs off the FSM
// goroutine, so applies continue meanwhile.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.snap.WriteTo(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() { s.snap.Release() }
