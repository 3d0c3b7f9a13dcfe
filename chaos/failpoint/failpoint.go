// Package failpoint holds Strata's code failpoints: named places in the
// server where the chaos suite can make a process crash, stall or fail on
// purpose, at moments no outside fault can hit reliably (between the shards
// of a blob being durable and its Raft commit, in the middle of installing a
// snapshot, between rebuilding a shard and recording where it went).
//
// A call site reads
//
//	if failpoint.Enabled {
//		if err := failpoint.Eval(failpoint.UploadBeforeCommit); err != nil {
//			return err
//		}
//	}
//
// Without the build tag `failpoints` Enabled is the constant false, so the
// compiler drops the whole block: a normal build carries no trace of it (the
// package's own test checks that the linker keeps no Eval). With the tag
// (`make build-failpoints`, bin/strata-failpoints) failpoints are armed
//
//   - at start-up from the environment: STRATA_FAILPOINTS="name=spec;name=spec"
//   - while running over HTTP, when STRATA_FAILPOINTS_ADDR names an address
//     (127.0.0.1:0 picks a port; the process prints "failpoints: listening on
//     http://ADDR" on stderr): GET / lists every failpoint with its spec and
//     counters, PUT /<name> with the spec as body arms one, DELETE /<name>
//     disarms it;
//   - in a test binary built with the tag, with Enable and Disable.
//
// A spec is one or more terms joined by "->"; each term is
// [P%][N*]action[(arg)]:
//
//	exit           print "failpoint <name>: exit" on stderr and os.Exit(ExitCode): no deferred code runs
//	panic          panic("failpoint <name>")
//	error          Eval returns an error wrapping ErrInjected; error(text) gives it a text
//	sleep(d)       sleep for the time.Duration d, then go on
//	off            do nothing (a placeholder: "10*off->exit" crashes at the 11th pass)
//
// N* makes a term apply N times, then the next term takes over (after the
// last one the failpoint is off); a term without a count applies for ever.
// P% makes the action happen on P percent of the passes only (a pass where it
// does not happen does not count towards N).
package failpoint

import "errors"

// Failpoints compiled into Strata. Each is one line at its call site.
const (
	// UploadBeforeCommit: the frontend has made every segment of a blob
	// durable on the storage nodes and checked the digest, and is about to
	// propose CommitBlob (api: single POST ?digest= and the final PUT of a
	// session). A crash here leaves shards that nothing records.
	UploadBeforeCommit = "upload-before-commit"
	// UploadBeforeUpdate: the same for a PATCH, before UpdateUpload.
	UploadBeforeUpdate = "upload-before-update"
	// SnapshotRestore: a meta node installing a snapshot has read all of it
	// into one Pebble batch and is about to commit it (metastore Restore).
	// Raft has already stored the snapshot on disk by then.
	SnapshotRestore = "snapshot-restore"
	// RepairBeforeReplace: the leader's repairer has written a rebuilt
	// shard to its new node and is about to record it with ReplaceShard.
	RepairBeforeReplace = "repair-before-replace"
)

// Names lists the failpoints compiled into Strata.
var Names = []string{UploadBeforeCommit, UploadBeforeUpdate, SnapshotRestore, RepairBeforeReplace}

// Environment variables read at start-up by a build with failpoints.
const (
	// EnvSpecs arms failpoints: "name=spec;name=spec".
	EnvSpecs = "STRATA_FAILPOINTS"
	// EnvAddr starts the HTTP endpoint on this address.
	EnvAddr = "STRATA_FAILPOINTS_ADDR"
)

// ExitCode is the exit status of a process that an exit action ended.
const ExitCode = 87

// ListeningPrefix starts the line a process prints on stderr when its HTTP
// endpoint is up, followed by the base URL.
const ListeningPrefix = "failpoints: listening on "

var (
	// ErrInjected is wrapped by the errors the error action returns.
	ErrInjected = errors.New("failpoint: injected error")
	// ErrNotBuilt is returned by Enable in a build without the tag.
	ErrNotBuilt = errors.New("failpoint: this build has no failpoints (build with -tags failpoints)")
)

// State is a failpoint as Status reports it.
type State struct {
	Name string `json:"name"`
	// Spec is what it is armed with; "" when it is not.
	Spec string `json:"spec"`
	// Evaluated counts the passes through it while it was armed; Fired
	// the actions that happened (off does not count).
	Evaluated int64 `json:"evaluated"`
	Fired     int64 `json:"fired"`
}
