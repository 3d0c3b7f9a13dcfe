package chaos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"
)

// FaultKind names a kind of fault.
type FaultKind string

// The faults the injector knows, in the shape of the etcd robustness
// suite's failpoints. Network partitions cut links in the proxy layer (Net)
// when the scenario puts one between the nodes, and otherwise stop the side
// cut off with SIGSTOP (see docs/CHAOS.md).
const (
	// SIGKILL of the Raft leader; restarted after a hold.
	FaultLeaderKill FaultKind = "leader-kill"
	// SIGKILL of any meta node (possibly the leader); restarted after a hold.
	FaultMetaKill FaultKind = "meta-kill"
	// SIGKILL of 1 to m storage nodes at once; restarted after a hold that
	// may outlast --dead-after (the nodes are then declared dead and repair
	// starts before they come back).
	FaultStorageKill FaultKind = "storage-kill"
	// SIGSTOP of any node for a short hold, then SIGCONT.
	FaultPause FaultKind = "pause"
	// The leader cut off from the other meta nodes for longer than an
	// election, while frontends and storage nodes still reach it (with the
	// proxy layer; without it, SIGSTOP of the leader, which then wakes up
	// believing it still leads).
	FaultPartitionLeader FaultKind = "partition-leader"
	// A storage node cut off from every other node for longer than
	// --dead-after (without the proxy layer: SIGSTOP).
	FaultPartitionStorage FaultKind = "partition-storage"
	// A frontend cut off from the meta nodes, still serving HTTP (without
	// the proxy layer: SIGSTOP).
	FaultPartitionFrontend FaultKind = "partition-frontend"
	// Bytes flipped in shard files on a storage node's disk.
	FaultCorrupt FaultKind = "corrupt-shards"
	// Shard files deleted from a storage node's disk.
	FaultDeleteShards FaultKind = "delete-shards"
	// Every node stopped with SIGTERM and started again, one at a time
	// (storage, frontends, meta followers, the leader last). Each node's
	// restart is one injection.
	FaultRollingRestart FaultKind = "rolling-restart"

	// Crashes at code failpoints (package chaos/failpoint; the nodes run a
	// binary built with -tags failpoints):
	//
	// A frontend exits between the shards of an upload being durable and
	// its Raft commit (upload-before-commit, upload-before-update).
	FaultCrashBeforeCommit FaultKind = "crash-before-commit"
	// The leader exits between writing a rebuilt shard and recording it
	// (repair-before-replace), while repairing a storage node killed for
	// longer than --dead-after.
	FaultCrashInRepair FaultKind = "crash-in-repair"
	// A meta follower that must install a snapshot exits in the middle of
	// the install (snapshot-restore), and comes back under a new leader.
	FaultCrashInSnapshot FaultKind = "crash-in-snapshot-install"

	// A storage node's disk full (its shard filesystem filled up by a
	// filler file) for a hold, then freed.
	FaultDiskFull FaultKind = "disk-full"
)

// AllFaultKinds lists every fault kind.
var AllFaultKinds = []FaultKind{FaultLeaderKill, FaultMetaKill, FaultStorageKill, FaultPause, FaultPartitionLeader,
	FaultPartitionStorage, FaultPartitionFrontend, FaultCorrupt, FaultDeleteShards, FaultRollingRestart,
	FaultCrashBeforeCommit, FaultCrashInRepair, FaultCrashInSnapshot, FaultDiskFull}

// Scenario is a named mix of faults and workload options.
type Scenario struct {
	Name        string
	Description string
	// Faults and their weights: each fault of the schedule is drawn from
	// this mix.
	Faults map[FaultKind]int
	// Gap bounds the quiet time between two faults.
	Gap [2]time.Duration
	// Proxies puts the proxy layer (Net) between the nodes before the
	// workload starts, so that partitions cut links rather than stop
	// processes. It costs a restart of every node at the start.
	Proxies bool
	// Failpoints: the nodes run a binary built with -tags failpoints, with
	// their failpoint endpoints on (FailpointEnv); only the process backend
	// can do it.
	Failpoints bool
	// SmallDisks mounts a small filesystem of its own (a tmpfs of
	// ShardFSSize, which needs root) on every storage node's shard
	// directory, so that disk-full faults can fill one up for real.
	SmallDisks bool
	// GC runs a deleter (an acknowledged image deleted every second) and
	// `strata gc run --grace 0s` every few seconds during the faults, and
	// once more after them; only images still live must then pull intact.
	GC bool
}

