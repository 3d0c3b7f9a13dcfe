package chaos

import (
	"context"
	"time"
)

// Backend runs the nodes of a chaos cluster: the one part of a run that
// differs between processes on loopback (the process backend, through
// `strata dev cluster`) and containers (the compose backend, through Docker
// Compose). Everything else (the workloads, the injector, the heal, the
// checks and the report) goes through Cluster, which keeps what the harness
// did to each node and talks to the nodes over HTTP and gRPC the same way
// whatever runs them.
//
// A Backend does what it is told and keeps no states of its own beyond
// what it needs to do it: Cluster checks that a node it kills is running,
// that a node it starts is stopped, and so on.
type Backend interface {
	// Name is the backend's name: "process" or "compose".
	Name() string
	// Nodes describes every node, in the order m*, s*, a*: ids, roles, the
	// addresses the harness reaches them at and (process backend) the
	// current pid.
	Nodes() []NodeInfo
	// Kill stops node id at once (SIGKILL) and returns when it is gone.
	Kill(id string) error
	// Stop asks node id to stop (SIGTERM), waits up to timeout and then
	// kills it; clean reports whether it stopped by itself.
	Stop(id string, timeout time.Duration) (clean bool, err error)
	// Start starts a stopped node again on its data and addresses. env,
	// when the backend supports it (process), is added to the node's
	// environment for this start only: a failpoint armed at start-up.
	Start(id string, env []string) error
	// Pause freezes node id (SIGSTOP, docker pause); Resume thaws it.
	Pause(id string) error
	Resume(id string) error
	// Exited reports whether the process or container of node id has
	// ended, and its exit code when known (-1 otherwise).
	Exited(id string) (exited bool, code int)
	// CanCut reports whether links between nodes can be cut now.
	CanCut() bool
	// Cut cuts node off from others, both ways (the compose backend cuts
	// the node off the network altogether); Heal restores every link.
	Cut(node string, others []string) error
	Heal() error
	// ShardDir is the shard directory of storage node id as the harness
	// can reach it (to damage shard files), or "" when it cannot.
	ShardDir(id string) string
	// Log is node id's log so far.
	Log(id string) ([]byte, error)
	// CopyLogs copies every node's log, and the backend's own, into dst.
	CopyLogs(dst string) error
	// Close stops every node and releases everything the backend holds.
	Close()
}

// prepper is a backend that changes the nodes' command lines before the
// workload starts (the process backend: the proxy layer, meta node flags).
type prepper interface {
	Prepare(ctx context.Context, c *Cluster, proxies bool, metaArgs []string) error
}

// failpointer is a backend whose nodes can have failpoints armed while
// they run (the process backend with a binary built with -tags failpoints):
// FailpointURL is the base URL of node id's failpoint endpoint.
type failpointer interface {
	FailpointURL(ctx context.Context, id string) (string, error)
}

// diskFiller is a backend whose storage nodes keep their shards on small
// filesystems of their own, which Fill fills up (a filler file leaving
// leave bytes free) and Unfill frees again.
type diskFiller interface {
	Fill(id string, leave int64) (filled int64, err error)
	Unfill(id string) error
}
