package blobstore

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/zeebo/blake3"
)

// ErrNotEnoughNodes is returned (wrapped) by Place when there are fewer
// nodes than shards to place.
var ErrNotEnoughNodes = errors.New("blobstore: not enough nodes")

// NodeInfo is what placement knows of a storage node.
type NodeInfo struct {
	ID   string
	Zone string // failure zone (rack, room, site); nodes with the same Zone fail together
	Free uint64 // free bytes; the node's weight
	// ReadOnly nodes serve the shards they hold but take no new ones (a
	// node being drained).
	ReadOnly bool
	// Full nodes said they have no room (a put refused with ErrNoSpace, or
	// a free space reported below what a shard needs): they take new
	// shards only when no other node can.
	Full bool
}

// Place chooses n distinct nodes for the shards of a segment, in shard
// order: shard i goes to the i-th node returned.
//
// It uses weighted rendezvous (highest random weight) hashing: every node
// scores -weight / ln(u), where u in (0,1) is a hash of the segment id and the
// node id and weight is the node's free space. A node then wins the first
// place with probability weight / total weight; the choice depends on
// nothing but the ids and weights, so every frontend computes the same one,
// and adding or removing a node moves only the places that node wins or held.
//
// Failure zones are spread evenly: places are filled in rounds, each round
// taking the best remaining node of every zone that still has one, in score
// order. So the first places go to distinct zones, and no zone holds more
// than its share. Nodes with no free space (Free == 0: full, or not known)
// come after all nodes with room, spread over zones the same way; when no
// node reports its free space, placement is plain rendezvous hashing.
// When there are fewer than n (distinct) nodes, Place returns them all, in
// that order, with an error wrapping ErrNotEnoughNodes: the caller decides
// whether that is enough. The first n nodes of Place(id, nodes, n2) for
// n2 > n are Place(id, nodes, n), so a longer list ranks spares.
func Place(segmentID string, nodes []NodeInfo, n int) ([]NodeInfo, error) {
	return PlaceFor(segmentID, nodes, n, 0)
}

// PlaceFor is Place for shards of need bytes each: nodes marked Full, and
// nodes whose known free space is below need, count as full (they come
// after every node with room).
func PlaceFor(segmentID string, nodes []NodeInfo, n int, need uint64) ([]NodeInfo, error) {
	if n <= 0 {
		return nil, nil
	}
	seen := make(map[string]bool, len(nodes))
	var roomy, full []scored
	for _, nd := range nodes {
		if seen[nd.ID] {
			continue
		}
		seen[nd.ID] = true
		c := scored{nd, hrwScore(segmentID, nd.ID, nd.Free)}
		if nd.Free == 0 || nd.Full || nd.Free < need {
			full = append(full, c)
		} else {
			roomy = append(roomy, c)
		}
	}
	out := make([]NodeInfo, 0, min(n, len(roomy)+len(full)))
	out = spreadZones(out, roomy, n)
	out = spreadZones(out, full, n)
	if len(out) < n {
		return out, fmt.Errorf("%w: %d shards, %d nodes", ErrNotEnoughNodes, n, len(out))
	}
	return out, nil
}

type scored struct {
	NodeInfo
	score float64
}

// byScore orders the best score first, ties by node id.
func byScore(a, b scored) int {
	if c := cmp.Compare(b.score, a.score); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// spreadZones appends to out, until it holds n nodes, the candidates dealt
// out in rounds: each round takes the best remaining node of every zone that
// still has one, in score order.
func spreadZones(out []NodeInfo, cands []scored, n int) []NodeInfo {
	slices.SortFunc(cands, byScore)
	// Group by zone, each zone's nodes in score order.
	var zones [][]scored
	zoneIdx := make(map[string]int)
	for _, c := range cands {
		i, ok := zoneIdx[c.Zone]
		if !ok {
			i = len(zones)
			zoneIdx[c.Zone] = i
			zones = append(zones, nil)
		}
		zones[i] = append(zones[i], c)
	}
	var round []scored
	for r := 0; len(out) < n; r++ {
		round = round[:0]
		for _, z := range zones {
			if r < len(z) {
				round = append(round, z[r])
			}
		}
		if len(round) == 0 {
			break
		}
		slices.SortFunc(round, byScore)
		for _, c := range round {
			if len(out) == n {
				break
			}
			out = append(out, c.NodeInfo)
		}
	}
	return out
}

// hrwScore is the weighted rendezvous score of a node for a segment.
func hrwScore(segmentID, nodeID string, free uint64) float64 {
	h := blake3.New()
	var lens [16]byte // length-prefix both ids so ("ab","c") and ("a","bc") differ
	binary.LittleEndian.PutUint64(lens[:8], uint64(len(segmentID)))
	binary.LittleEndian.PutUint64(lens[8:], uint64(len(nodeID)))
	h.Write(lens[:])
	h.WriteString(segmentID)
	h.WriteString(nodeID)
	var sum [8]byte
	h.Digest().Read(sum[:])
	// 53 random bits, mapped into the open interval (0, 1).
	u := (float64(binary.LittleEndian.Uint64(sum[:])>>11) + 0.5) / (1 << 53)
	return -float64(max(free, 1)) / math.Log(u)
}