// Scenarios are the named scenarios of `strata chaos run`.
var Scenarios = map[string]Scenario{
	"leader-kill": {
		Name:        "leader-kill",
		Description: "SIGKILL of the Raft leader (and now and then of another meta node), restarted after 0.5-4s",
		Faults:      map[FaultKind]int{FaultLeaderKill: 4, FaultMetaKill: 1},
		Gap:         [2]time.Duration{2 * time.Second, 5 * time.Second},
	},
	"storage-kill": {
		Name:        "storage-kill",
		Description: "SIGKILL of 1 or 2 (m) storage nodes at once, restarted after 1-8s (past --dead-after 3s they are declared dead and repaired)",
		Faults:      map[FaultKind]int{FaultStorageKill: 1},
		Gap:         [2]time.Duration{2 * time.Second, 5 * time.Second},
	},
	"pause": {
		Name:        "pause",
		Description: "SIGSTOP/SIGCONT of any node for 0.3-3s; and the leader, a storage node or a frontend stopped past an election or --dead-after",
		Faults:      map[FaultKind]int{FaultPause: 4, FaultPartitionLeader: 1, FaultPartitionStorage: 1, FaultPartitionFrontend: 1},
		Gap:         [2]time.Duration{1 * time.Second, 4 * time.Second},
	},
	"partition": {
		Name:        "partition",
		Description: "links cut through TCP proxies between the nodes: the leader from the other meta nodes, a storage node from everyone, a frontend from the meta nodes (2-8s)",
		Faults:      map[FaultKind]int{FaultPartitionLeader: 2, FaultPartitionStorage: 2, FaultPartitionFrontend: 1},
		Gap:         [2]time.Duration{2 * time.Second, 5 * time.Second},
		Proxies:     true,
	},
	"corrupt": {
		Name:        "corrupt",
		Description: "bytes flipped in, or deletion of, shard files of acknowledged blobs on storage nodes' disks (never two of one segment), with storage restarts that make the scrubber look",
		Faults:      map[FaultKind]int{FaultCorrupt: 3, FaultDeleteShards: 2, FaultStorageKill: 1},
		Gap:         [2]time.Duration{1 * time.Second, 4 * time.Second},
	},
	"rolling-restart": {
		Name:        "rolling-restart",
		Description: "every node stopped (SIGTERM) and started again, one at a time, waiting for each to be back",
		Faults:      map[FaultKind]int{FaultRollingRestart: 1},
		Gap:         [2]time.Duration{2 * time.Second, 4 * time.Second},
	},
	"gc-under-faults": {
		Name:        "gc-under-faults",
		Description: "images deleted and `strata gc run --grace 0s` every few seconds while leaders and storage nodes are killed and nodes paused",
		Faults:      map[FaultKind]int{FaultLeaderKill: 2, FaultMetaKill: 1, FaultStorageKill: 2, FaultPause: 2},
		Gap:         [2]time.Duration{2 * time.Second, 5 * time.Second},
		GC:          true,
	},
	"kill-and-cut": {
		Name:        "kill-and-cut",
		Description: "SIGKILL of the leader and of storage nodes, and nodes cut off the network (through the proxy layer; with --backend compose, docker network disconnect): a short mix for every backend",
		Faults:      map[FaultKind]int{FaultLeaderKill: 2, FaultStorageKill: 2, FaultPartitionStorage: 1, FaultPartitionLeader: 1},
		Gap:         [2]time.Duration{2 * time.Second, 5 * time.Second},
		Proxies:     true,
	},
	"failpoints": {
		Name:        "failpoints",
		Description: "crashes at code failpoints (bin/strata-failpoints): a frontend between a blob's shards and its Raft commit, the leader between rebuilding a shard and recording it, a meta node in the middle of installing a snapshot",
		Faults:      map[FaultKind]int{FaultCrashBeforeCommit: 3, FaultCrashInRepair: 2, FaultCrashInSnapshot: 2},
		Gap:         [2]time.Duration{2 * time.Second, 5 * time.Second},
		Failpoints:  true,
	},
	"disk-full": {
		Name:        "disk-full",
		Description: "a storage node's shard filesystem (a tmpfs; needs root) filled up for 5-15s, then freed; with storage and leader kills",
		Faults:      map[FaultKind]int{FaultDiskFull: 4, FaultStorageKill: 1, FaultLeaderKill: 1},
		Gap:         [2]time.Duration{2 * time.Second, 5 * time.Second},
		SmallDisks:  true,
	},
	"mixed": {
		Name:        "mixed",
		Description: "every fault kind (partitions through the proxy layer), with deletes and garbage collection at zero grace",
		Faults: map[FaultKind]int{FaultLeaderKill: 3, FaultMetaKill: 2, FaultStorageKill: 3, FaultPause: 3,
			FaultPartitionLeader: 2, FaultPartitionStorage: 2, FaultPartitionFrontend: 1, FaultCorrupt: 2, FaultDeleteShards: 1,
			FaultRollingRestart: 1},
		Gap:     [2]time.Duration{1 * time.Second, 4 * time.Second},
		GC:      true,
		Proxies: true,
	},
}

