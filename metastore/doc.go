// Package metastore is Strata's metadata state machine: repositories,
// manifests, tags and their history, blob layouts, repository links,
// reference counts, upload sessions and the event outbox, kept in a Pebble
// database.
//
// The only way to change the state is Apply (or ApplyBatch) with a Command
// that has gone through the Raft log. Apply is deterministic: it reads no
// clock, draws no random numbers and does no I/O other than Pebble; the
// proposer stamps times and ids into the command. A command first checks
// everything it needs and only then writes, so a refused command changes
// nothing. All writes of one batch of log entries are committed in one
// synced Pebble batch together with the index of the last entry applied,
// which makes replay after a crash idempotent.
//
// The package knows nothing about networks or Raft itself; cluster/ wires it
// to hashicorp/raft.
package metastore
