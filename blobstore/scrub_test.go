package blobstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-registry/strata/blobstore"
)

// putShards puts n shards of the given size (plus i bytes for shard i) and
// returns their ids in order and their total payload.
func putShards(t *testing.T, s blobstore.ShardStore, n, size int) ([]blobstore.ShardID, int64) {
	t.Helper()
	var ids []blobstore.ShardID
	var total int64
	for i := range n {
		id := blobstore.ShardID{Segment: fmt.Sprintf("%02xscrub%03d", i*41%256, i), Index: uint32(i % 6)}
		data := randomData(uint64(i), size+i)
		if err := s.Put(bg, id, data, blake3.Sum256(data)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		total += int64(len(data))
	}
	return ids, total
}

// waitFor polls cond until it holds or 10 s have passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestScrubberFindsCorruptShards(t *testing.T) {
	s := openLocal(t)
	ids, total := putShards(t, s, 30, 300<<10) // some shards span several read chunks
	payloadBad, headerBad := ids[7], ids[22]
	flipByte(t, s.ShardPath(payloadBad), 64+280<<10)
	flipByte(t, s.ShardPath(headerBad), 10) // the shard index in the header

	var mu sync.Mutex
	reported := map[blobstore.ShardID]error{}
	sc := blobstore.NewScrubber(s, blobstore.ScrubConfig{
		BytesPerSecond: 1 << 30,
		Pause:          time.Hour,
		PageSize:       7,
		OnCorrupt: func(id blobstore.ShardID, err error) {
			mu.Lock()
			defer mu.Unlock()
			if _, dup := reported[id]; dup {
				t.Errorf("%s reported twice", id)
			}
			reported[id] = err
		},
	})
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	waitFor(t, "a scrub pass", func() bool { return sc.Stats().Passes >= 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 2 {
		t.Errorf("reported %d shards, want 2: %v", len(reported), reported)
	}
	for _, id := range []blobstore.ShardID{payloadBad, headerBad} {
		if err := reported[id]; !errors.Is(err, blobstore.ErrShardCorrupt) {
			t.Errorf("%s: reported %v, want ErrShardCorrupt", id, err)
		}
	}
	st := sc.Stats()
	headerBadSize := int64(300<<10 + 22)
	if st.Passes != 1 || st.ShardsChecked != 30 || st.CorruptFound != 2 || st.BytesChecked != total-headerBadSize {
		t.Errorf("Stats = %+v, want 1 pass, 30 shards, 2 corrupt, %d bytes (all but the shard with a bad header)", st, total-headerBadSize)
	}
	if st.LastPassEnd.IsZero() || st.LastPassDuration <= 0 || st.LastError != nil {
		t.Errorf("Stats = %+v, want the last pass's time and no error", st)
	}

	// LocalStore.Verify agrees shard by shard.
	for _, id := range ids {
		info, err := s.Verify(bg, id)
		if bad := id == payloadBad || id == headerBad; bad != errors.Is(err, blobstore.ErrShardCorrupt) || !bad && err != nil {
			t.Errorf("Verify(%s) = %v", id, err)
		}
		if info.ID != id {
			t.Errorf("Verify(%s) describes %s", id, info.ID)
		}
	}
	if _, err := s.Verify(bg, blobstore.ShardID{Segment: "nothere", Index: 0}); !errors.Is(err, blobstore.ErrShardNotFound) {
		t.Errorf("Verify of a missing shard = %v", err)
	}
}

func TestScrubberRateIsBounded(t *testing.T) {
	s := openLocal(t)
	putShards(t, s, 20, 1<<20) // 20 MiB
	sc := blobstore.NewScrubber(s, blobstore.ScrubConfig{BytesPerSecond: 1 << 20, Pause: -1})
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	time.Sleep(time.Second)
	st := sc.Stats()
	cancel()
	t.Logf("checked %d bytes in about 1 s at 1 MiB/s", st.BytesChecked)
	// 1 MiB/s for 1 s, plus the bucket's burst: loosely, well under 5 MiB.
	if st.BytesChecked >= 5<<20 {
		t.Errorf("checked %d bytes in 1 s at 1 MiB/s", st.BytesChecked)
	}
	if st.BytesChecked == 0 {
		t.Error("checked nothing in 1 s")
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop after its context was cancelled")
	}
}

func TestScrubberSkipsDeletedAndStopsOnClose(t *testing.T) {
	s := openLocal(t)
	putShards(t, s, 10, 1000)
	listed, err := s.List(bg, "", 0)
	if err != nil || len(listed) != 10 {
		t.Fatal(listed, err)
	}
	bad, gone := listed[2].ID, listed[5].ID
	flipByte(t, s.ShardPath(bad), 64+500)
	var reported []blobstore.ShardID
	sc := blobstore.NewScrubber(s, blobstore.ScrubConfig{
		BytesPerSecond: -1,
		Pause:          -1,
		PageSize:       10,
		OnCorrupt: func(id blobstore.ShardID, _ error) {
			reported = append(reported, id)
			// A shard deleted after it was listed is skipped, not reported.
			if err := s.Delete(bg, gone); err != nil {
				t.Error(err)
			}
		},
	})
	if err := sc.Pass(bg); err != nil {
		t.Fatal(err)
	}
	if len(reported) != 1 || reported[0] != bad || sc.Stats().ShardsChecked != 9 {
		t.Fatalf("reported %v, stats %+v; want %s reported and 9 shards checked", reported, sc.Stats(), bad)
	}
	s.Close()
	done := make(chan error, 1)
	go func() { done <- sc.Run(bg) }()
	select {
	case err := <-done:
		if !errors.Is(err, blobstore.ErrClosed) {
			t.Fatalf("Run on a closed store = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run on a closed store did not return")
	}
	if st := sc.Stats(); !errors.Is(st.LastError, blobstore.ErrClosed) {
		t.Fatalf("Stats().LastError = %v", st.LastError)
	}
}
