package cluster

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-registry/strata/blobstore"
)

// RegisterScrubMetrics exports a scrubber's counters to reg, labelled with
// the storage node (disk) it scrubs.
func RegisterScrubMetrics(reg prometheus.Registerer, node string, sc *blobstore.Scrubber) {
	labels := prometheus.Labels{"node": node}
	counter := func(name, help string, v func(blobstore.ScrubStats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "strata", Subsystem: "scrub", Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v(sc.Stats())) })
	}
	reg.MustRegister(
		counter("passes_total", "Scrub passes completed over every shard of the node.", func(s blobstore.ScrubStats) int64 { return s.Passes }),
		counter("shards_checked_total", "Shards re-verified.", func(s blobstore.ScrubStats) int64 { return s.ShardsChecked }),
		counter("bytes_checked_total", "Shard payload bytes read and hashed.", func(s blobstore.ScrubStats) int64 { return s.BytesChecked }),
		counter("corrupt_total", "Shards that failed their check or could not be read.", func(s blobstore.ScrubStats) int64 { return s.CorruptFound }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "strata", Subsystem: "scrub", Name: "last_pass_end_timestamp_seconds",
			Help: "When the last complete pass ended (0: none yet).", ConstLabels: labels}, func() float64 {
			if t := sc.Stats().LastPassEnd; !t.IsZero() {
				return float64(t.UnixNano()) / 1e9
			}
			return 0
		}),
	)
}
