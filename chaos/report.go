package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Summary renders the report for people: the verdict, the faults by kind
// with the longest window of unavailability each caused, the operations,
// what was acknowledged and lost, and every failure.
func (r *Report) Summary() string {
	var b strings.Builder
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "strata chaos: scenario %s: %s in %v (faults for %v), seed %d\n", r.Scenario, verdict,
		time.Duration(r.Seconds*float64(time.Second)).Round(time.Second), time.Duration(r.FaultPhaseS*float64(time.Second)).Round(time.Second), r.Seed)
	fmt.Fprintf(&b, "  %s\n", r.Description)
	fmt.Fprintf(&b, "  cluster: %d meta, %d storage, %d api (m=%d), --dead-after %s, backend %s\n",
		r.Cluster.Meta, r.Cluster.Storage, r.Cluster.API, r.Cluster.M, r.Cluster.DeadAfter, r.Backend)

	fmt.Fprintf(&b, "\nfaults injected: %d", r.Faults.Injected)
	if r.Faults.Skipped > 0 {
		fmt.Fprintf(&b, " (%d skipped to stay within m)", r.Faults.Skipped)
	}
	if r.Faults.Errors > 0 {
		fmt.Fprintf(&b, " (%d with errors)", r.Faults.Errors)
	}
	b.WriteString("\n")
	var kinds []string
	for k := range r.Faults.ByKind {
		kinds = append(kinds, string(k))
	}
	sort.Strings(kinds)
	if len(kinds) > 0 {
		fmt.Fprintf(&b, "  %-25s %6s %22s %14s\n", "kind", "count", "longest unavailability", "mean")
	}
	for _, k := range kinds {
		u := r.Faults.Unavail[FaultKind(k)]
		longest := fmt.Sprintf("%.0f ms", u.MaxMS)
		if u.NoPushAfter > 0 {
			longest += fmt.Sprintf(" (%d: no push after)", u.NoPushAfter)
		}
		fmt.Fprintf(&b, "  %-25s %6d %22s %11.0f ms\n", k, r.Faults.ByKind[FaultKind(k)], longest, u.MeanMS)
	}

	if n := r.Net; n != nil {
		fmt.Fprintf(&b, "  proxy layer: %d connections (%d from nodes), %d links cut, %d connections severed, %d refused\n",
			n.Accepted, n.Attributed, n.Cuts, n.Severed, n.Refused)
	}

	o := r.Operations
	fmt.Fprintf(&b, "\noperations: %d images started, %d blob pushes (%d acknowledged), %d manifest pushes (%d acknowledged), %.0f MiB sent\n",
		o.Images, o.BlobsAttempted, o.BlobsAcked, o.ManifestsAttempted, o.ManifestsAcked, o.SentMiB)
	fmt.Fprintf(&b, "  reads checked during the run: %d blobs, %d whole images; probes acknowledged: %d\n", o.Reads, o.Pulls, o.ProbesAcked)
	if o.Deletes > 0 || o.GCRuns > 0 {
		fmt.Fprintf(&b, "  deletes acknowledged: %d; gc runs at zero grace: %d (%d failed during faults), %d blobs collected\n",
			o.Deletes, o.GCRuns, o.GCFailed, o.GCBlobsCollected)
	}
	l := r.Linearizability
	fmt.Fprintf(&b, "  tag operations: %d (%d puts and %d deletes acknowledged, %d ambiguous writes of which %d never observed, %d reads)\n",
		o.TagOps, l.Puts, l.Deletes, l.Ambiguous, l.Pruned, l.Gets)
	fmt.Fprintf(&b, "acknowledged: %d   lost: %d\n", r.Acknowledged, r.Lost)
	fmt.Fprintf(&b, "error answers other than 503 (HTTP 5xx): %d\n", r.ServerErrors.Count)

	v := r.Verify
	fmt.Fprintf(&b, "\nchecks:\n")
	fmt.Fprintf(&b, "  final read-back: %d blobs (%.1f MiB), %d manifests with tags in %d repositories, %d deleted manifests; %d unacknowledged blobs found stored, %d absent: %s\n",
		v.AckedBlobs, float64(v.BlobBytes)/mib, v.AckedManifests, v.Repos, v.DeletedManifests, v.UnackedPresent, v.UnackedAbsent, okIf(len(v.Failures) == 0))
	fmt.Fprintf(&b, "  tag linearizability (porcupine, %d operations on %d tags, %d ms): %s\n", l.Operations, l.Tags, l.DurationMS, l.Result)
	rp := r.Repair
	repair := "repair queue empty, no shard on a dead node, every storage node alive"
	if !rp.Done {
		repair = rp.Error
	}
	fmt.Fprintf(&b, "  repair (strata storage status --json, %d ms): %s\n", rp.WaitedMS, repair)
	if rr := r.Replicas; rr.Checked {
		var ids []string
		for id := range rr.Nodes {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		var parts []string
		missing := 0
		for _, id := range ids {
			n := rr.Nodes[id]
			parts = append(parts, fmt.Sprintf("%s at %d", id, n.Applied))
			missing += n.MissingCount
			if n.Error != "" {
				missing++
			}
		}
		fmt.Fprintf(&b, "  replicas (each meta node's own metastore after the run: %s): %s\n", strings.Join(parts, ", "),
			okIf(missing == 0))
	} else if rr.Why != "" {
		fmt.Fprintf(&b, "  replicas: not checked (%s)\n", rr.Why)
	}
	healed, collected := 0, 0
	for _, d := range rp.Damage {
		switch {
		case d.Collected:
			collected++
		case !d.Healed.IsZero():
			healed++
		}
	}
	if len(rp.Damage) > 0 {
		fmt.Fprintf(&b, "  damaged shards repaired: %d of %d", healed, len(rp.Damage)-collected)
		if collected > 0 {
			fmt.Fprintf(&b, " (%d more garbage-collected with their blob first)", collected)
		}
		b.WriteString("\n")
	}
	rr := rp.Redundancy
	fmt.Fprintf(&b, "  redundancy: %d blobs, %d segments, %d shards (%d read in full): %d segments below k+m",
		rr.Blobs, rr.Segments, rr.Shards, rr.Verified, len(rr.BelowFull))
	if rr.Doubled > 0 {
		fmt.Fprintf(&b, " (%d with two shards on one node, repaired while nodes were dead or full)", rr.Doubled)
	}
	b.WriteString("\n")

	if len(r.Failures) > 0 {
		fmt.Fprintf(&b, "\nFAILURES (%d):\n", len(r.Failures))
		for i, f := range r.Failures {
			if i == 40 {
				fmt.Fprintf(&b, "  ... and %d more (see the JSON report)\n", len(r.Failures)-40)
				break
			}
			fmt.Fprintf(&b, "  - %s\n", indent(f))
		}
	}
	if len(r.Warnings) > 0 {
		fmt.Fprintf(&b, "\nwarnings (they do not fail the run): %d\n", len(r.Warnings))
		for i, w := range r.Warnings {
			if i == 10 {
				fmt.Fprintf(&b, "  ... and %d more\n", len(r.Warnings)-10)
				break
			}
			fmt.Fprintf(&b, "  - %s\n", indent(w))
		}
	}
	if r.Artifacts != "" {
		fmt.Fprintf(&b, "\nhistories and node logs: %s\ncluster data: %s\n", r.Artifacts, r.Cluster.Dir)
	}
	fmt.Fprintf(&b, "replay: %s\n", r.Replay)
	return b.String()
}

func okIf(ok bool) string {
	if ok {
		return "ok"
	}
	return "FAILED"
}

func indent(s string) string {
	if len(s) > 2000 {
		s = s[:2000] + " [...]"
	}
	return strings.ReplaceAll(s, "\n", "\n    ")
}
