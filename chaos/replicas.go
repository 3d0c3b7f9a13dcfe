package chaos

import (
	"fmt"
	"path/filepath"
	"sort"

	"github.com/strata-registry/strata/metastore"
)

// ReplicaReport is the check of every meta node's own copy of the
// metadata, read from its disk once the cluster is stopped: each must hold
// every acknowledged write. Reads go to the leader, so a replica that
// silently lost writes shows in no read until it leads; this check finds it
// at once (it would have found the bug of the snapshot-restore failpoint:
// a meta node whose snapshot install was cut short applied the later log
// entries onto its old state).
type ReplicaReport struct {
	// Checked is false when the backend keeps the meta nodes' data where
	// the harness cannot open it (Why says so).
	Checked bool                   `json:"checked"`
	Why     string                 `json:"why,omitempty"`
	Nodes   map[string]ReplicaNode `json:"nodes,omitempty"`
}

// ReplicaNode is what one meta node's copy holds.
type ReplicaNode struct {
	Applied   uint64 `json:"applied_index"`
	Blobs     int    `json:"blobs_checked"`
	Manifests int    `json:"manifests_checked"`
	// Missing names the first acknowledged writes it lacks; MissingCount
	// counts them all.
	Missing      []string `json:"missing,omitempty"`
	MissingCount int      `json:"missing_count"`
	Error        string   `json:"error,omitempty"`
}

// metaDirer is a backend whose meta nodes' Pebble databases the harness
// can open once the nodes are stopped (the process backend).
type metaDirer interface {
	MetaStoreDir(id string) string
}

// MetaStoreDir is the Pebble directory of meta node id.
func (b *processBackend) MetaStoreDir(id string) string {
	return filepath.Join(b.DataDir(id), "meta", "pebble")
}

// CheckReplicas opens the metastore of every meta node of a stopped
// cluster and looks up every acknowledged blob (linked in its repository)
// and manifest of snap; with live, only blobs a live manifest references
// (garbage collection may take the others).
func CheckReplicas(be Backend, metas []string, snap Snapshot, live bool) ReplicaReport {
	md, ok := be.(metaDirer)
	if !ok {
		return ReplicaReport{Why: fmt.Sprintf("the %s backend keeps the meta nodes' data out of the harness's reach", be.Name())}
	}
	blobs := snap.AckedBlobs
	if live {
		blobs = snap.LiveBlobs()
	}
	rep := ReplicaReport{Checked: true, Nodes: map[string]ReplicaNode{}}
	for _, id := range metas {
		rn := ReplicaNode{}
		st, err := metastore.Open(md.MetaStoreDir(id))
		if err != nil {
			rn.Error = err.Error()
			rep.Nodes[id] = rn
			continue
		}
		rn.Applied = st.AppliedIndex()
		miss := func(what string) {
			rn.MissingCount++
			if len(rn.Missing) < 20 {
				rn.Missing = append(rn.Missing, what)
			}
		}
		for _, b := range blobs {
			rn.Blobs++
			if _, err := st.RepoBlob(b.Repo, b.Blob.Digest); err != nil {
				miss(fmt.Sprintf("blob %s in %s (acknowledged %s): %v", b.Blob.Digest, b.Repo, b.At.Format("15:04:05.000"), err))
			}
		}
		for _, m := range snap.AckedManifests {
			rn.Manifests++
			if _, err := st.Manifest(m.Repo, m.Digest); err != nil {
				miss(fmt.Sprintf("manifest %s in %s (acknowledged %s): %v", m.Digest, m.Repo, m.At.Format("15:04:05.000"), err))
			}
		}
		if err := st.Close(); err != nil && rn.Error == "" {
			rn.Error = err.Error()
		}
		rep.Nodes[id] = rn
	}
	return rep
}

// failures renders the problems the check found.
func (r ReplicaReport) failures() []string {
	var ids []string
	for id := range r.Nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []string
	for _, id := range ids {
		n := r.Nodes[id]
		if n.Error != "" {
			out = append(out, fmt.Sprintf("replica %s: cannot read its metastore: %s", id, n.Error))
		}
		for _, m := range n.Missing {
			out = append(out, fmt.Sprintf("LOST ACKNOWLEDGED WRITE ON REPLICA %s (its own metastore, applied index %d): %s", id, n.Applied, m))
		}
		if n.MissingCount > len(n.Missing) {
			out = append(out, fmt.Sprintf("replica %s: ... and %d more acknowledged writes missing", id, n.MissingCount-len(n.Missing)))
		}
	}
	return out
}
