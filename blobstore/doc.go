// Package blobstore stores the bytes of blobs: the write and read pipelines
// that turn a stream into erasure-coded segments spread over storage nodes
// and back, the placement of shards on nodes, and the shards of one node.
//
// The pieces, from the bottom up:
//
//   - ShardStore (shard.go) is one storage node's shards: durable Put, verified
//     Get, Delete, Stat, List, Usage. LocalStore (local.go) keeps them in files
//     on a local disk; a gRPC client implementing the same interface reaches a
//     remote node. Faulty (faulty.go) wraps any ShardStore to inject failures.
//     The package shardtest holds the conformance suite every implementation
//     must pass.
//   - Place (placement.go) chooses, by weighted rendezvous hashing, which nodes
//     hold the shards of a segment, spreading over failure zones first.
//   - Store (store.go) is the cluster-wide view the HTTP layer uses: Write cuts a
//     stream into segments, seals each (a hook for encryption, identity for now),
//     erasure codes it with package erasure, checksums every shard with BLAKE3
//     and puts the shards on distinct nodes in parallel, under a write quorum.
//     ReadRange fetches the data shards of the segments a range covers,
//     verifies them, falls back to parity and reconstructs when needed, and
//     streams the bytes out. Delete removes shards.
//
// The metadata describing where a blob's bytes live (metastorepb.Segment and
// ShardRef) is produced by Write and consumed by ReadRange and Delete;
// recording it durably is the metastore's job, not this package's.
package blobstore
