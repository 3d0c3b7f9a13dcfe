package blobstore_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/strata-registry/strata/blobstore"
)

func TestFaulty(t *testing.T) {
	f := blobstore.NewFaulty(openLocal(t))
	a := blobstore.ShardID{Segment: "aa", Index: 0}
	b := blobstore.ShardID{Segment: "bb", Index: 1}
	putShard(t, f, a, []byte("alpha"))
	putShard(t, f, b, []byte("bravo"))

	boom := errors.New("boom")
	remove := f.Inject(blobstore.Fault{Op: blobstore.OpGet, Match: blobstore.ShardIs(a), Err: boom})
	if _, err := f.Get(bg, a); !errors.Is(err, boom) {
		t.Fatalf("Get of a failed shard = %v", err)
	}
	if got, err := f.Get(bg, b); err != nil || string(got) != "bravo" {
		t.Fatalf("Get of another shard = %q, %v", got, err)
	}
	if _, err := f.Stat(bg, a); err != nil {
		t.Fatalf("Stat is not a Get: %v", err)
	}
	remove()
	if _, err := f.Get(bg, a); err != nil {
		t.Fatalf("Get after the fault is removed: %v", err)
	}

	// Times limits the firings.
	f.Inject(blobstore.Fault{Op: blobstore.OpPut, Times: 2})
	for i, wantErr := range []bool{true, true, false} {
		err := f.Put(bg, blobstore.ShardID{Segment: "cc", Index: uint32(i)}, []byte("x"), sum("x"))
		if (err != nil) != wantErr || err != nil && !errors.Is(err, blobstore.ErrInjected) {
			t.Fatalf("Put %d = %v", i, err)
		}
	}

	// Corrupt flips a byte of what Get returns, not what is stored.
	f.Inject(blobstore.Fault{Op: blobstore.OpGet, Match: blobstore.SegmentIs("bb"), Corrupt: true, Times: 1})
	if got, err := f.Get(bg, b); err != nil || bytes.Equal(got, []byte("bravo")) || len(got) != 5 {
		t.Fatalf("corrupted Get = %q, %v", got, err)
	}
	if got, _ := f.Get(bg, b); string(got) != "bravo" {
		t.Fatalf("the stored shard changed: %q", got)
	}

	// Stall blocks until the context ends.
	f.Inject(blobstore.Fault{Op: blobstore.OpDelete, Stall: true})
	ctx, cancel := context.WithTimeout(bg, 20*time.Millisecond)
	defer cancel()
	if err := f.Delete(ctx, a); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stalled Delete = %v", err)
	}

	// Delay without Err slows a call down and lets it through.
	f.Clear()
	f.Inject(blobstore.Fault{Op: blobstore.OpGet, Delay: 10 * time.Millisecond})
	start := time.Now()
	if _, err := f.Get(bg, a); err != nil || time.Since(start) < 10*time.Millisecond {
		t.Fatalf("delayed Get = %v after %v", err, time.Since(start))
	}

	// Down fails everything until up.
	f.Clear()
	up := f.Down()
	if _, err := f.Usage(bg); !errors.Is(err, blobstore.ErrInjected) {
		t.Fatalf("Usage of a down store = %v", err)
	}
	if _, err := f.List(bg, "", 0); !errors.Is(err, blobstore.ErrInjected) {
		t.Fatalf("List of a down store = %v", err)
	}
	up()
	if _, err := f.List(bg, "", 0); err != nil {
		t.Fatal(err)
	}
	if f.Calls(blobstore.OpGet) == 0 || f.Calls(blobstore.OpAny) <= f.Calls(blobstore.OpGet) {
		t.Fatalf("Calls: get %d, any %d", f.Calls(blobstore.OpGet), f.Calls(blobstore.OpAny))
	}
}
