package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var burst [][]byte // package level, so the burst's buffers are really allocated and live

// After a burst of allocation ends, the trimmer collects and returns the
// burst's memory to the system; during the burst it stays out of the way.
func TestMemTrimmerReturnsABurstsMemory(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr := newMemTrimmer(reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	tr.tick, tr.quietFor, tr.minGap = 20*time.Millisecond, 5, 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	for i := 0; i < 256; i++ {
		b := make([]byte, 1<<20)
		b[0] = byte(i)
		burst = append(burst, b)
	}
	peak := readHeap().held
	if peak < 256<<20 {
		t.Fatalf("the burst holds %d bytes of heap, want at least 256 MiB", peak)
	}
	burst = nil
	deadline := time.Now().Add(20 * time.Second)
	for {
		trims := counterValue(t, reg, "strata_memory_trims_total")
		held := readHeap().held
		if trims >= 1 && held+192<<20 < peak {
			t.Logf("peak %d MiB, held after %v trim(s): %d MiB", peak>>20, trims, held>>20)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20s after the burst: %v trims, heap held %d MiB of a %d MiB peak", trims, held>>20, peak>>20)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if trims := counterValue(t, reg, "strata_memory_trims_total"); trims != 1 {
		t.Fatalf("%v trims, want one, after the burst", trims)
	}
	if v := counterValue(t, reg, "strata_memory_trimmed_bytes_total"); v < 192<<20 {
		t.Fatalf("trimmed bytes counter %v, want the burst's", v)
	}
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
