package main

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The memory trimmer gives memory back to the operating system after a burst.
//
// Go collects garbage when the heap has grown by GOGC percent since the last
// collection, and returns freed pages to the system gradually. A burst of
// pushes leaves the heap full of buffers that are dead (or parked in buffer
// pools); once the burst is over, nothing allocates, so no collection runs,
// and the process keeps the burst's peak resident until Go's two-minute
// forced collection — seen as a frontend holding 530 MiB after 64 concurrent
// 1 MiB pushes had finished, with under 100 MiB live. The trimmer samples the
// heap every tick; when the process has been quiet (it allocated little) for
// a few ticks and holds much more heap than it did after its last trim (the
// baseline: what was left then is taken as what the process needs), it
// collects twice (buffer pools keep what they hold through one collection)
// and returns the free pages (debug.FreeOSMemory). Under steady load it does
// nothing: the allocation rate then keeps the collector running on its own,
// and pages returned to the system would only be faulted back in.
type memTrimmer struct {
	tick      time.Duration // how often the heap is sampled
	quietFor  int           // ticks of low allocation before a trim
	quietRate float64       // bytes allocated per second below which a tick is quiet
	minExcess uint64        // growth of the held heap over the baseline worth a trim
	minGap    time.Duration // between two trims

	trims        prometheus.Counter
	trimmedBytes prometheus.Counter
	log          *slog.Logger

	// What observe has seen so far.
	started    bool
	prev       heapSample
	baseline   uint64 // heap held after the last trim, or the least held since
	quietTicks int
	last       time.Time // of the last trim
}

func newMemTrimmer(reg prometheus.Registerer, log *slog.Logger) *memTrimmer {
	t := &memTrimmer{
		tick: 250 * time.Millisecond, quietFor: 4, quietRate: 32 << 20,
		minExcess: 64 << 20, minGap: 10 * time.Second, log: log,
		trims: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "strata_memory_trims_total",
			Help: "Times the process returned memory to the operating system after a burst (collections forced while quiet).",
		}),
		trimmedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "strata_memory_trimmed_bytes_total",
			Help: "Bytes of heap the trims gave back to the operating system.",
		}),
	}
	if reg != nil {
		reg.MustRegister(t.trims, t.trimmedBytes)
	}
	return t
}

// heapSample is what the trimmer reads of the runtime at one tick.
type heapSample struct {
	at     time.Time
	allocs uint64 // bytes allocated since the process started
	held   uint64 // heap the process holds: objects, unused span space, free pages not returned
}

var heapMetrics = []string{
	"/gc/heap/allocs:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
}

func readHeap() heapSample {
	s := make([]metrics.Sample, len(heapMetrics))
	for i, name := range heapMetrics {
		s[i].Name = name
	}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return heapSample{at: time.Now(), allocs: v(0), held: v(1) + v(2) + v(3)}
}

// quiet reports whether the process allocated less than the quiet rate
// between two samples.
func (t *memTrimmer) quiet(prev, cur heapSample) bool {
	dt := cur.at.Sub(prev.at).Seconds()
	if dt <= 0 {
		return false
	}
	return float64(cur.allocs-prev.allocs)/dt < t.quietRate
}

// observe takes the sample of one tick and reports whether to trim now.
func (t *memTrimmer) observe(cur heapSample) bool {
	if !t.started {
		t.started, t.prev, t.baseline = true, cur, cur.held
		return false
	}
	if t.quiet(t.prev, cur) {
		t.quietTicks++
	} else {
		t.quietTicks = 0
	}
	t.prev = cur
	t.baseline = min(t.baseline, cur.held) // the runtime gave memory back itself
	return t.quietTicks >= t.quietFor && cur.held >= t.baseline+t.minExcess &&
		(t.last.IsZero() || cur.at.Sub(t.last) >= t.minGap)
}

// trimmed records a trim made at the sample before that left the heap as
// after: what is left is taken as what the process needs.
func (t *memTrimmer) trimmed(before, after heapSample) {
	t.last, t.prev, t.baseline = before.at, after, after.held
}

// run samples until ctx ends.
func (t *memTrimmer) run(ctx context.Context) {
	tk := time.NewTicker(t.tick)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		cur := readHeap()
		if !t.observe(cur) {
			continue
		}
		after := t.trim(cur)
		t.trimmed(cur, after)
		t.log.Debug("memory trimmed after a burst", "held_before", cur.held, "held_after", after.held)
	}
}

// trim collects twice and returns free pages; it returns the heap as it is
// afterwards.
func (t *memTrimmer) trim(before heapSample) heapSample {
	runtime.GC()
	debug.FreeOSMemory() // a second collection, then every free page back
	after := readHeap()
	t.trims.Inc()
	if after.held < before.held {
		t.trimmedBytes.Add(float64(before.held - after.held))
	}
	return after
}
