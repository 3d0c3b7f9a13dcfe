package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		base int
		live uint64
		want int
	}{
		{50, 1024 * mib, 50},   // a large heap grows by its percentage
		{50, 64 * mib, 50},     // half of 64 MiB is the floor
		{50, 32 * mib, 100},    // 32 MiB: the floor doubles it
		{50, 16 * mib, 200},    // 16 MiB may grow by 32 MiB
		{100, 48 * mib, 100},   // the base wins where it is more
		{100, 20 * mib, 160},   // rounded up
		{50, 1 * mib, 1000},    // capped
		{50, 0, 1000},          // before the first collection
		{100, 4096 * mib, 100}, // a meta node with a large heap keeps Go's default
	} {
		if got := gcPercentFor(tc.base, tc.live); got != tc.want {
			t.Errorf("gcPercentFor(%d, %d MiB) = %d, want %d", tc.base, tc.live/mib, got, tc.want)
		}
	}
}

// tuneGC sets the target after collections, from the live heap, and stops
// when its context ends.
func TestTuneGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })
	gogc := func() int {
		s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
		metrics.Read(s)
		return int(s[0].Value.Uint64())
	}
	live := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	ctx, cancel := context.WithCancel(context.Background())
	tuneGC(ctx, 50)
	// The test binary's heap is a few MiB: the floor sets a large target.
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // the finalizer goroutine runs the hook
		if want := gcPercentFor(50, live()); gogc() == want && want > 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after collections the target is %d, want %d (live heap %d bytes)", gogc(), gcPercentFor(50, live()), live())
		}
	}
	cancel()
	runtime.GC() // the hook armed before cancel runs once more and stops
	time.Sleep(10 * time.Millisecond)
	debug.SetGCPercent(77)
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if got := gogc(); got != 77 {
		t.Fatalf("the tuner changed the target to %d after its context ended", got)
	}
}
