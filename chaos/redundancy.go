package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// StorageStatus is the part of `strata storage status --json` the checks
// read.
type StorageStatus struct {
	Leader string `json:"leader"`
	Nodes  []struct {
		ID     string `json:"id"`
		State  string `json:"state"`
		Shards uint64 `json:"shards"`
	} `json:"nodes"`
	Repair struct {
		Running          bool   `json:"running"`
		QueueLength      uint64 `json:"queue_length"`
		PendingShards    uint64 `json:"pending_shards"`
		InProgress       uint64 `json:"in_progress"`
		SegmentsRepaired uint64 `json:"segments_repaired"`
		ShardsRebuilt    uint64 `json:"shards_rebuilt"`
		ShardsMoved      uint64 `json:"shards_moved"`
		Failures         uint64 `json:"failures"`
		LastError        string `json:"last_error"`
	} `json:"repair"`
}

// StorageStatus runs `strata storage status --json` against a running meta
// node (the leader when one is known).
func (c *Cluster) StorageStatus(ctx context.Context) (*StorageStatus, json.RawMessage, error) {
	addr, err := c.RunningMetaGRPC(ctx)
	if err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := c.Strata(cctx, "storage", "status", "--json", "--server", addr, "--timeout", "20s")
	if err != nil {
		return nil, nil, err
	}
	var st StorageStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, nil, fmt.Errorf("strata storage status --json: %w: %.300s", err, out)
	}
	return &st, json.RawMessage(out), nil
}

// repairDone says what keeps st from showing a fully repaired cluster, or "".
func repairDone(st *StorageStatus) string {
	for _, n := range st.Nodes {
		if n.State != "alive" {
			return fmt.Sprintf("storage node %s is %s", n.ID, n.State)
		}
	}
	r := st.Repair
	switch {
	case !r.Running:
		return "no repairer running (no leader?)"
	case r.QueueLength > 0:
		return fmt.Sprintf("%d segments on the repair queue", r.QueueLength)
	case r.PendingShards > 0:
		return fmt.Sprintf("%d shards on dead or draining nodes", r.PendingShards)
	case r.InProgress > 0:
		return fmt.Sprintf("%d segments being repaired", r.InProgress)
	}
	return ""
}

// WaitRepaired polls `strata storage status --json` until every storage
// node is alive, the repair queue is empty, no shard is on a dead node and
// nothing is being repaired, twice in a row a second apart; or until
// timeout. It returns the last status and, on timeout, why it is not done.
func (c *Cluster) WaitRepaired(ctx context.Context, timeout time.Duration) (*StorageStatus, json.RawMessage, time.Duration, error) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last *StorageStatus
	var raw json.RawMessage
	why := "no answer"
	good := 0
	for {
		st, r, err := c.StorageStatus(ctx)
		if err != nil {
			why, good = err.Error(), 0
		} else {
			last, raw = st, r
			if why = repairDone(st); why == "" {
				good++
				if good >= 2 {
					return last, raw, time.Since(began), nil
				}
			} else {
				good = 0
			}
		}
		select {
		case <-ctx.Done():
			return last, raw, time.Since(began), fmt.Errorf("repair not done after %v: %s", timeout, why)
		case <-time.After(time.Second):
		}
	}
}

// RedundancyReport is the ground truth of redundancy: every segment of the
// blobs checked, as the layouts describe it and the storage nodes hold it.
type RedundancyReport struct {
	Blobs    int `json:"blobs"`
	Segments int `json:"segments"`
	Shards   int `json:"shards"`
	// Verified shards were read in full by their node and checked against
	// their checksum; the others were looked up (size and checksum).
	Verified int `json:"shards_verified"`
	// Doubled counts segments with two shards on one node: repair puts a
	// second shard on a node when fewer healthy nodes remain than the
	// segment has shards, and nothing moves it back later.
	Doubled int `json:"segments_with_two_shards_on_a_node"`
	// BelowFull describes every segment with fewer than k+m good shards on
	// alive nodes.
	BelowFull []string `json:"below_full,omitempty"`
	// Errors are blobs whose layout could not be read.
	Errors []string `json:"errors,omitempty"`
}

