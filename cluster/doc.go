// Package cluster wires the metadata state machine (metastore) to
// hashicorp/raft: the log and stable store in BoltDB (raft-boltdb/v2), the
// snapshot store on disk, Raft's TCP transport, and the one Propose path
// every metadata write goes through. It moves bytes and elects leaders; what
// a command means lives in metastore.
package cluster
