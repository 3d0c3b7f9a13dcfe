package main

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var burst [][]byte // package level, so the burst's buffers are really allocated and live

// A trim gives a burst's dead memory back to the system, counted in its
// metrics (the runtime's own heap, not a model of it).
func TestMemTrimReturnsABurstsMemory(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr := newMemTrimmer(reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for i := 0; i < 256; i++ {
		b := make([]byte, 1<<20)
		b[0] = byte(i)
		burst = append(burst, b)
	}
	before := readHeap()
	if before.held < 256<<20 {
		t.Fatalf("the burst holds %d bytes of heap, want at least 256 MiB", before.held)
	}
	burst = nil
	after := tr.trim(before)
	t.Logf("heap held: %d MiB before the trim, %d MiB after", before.held>>20, after.held>>20)
	if after.held+192<<20 > before.held {
		t.Fatalf("the trim left %d MiB of heap held out of %d MiB, the burst's 256 MiB dead", after.held>>20, before.held>>20)
	}
	if n := counterValue(t, reg, "strata_memory_trims_total"); n != 1 {
		t.Fatalf("trims counter %v, want 1", n)
	}
	if v := counterValue(t, reg, "strata_memory_trimmed_bytes_total"); v < 192<<20 {
		t.Fatalf("trimmed bytes counter %v, want the burst's", v)
	}
}

// When to trim, tick by tick: never during a burst or under steady load,
// once the process has been quiet for quietFor ticks after its heap grew by
// minExcess, and not again within minGap.
func TestMemTrimmerDecides(t *testing.T) {
	const mib = 1 << 20
	tr := &memTrimmer{tick: time.Second, quietFor: 3, quietRate: 32 * mib, minExcess: 64 * mib, minGap: 10 * time.Second}
	t0 := time.Unix(1_000_000, 0)
	var allocs uint64
	at := 0
	tick := func(allocated, held uint64) bool {
		at++
		allocs += allocated
		return tr.observe(heapSample{at: t0.Add(time.Duration(at) * time.Second), allocs: allocs, held: held * mib})
	}
	expect := func(what string, got, want bool) {
		t.Helper()
		if got != want {
			t.Fatalf("tick %d (%s): trim %v, want %v", at, what, got, want)
		}
	}
	expect("first sample", tick(0, 50), false)
	for i := 0; i < 5; i++ {
		expect("burst", tick(500*mib, 50+uint64(i)*60), false)
	}
	expect("quiet 1", tick(mib, 300), false)
	expect("quiet 2", tick(mib, 300), false)
	expect("quiet 3", tick(mib, 300), true)
	tr.trimmed(heapSample{at: t0.Add(time.Duration(at) * time.Second)}, heapSample{at: t0.Add(time.Duration(at) * time.Second), allocs: allocs, held: 60 * mib})
	for i := 0; i < 5; i++ {
		expect("quiet after the trim", tick(mib, 60), false)
	}
	// A second burst soon after: no trim until minGap has passed since the first.
	expect("burst 2", tick(400*mib, 200), false)
	expect("quiet 1", tick(0, 200), false)
	expect("quiet 2", tick(0, 200), false)
	expect("quiet 3, 9 s after the trim", tick(0, 200), false)
	expect("quiet 4, 10 s after", tick(0, 200), true)
	tr.trimmed(heapSample{at: t0.Add(time.Duration(at) * time.Second)}, heapSample{at: t0.Add(time.Duration(at) * time.Second), allocs: allocs, held: 200 * mib})
	// Steady load never trims, however much heap it holds; what the last
	// trim could not free is the baseline a quiet heap is measured against.
	for i := 0; i < 30; i++ {
		expect("steady load", tick(100*mib, 400), false)
	}
	for i := 0; i < 5; i++ {
		expect("quiet, 60 MiB above the baseline", tick(0, 260), false)
	}
	expect("quiet, 64 MiB above", tick(0, 264), true)
}

func TestMemTrimmerQuiet(t *testing.T) {
	tr := &memTrimmer{quietRate: 32 << 20}
	t0 := time.Now()
	a := heapSample{at: t0, allocs: 1 << 30}
	for _, c := range []struct {
		dt    time.Duration
		bytes uint64
		want  bool
	}{
		{time.Second, 1 << 20, true},
		{time.Second, 64 << 20, false},
		{100 * time.Millisecond, 4 << 20, false}, // 40 MiB/s
		{100 * time.Millisecond, 2 << 20, true},  // 20 MiB/s
		{0, 0, false},
	} {
		b := heapSample{at: t0.Add(c.dt), allocs: a.allocs + c.bytes}
		if got := tr.quiet(a, b); got != c.want {
			t.Errorf("%d bytes in %v: quiet %v, want %v", c.bytes, c.dt, got, c.want)
		}
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
