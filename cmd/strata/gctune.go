package main

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"

	"github.com/strata-registry/strata/cluster"
)

// apiGCPercent is the collector's target (GOGC) on nodes with the api role.
// Their heap is mostly the segment cache and segments in flight: large
// pointer-free buffers that cost a collection almost nothing to mark, so
// collecting at half again the live heap instead of twice it costs little
// CPU and keeps RSS near what is live. `--dev`, 4 clients pulling 4
// distinct 1 GiB blobs: peak RSS 916 and 748 MiB with Go's default of 100,
// 573 and 531 MiB with 50; 256 MiB pushes 362-379 against 268-304 MiB;
// throughput and CPU within the runs' noise.
const apiGCPercent = 50

// setGCPercent sets the collector's target of a node with the api role to
// apiGCPercent and returns the target in force and where it came from (""
// when it is Go's default). GOGC, when set, wins.
func (o *serveOptions) setGCPercent() (int, string) {
	if os.Getenv("GOGC") != "" {
		p := debug.SetGCPercent(100)
		debug.SetGCPercent(p)
		return p, "GOGC"
	}
	if !o.has(cluster.RoleAPI) {
		return 100, ""
	}
	debug.SetGCPercent(apiGCPercent)
	return apiGCPercent, "api role"
}

// gcHeadroom is the least the heap may grow between two collections.
//
// A percentage of a small live heap is a few MiB: a node answering metadata
// requests (tag lists, manifest GETs, proposals) with a live heap of tens of
// MiB then collects many times a second, and every collection scans the
// stacks of hundreds of goroutines. On a 3/6/2 dev cluster, 64 clients
// GETting manifests by tag: 8485-8859/s with every node at its default
// target, 10277-10541/s at GOGC 200, for 57 MiB more RSS over 11 processes.
// A fixed floor under the growth gives that where the heap is small and
// changes nothing where it is large (a frontend holding its segment cache),
// where the percentage is more than the floor.
const gcHeadroom = 32 << 20

// gcPercentFor returns the target that lets a heap of live bytes grow by
// the larger of base percent and gcHeadroom before the next collection.
func gcPercentFor(base int, live uint64) int {
	const most = 1000
	if live == 0 {
		return most
	}
	p := int((gcHeadroom*100 + live - 1) / live)
	return min(max(base, p), most)
}

// tuneGC keeps the collector's target at gcPercentFor(base, live heap),
// set after every collection from the heap it found live, until ctx ends.
// Setting it then, rather than on a timer, leaves no window in which a heap
// that grew fast (a frontend filling its segment cache) grows by the large
// percentage meant for a small one. The memory limit still applies: near
// it the runtime collects whatever the target says.
func tuneGC(ctx context.Context, base int) {
	debug.SetGCPercent(base)
	cur := base
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	afterEachGC(ctx, func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		if p := gcPercentFor(base, sample[0].Value.Uint64()); p != cur {
			debug.SetGCPercent(p)
			cur = p
		}
	})
}

// afterEachGC calls f on the finalizer goroutine after every collection
// until ctx ends: a sentinel that nothing references is finalized by the
// next collection, and its finalizer arms the next one.
func afterEachGC(ctx context.Context, f func()) {
	type sentinel struct{ _ *byte } // with a pointer: never a tiny allocation, which may not be finalized
	var arm func()
	arm = func() {
		runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
			if ctx.Err() == nil {
				f()
				arm()
			}
		})
	}
	arm()
}
