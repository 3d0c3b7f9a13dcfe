package blobstore_test

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/strata-registry/strata/blobstore"
)

func testNodes(n int, zones int, free uint64) []blobstore.NodeInfo {
	var nodes []blobstore.NodeInfo
	for i := range n {
		zone := ""
		if zones > 0 {
			zone = fmt.Sprintf("z%d", i%zones)
		}
		nodes = append(nodes, blobstore.NodeInfo{ID: fmt.Sprintf("node-%02d", i), Zone: zone, Free: free})
	}
	return nodes
}

func ids(nodes []blobstore.NodeInfo) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.ID)
	}
	return out
}

func TestPlaceDeterministicAndDistinct(t *testing.T) {
	nodes := testNodes(12, 0, 1<<40)
	reversed := make([]blobstore.NodeInfo, len(nodes))
	for i, n := range nodes {
		reversed[len(nodes)-1-i] = n
	}
	for s := range 200 {
		seg := fmt.Sprintf("seg%d", s)
		a, err := blobstore.Place(seg, nodes, 6)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := blobstore.Place(seg, reversed, 6)
		if fmt.Sprint(ids(a)) != fmt.Sprint(ids(b)) {
			t.Fatalf("%s: placement depends on input order: %v vs %v", seg, ids(a), ids(b))
		}
		seen := map[string]bool{}
		for _, n := range a {
			if seen[n.ID] {
				t.Fatalf("%s: node %s chosen twice", seg, n.ID)
			}
			seen[n.ID] = true
		}
	}
}

func TestPlaceNotEnoughNodes(t *testing.T) {
	nodes := testNodes(3, 0, 100)
	nodes = append(nodes, nodes[0]) // a duplicate counts once
	got, err := blobstore.Place("seg", nodes, 5)
	if !errors.Is(err, blobstore.ErrNotEnoughNodes) || len(got) != 3 {
		t.Fatalf("Place of 5 on 3 nodes = %v, %v", ids(got), err)
	}
	if got, err := blobstore.Place("seg", nil, 1); !errors.Is(err, blobstore.ErrNotEnoughNodes) || len(got) != 0 {
		t.Fatalf("Place on no nodes = %v, %v", got, err)
	}
}

func TestPlaceSpreadsZones(t *testing.T) {
	// 9 nodes in 3 zones, heavily skewed weights: zones still come first.
	skewed := testNodes(9, 3, 1<<30)
	skewed[0].Free = 1 << 50
	skewed[3].Free = 1 << 50 // also in z0
	t.Run("skewed", func(t *testing.T) { testSpreadsZones(t, skewed) })
	// Nodes that do not report free space are spread the same way.
	t.Run("unknown free", func(t *testing.T) { testSpreadsZones(t, testNodes(9, 3, 0)) })
}

func testSpreadsZones(t *testing.T, nodes []blobstore.NodeInfo) {
	for s := range 300 {
		got, err := blobstore.Place(fmt.Sprintf("seg%d", s), nodes, 3)
		if err != nil {
			t.Fatal(err)
		}
		zones := map[string]bool{}
		for _, n := range got {
			zones[n.Zone] = true
		}
		if len(zones) != 3 {
			t.Fatalf("3 shards over 3 zones landed in %d zones: %v", len(zones), got)
		}
		// With 6 shards each zone gets two.
		got, _ = blobstore.Place(fmt.Sprintf("seg%d", s), nodes, 6)
		count := map[string]int{}
		for i, n := range got {
			count[n.Zone]++
			if i < 3 && count[n.Zone] > 1 {
				t.Fatalf("the first three places repeat a zone: %v", got)
			}
		}
		for z, c := range count {
			if c != 2 {
				t.Fatalf("zone %s got %d of 6 shards: %v", z, c, got)
			}
		}
	}
}

func TestPlaceWeighted(t *testing.T) {
	// Free space 1:2:3:4: the first choice should follow it.
	nodes := []blobstore.NodeInfo{{ID: "a", Free: 100}, {ID: "b", Free: 200}, {ID: "c", Free: 300}, {ID: "d", Free: 400}}
	const trials = 20000
	wins := map[string]int{}
	for s := range trials {
		got, _ := blobstore.Place(fmt.Sprintf("segment-%d", s), nodes, 1)
		wins[got[0].ID]++
	}
	for _, n := range nodes {
		want := float64(n.Free) / 1000 * trials
		if diff := math.Abs(float64(wins[n.ID]) - want); diff > 0.05*trials {
			t.Errorf("node %s (free %d) won %d of %d, want about %.0f", n.ID, n.Free, wins[n.ID], trials, want)
		}
	}
	// A node with no free space is chosen only when there is nothing else.
	full := append([]blobstore.NodeInfo{{ID: "full", Free: 0}}, nodes...)
	for s := range 1000 {
		got, _ := blobstore.Place(fmt.Sprintf("s%d", s), full, 4)
		for _, n := range got {
			if n.ID == "full" {
				t.Fatalf("a full node was chosen while others had room: %v", ids(got))
			}
		}
	}
}

func TestPlaceMinimalMovement(t *testing.T) {
	nodes := testNodes(10, 0, 1<<40)
	grown := append(testNodes(10, 0, 1<<40), blobstore.NodeInfo{ID: "new", Free: 1 << 40})
	const segs, n = 3000, 3
	moved := 0
	for s := range segs {
		seg := fmt.Sprintf("seg%d", s)
		before, _ := blobstore.Place(seg, nodes, n)
		after, _ := blobstore.Place(seg, grown, n)
		inBefore := map[string]bool{}
		for _, x := range before {
			inBefore[x.ID] = true
		}
		var added []string
		for _, x := range after {
			if !inBefore[x.ID] {
				added = append(added, x.ID)
			}
		}
		switch {
		case len(added) == 0:
		case len(added) == 1 && added[0] == "new":
			moved++
		default:
			t.Fatalf("%s: adding a node moved shards between old nodes: %v -> %v", seg, ids(before), ids(after))
		}
	}
	// The new node should win about n/11 of all places.
	if frac, want := float64(moved)/segs, float64(n)/11; math.Abs(frac-want) > 0.05 {
		t.Errorf("adding 1 node to 10 moved %.3f of segments, want about %.3f", frac, want)
	}
}

func TestPlacePrefix(t *testing.T) {
	nodes := testNodes(20, 4, 1<<30)
	for i := range nodes {
		nodes[i].Free += uint64(i) << 28
	}
	for s := range 100 {
		seg := fmt.Sprintf("seg%d", s)
		all, err := blobstore.Place(seg, nodes, len(nodes))
		if err != nil {
			t.Fatal(err)
		}
		for n := 1; n < len(nodes); n++ {
			got, _ := blobstore.Place(seg, nodes, n)
			if fmt.Sprint(ids(got)) != fmt.Sprint(ids(all[:n])) {
				t.Fatalf("%s: Place(%d) = %v is not a prefix of Place(all) = %v", seg, n, ids(got), ids(all))
			}
		}
	}
}
