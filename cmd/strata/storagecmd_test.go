package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

func TestDrainProgress(t *testing.T) {
	for _, tc := range []struct {
		total, left uint64
		took        time.Duration
		want        []string
	}{
		{100, 100, 0, []string{"[------------------------------]   0%", "0/100 shards moved, 100 left"}},
		{100, 25, 3 * time.Second, []string{"[######################--------]  75%", "75/100", "25 left", "(25 shards/s, about 1s to go)"}},
		{10, 0, time.Second, []string{"[##############################] 100%", "10/10"}},
		{0, 0, 0, []string{"100%", "0/0"}},
		{5, 9, 0, []string{"  0%", "0/5 shards moved, 9 left"}}, // more than the caller's total: never negative
	} {
		got := drainProgress(tc.total, tc.left, tc.took)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("drainProgress(%d, %d, %v) = %q, want it to contain %q", tc.total, tc.left, tc.took, got, w)
			}
		}
	}
}

func TestStorageStatusOutput(t *testing.T) {
	now := time.Now().UnixNano()
	st := &cpb.StatusResponse{
		Leader: "m1", RepairQueueLength: 3,
		Members: []*cpb.Member{
			{Node: &pb.NodeRecord{Id: "m1", Roles: []string{"meta"}}},
			{Node: &pb.NodeRecord{Id: "s2", Roles: []string{"storage"}, State: "draining", Zone: "z2"}, ShardCount: 7,
				LastHeartbeatUnixNano: now, UsedBytes: 2 << 20, FreeBytes: 1 << 30, CapacityBytes: 2 << 30},
			{Node: &pb.NodeRecord{Id: "s1", Roles: []string{"storage", "api"}, State: "alive", Zone: "z1"}, ShardCount: 9},
		},
		Repair: &cpb.RepairStatus{Running: true, PendingShards: 7, SegmentsRepaired: 4, ShardsMoved: 2, ShardsRebuilt: 2, LastError: "boom"},
	}
	ss := toStorageStatus(st)
	if len(ss.Nodes) != 2 || ss.Nodes[0].ID != "s1" || ss.Nodes[1].Shards != 7 || ss.Repair.QueueLength != 3 || ss.Repair.PendingShards != 7 {
		t.Fatalf("storage status %+v", ss)
	}
	var out bytes.Buffer
	printStorageStatus(&out, ss, true)
	for _, w := range []string{"s2  draining  z2", "2.0 MiB", "repair queue: 3 segments", "shards on dead/draining nodes: 7",
		"running on the leader m1", "4 segments repaired, 2 shards rebuilt, 2 moved", "last failure: boom"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, out.String())
		}
	}
	if strings.Contains(out.String(), "m1  ") {
		t.Errorf("a meta-only node is listed:\n%s", out.String())
	}
}