// CheckRedundancy reads the layout of every blob in digests and checks each
// segment: k+m shards with distinct indices on storage nodes, each
// node alive, each shard there with the size and checksum the layout
// records (two shards may share a node: see Doubled). verify names segments whose shards are read in full and checked
// (the damaged ones); sample more shards are verified at random.
func (c *Cluster) CheckRedundancy(ctx context.Context, digests []string, verify map[string]bool, sample int, seed uint64) RedundancyReport {
	var rep RedundancyReport
	storage := map[string]bool{}
	for _, id := range c.IDs(RoleStorage) {
		storage[id] = true
	}
	alive := map[string]bool{}
	if st, _, err := c.StorageStatus(ctx); err == nil {
		for _, n := range st.Nodes {
			alive[n.ID] = n.State == "alive"
		}
	}
	slices.Sort(digests)
	digests = slices.Compact(digests)
	rep.Blobs = len(digests)
	r := rand.New(rand.NewPCG(seed, 0xc4ec))
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	jobs := make(chan string)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range jobs {
				c.checkBlobRedundancy(ctx, d, storage, alive, verify, sample, len(digests), r, &mu, &rep)
			}
		}()
	}
	for _, d := range digests {
		jobs <- d
	}
	close(jobs)
	wg.Wait()
	slices.Sort(rep.BelowFull)
	slices.Sort(rep.Errors)
	return rep
}

func (c *Cluster) checkBlobRedundancy(ctx context.Context, dgst string, storage, alive, verify map[string]bool, sample, blobs int,
	r *rand.Rand, mu *sync.Mutex, rep *RedundancyReport) {
	var layoutErr error
	for attempt := 0; attempt < 3; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		layout, err := c.meta.Blob(cctx, dgst)
		cancel()
		if err != nil {
			layoutErr = err
			time.Sleep(time.Second)
			continue
		}
		for i, seg := range layout.Segments {
			var problems []string
			doubled := false
			want := int(seg.K + seg.M)
			if len(seg.Shards) != want {
				problems = append(problems, fmt.Sprintf("%d shards recorded, want k+m = %d", len(seg.Shards), want))
			}
			idx, nodes := map[uint32]bool{}, map[string]bool{}
			for _, ref := range seg.Shards {
				switch {
				case idx[ref.Index]:
					problems = append(problems, fmt.Sprintf("index %d twice", ref.Index))
				case ref.Index >= uint32(want):
					problems = append(problems, fmt.Sprintf("index %d out of range", ref.Index))
				}
				idx[ref.Index] = true
				if nodes[ref.Node] {
					doubled = true // repaired while fewer nodes were alive: allowed
				}
				nodes[ref.Node] = true
				if !storage[ref.Node] || !alive[ref.Node] {
					problems = append(problems, fmt.Sprintf("shard %d on %s, which is not an alive storage node", ref.Index, ref.Node))
					continue
				}
				mu.Lock()
				full := verify[seg.Id] || (sample > 0 && r.IntN(max(blobs*3, 1)) < sample)
				mu.Unlock()
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				var ok bool
				var why string
				if full {
					ok, why = c.verifyShard(cctx, seg, ref)
				} else {
					ok, why = c.statShard(cctx, seg, ref)
				}
				cancel()
				mu.Lock()
				rep.Shards++
				if full {
					rep.Verified++
				}
				mu.Unlock()
				if !ok {
					problems = append(problems, fmt.Sprintf("shard %d on %s: %s", ref.Index, ref.Node, why))
				}
			}
			mu.Lock()
			rep.Segments++
			if doubled {
				rep.Doubled++
			}
			if len(problems) > 0 {
				rep.BelowFull = append(rep.BelowFull, fmt.Sprintf("blob %s segment %d/%d (%s, k=%d m=%d): %v",
					dgst, i+1, len(layout.Segments), seg.Id, seg.K, seg.M, problems))
			}
			mu.Unlock()
		}
		return
	}
	mu.Lock()
	rep.Errors = append(rep.Errors, fmt.Sprintf("layout of %s: %v", dgst, layoutErr))
	mu.Unlock()
}
