// Package erasure is Strata's Reed–Solomon codec and its stripe maths.
//
// A segment of n bytes is cut into k data shards of ShardSize(n) bytes each
// (the last one zero-padded) and m parity shards of the same size. Any k of the
// k+m shards are enough to get the segment back. The package knows nothing
// about disks, networks, checksums or encryption: it only turns byte slices
// into shards and shards back into bytes. blobstore composes it with shard
// stores and placement.
//
// The arithmetic is done by github.com/klauspost/reedsolomon; this package
// fixes the conventions Strata relies on (equal shard sizes, zero padding,
// m == 0 meaning plain data shards) and maps its errors to sentinels prefixed
// "erasure: ".
package erasure