// ScenarioNames lists the scenarios, sorted.
func ScenarioNames() []string {
	var out []string
	for n := range Scenarios {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Fault is one entry of a schedule, drawn from the seed before the run:
// what to inject and when, and numbers from which the targets are picked at
// injection time (which node leads then is up to the run's timing).
type Fault struct {
	Kind  FaultKind     `json:"kind"`
	Gap   time.Duration `json:"gap_ns"`          // quiet time before it
	Pick  uint64        `json:"pick"`            // picks the targets
	Count int           `json:"count,omitempty"` // storage nodes to kill, shards to damage
	Hold  time.Duration `json:"hold_ns,omitempty"`
}

func (f Fault) String() string {
	s := string(f.Kind)
	if f.Count > 0 {
		s += fmt.Sprintf(" ×%d", f.Count)
	}
	if f.Hold > 0 {
		s += fmt.Sprintf(" for %v", f.Hold.Round(time.Millisecond))
	}
	return s
}

// Schedule draws the faults of a run of sc lasting about d from seed:
// the same seed gives the same schedule (for the same d). It holds more
// faults than fit in d (the run stops injecting at d); at most 100000.
func Schedule(sc Scenario, seed uint64, d time.Duration) []Fault {
	r := rand.New(rand.NewPCG(seed, 0xfa17))
	var kinds []FaultKind
	var weights []int
	total := 0
	for _, k := range AllFaultKinds { // a fixed order: maps iterate randomly
		if w := sc.Faults[k]; w > 0 {
			kinds = append(kinds, k)
			weights = append(weights, w)
			total += w
		}
	}
	if total == 0 {
		return nil
	}
	between := func(a, b time.Duration) time.Duration {
		if b <= a {
			return a
		}
		return a + time.Duration(r.Int64N(int64(b-a)))
	}
	var out []Fault
	for spent := time.Duration(0); spent <= d && len(out) < 100000; {
		x := r.IntN(total)
		k := kinds[0]
		for i, w := range weights {
			if x < w {
				k = kinds[i]
				break
			}
			x -= w
		}
		f := Fault{Kind: k, Gap: between(sc.Gap[0], sc.Gap[1]), Pick: r.Uint64()}
		switch k {
		case FaultLeaderKill, FaultMetaKill:
			f.Hold = between(500*time.Millisecond, 4*time.Second)
		case FaultStorageKill:
			f.Count = 1 + r.IntN(2)
			f.Hold = between(time.Second, 8*time.Second)
		case FaultPause:
			f.Hold = between(300*time.Millisecond, 3*time.Second)
		case FaultPartitionLeader:
			f.Hold = between(3*time.Second, 8*time.Second)
		case FaultPartitionStorage:
			f.Hold = between(4*time.Second, 8*time.Second)
		case FaultPartitionFrontend:
			f.Hold = between(2*time.Second, 6*time.Second)
		case FaultCorrupt, FaultDeleteShards:
			f.Count = 1 + r.IntN(4)
		case FaultDiskFull:
			f.Hold = between(5*time.Second, 15*time.Second)
		}
		out = append(out, f)
		// Only the gaps count, a lower bound of each fault's cost, so the
		// schedule always outlasts d (the run stops injecting at d).
		spent += f.Gap
	}
	return out
}

// describeMix renders a scenario's fault mix.
func describeMix(sc Scenario) string {
	var parts []string
	for _, k := range AllFaultKinds {
		if w := sc.Faults[k]; w > 0 {
			parts = append(parts, fmt.Sprintf("%s:%d", k, w))
		}
	}
	return strings.Join(parts, " ")
}

// pickN picks n distinct elements of ids from the number pick.
func pickN(ids []string, n int, pick uint64) []string {
	r := rand.New(rand.NewPCG(pick, 0x9c4))
	ids = slices.Clone(ids)
	r.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	if n > len(ids) {
		n = len(ids)
	}
	out := ids[:n]
	sort.Strings(out)
	return out
}
