package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// benchPercentile is the nearest-rank percentile of sorted latencies: the
// smallest value with at least p% of the values at or below it. p is in
// [0, 100]; an empty slice gives 0.
func benchPercentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// benchLatencies summarises latencies in milliseconds.
type benchLatencies struct {
	P50, P90, P99, Max, Mean float64
}

func summarizeLatencies(lat []time.Duration) benchLatencies {
	if len(lat) == 0 {
		return benchLatencies{}
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	ms := func(d time.Duration) float64 { return roundTo(float64(d)/float64(time.Millisecond), 3) }
	return benchLatencies{
		P50: ms(benchPercentile(s, 50)), P90: ms(benchPercentile(s, 90)), P99: ms(benchPercentile(s, 99)),
		Max: ms(s[len(s)-1]), Mean: ms(sum / time.Duration(len(s))),
	}
}

// roundTo rounds x to d decimal places.
func roundTo(x float64, d int) float64 {
	p := math.Pow(10, float64(d))
	return math.Round(x*p) / p
}

// benchPID is a server process to watch, with an optional name
// (--server-pid name=pid).
type benchPID struct {
	Name string
	PID  int
}

func parseBenchPID(s string) (benchPID, error) {
	name, num, ok := strings.Cut(s, "=")
	if !ok {
		num, name = s, ""
	}
	pid, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || pid <= 0 {
		return benchPID{}, fmt.Errorf("--server-pid %q: want a pid or name=pid", s)
	}
	if name == "" {
		name = strconv.Itoa(pid)
	}
	return benchPID{Name: name, PID: pid}, nil
}

// benchProcStat is what one server process used during a scenario.
type benchProcStat struct {
	Name       string  `json:"name"`
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_s"`
	PeakRSSMiB float64 `json:"peak_rss_mib"` // highest VmRSS sampled during the scenario
	HWMMiB     float64 `json:"hwm_mib"`      // VmHWM at the end: the process's peak since it started
	Gone       bool    `json:"gone,omitempty"`
}

// clockTicks is the kernel's USER_HZ, from the auxiliary vector (AT_CLKTCK),
// for the CPU times in /proc/<pid>/stat.
var clockTicks = sync.OnceValue(func() float64 {
	b, err := os.ReadFile("/proc/self/auxv")
	if err == nil {
		for i := 0; i+16 <= len(b); i += 16 {
			key, val := binary.NativeEndian.Uint64(b[i:]), binary.NativeEndian.Uint64(b[i+8:])
			if key == 17 && val > 0 { // AT_CLKTCK
				return float64(val)
			}
		}
	}
	return 100
})

// procCPUSeconds is a process's user+system CPU time from /proc/<pid>/stat.
func procCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStatCPU(b)
}

// parseProcStatCPU reads utime and stime (fields 14 and 15) from the text of
// /proc/<pid>/stat; the command name (field 2) may hold spaces and parentheses.
func parseProcStatCPU(b []byte) (float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/<pid>/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc/<pid>/stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc/<pid>/stat")
	}
	return float64(ut+st) / clockTicks(), nil
}

// procMemKiB returns VmRSS and VmHWM of a process in KiB.
func procMemKiB(pid int) (rss, hwm uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch k {
		case "VmRSS":
			dst = &rss
		case "VmHWM":
			dst = &hwm
		default:
			continue
		}
		f := strings.Fields(v)
		if len(f) > 0 {
			*dst, _ = strconv.ParseUint(f[0], 10, 64)
		}
	}
	return rss, hwm, nil
}

// clientCPUSeconds is this process's user+system CPU time.
func clientCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// procWatcher samples the RSS of server processes while a scenario runs and
// measures their CPU time over it.
type procWatcher struct {
	pids  []benchPID
	cpu0  []float64
	peak  []uint64 // KiB
	gone  []bool
	stop  chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	every time.Duration
}

func startProcWatcher(pids []benchPID, every time.Duration) *procWatcher {
	w := &procWatcher{pids: pids, cpu0: make([]float64, len(pids)), peak: make([]uint64, len(pids)),
		gone: make([]bool, len(pids)), stop: make(chan struct{}), done: make(chan struct{}), every: every}
	for i, p := range pids {
		c, err := procCPUSeconds(p.PID)
		w.cpu0[i], w.gone[i] = c, err != nil
	}
	w.sample()
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				w.sample()
			}
		}
	}()
	return w
}

func (w *procWatcher) sample() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, p := range w.pids {
		rss, _, err := procMemKiB(p.PID)
		if err != nil {
			w.gone[i] = true
			continue
		}
		w.peak[i] = max(w.peak[i], rss)
	}
}

// finish stops sampling and returns what each process used.
func (w *procWatcher) finish() []benchProcStat {
	close(w.stop)
	<-w.done
	w.sample()
	out := make([]benchProcStat, len(w.pids))
	for i, p := range w.pids {
		st := benchProcStat{Name: p.Name, PID: p.PID, PeakRSSMiB: roundTo(float64(w.peak[i])/1024, 1), Gone: w.gone[i]}
		if c, err := procCPUSeconds(p.PID); err == nil && !w.gone[i] {
			st.CPUSeconds = roundTo(c-w.cpu0[i], 2)
		} else {
			st.Gone = true
		}
		if _, hwm, err := procMemKiB(p.PID); err == nil {
			st.HWMMiB = roundTo(float64(hwm)/1024, 1)
		}
		out[i] = st
	}
	return out
}
