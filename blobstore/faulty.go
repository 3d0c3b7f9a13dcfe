package blobstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrInjected is the error a Faulty store returns for a fault with no Err of its own.
var ErrInjected = errors.New("blobstore: injected fault")

// Op names a ShardStore method for fault injection.
type Op uint8

// The operations a Fault can match. OpAny matches all of them.
const (
	OpAny Op = iota
	OpPut
	OpGet
	OpDelete
	OpStat
	OpList
	OpUsage
	numOps
)

var opNames = [numOps]string{"any", "put", "get", "delete", "stat", "list", "usage"}

func (o Op) String() string {
	if o < numOps {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Fault describes a failure a Faulty store injects into the calls it
// matches. A matched call first waits Delay (or until ctx is done), then:
//   - Stall: blocks until ctx is done and returns ctx.Err();
//   - Corrupt: goes through, and for Get one byte of the returned payload is
//     flipped, as bitrot the store did not notice would;
//   - Delay set and Err nil: goes through, late (a slow node);
//   - otherwise: fails with Err, or ErrInjected when Err is nil, without
//     reaching the wrapped store. So Fault{} fails every call.
type Fault struct {
	Op    Op                 // the method to fail; OpAny for all
	Match func(ShardID) bool // which shards; nil for all (List and Usage name no shard and match only a nil Match)
	Times int                // how many matching calls to fail; 0 for every one

	Err     error
	Corrupt bool
	Stall   bool
	Delay   time.Duration
}

// ShardIs returns a Fault.Match that matches one shard.
func ShardIs(id ShardID) func(ShardID) bool {
	return func(x ShardID) bool { return x == id }
}

// SegmentIs returns a Fault.Match that matches every shard of a segment.
func SegmentIs(segment string) func(ShardID) bool {
	return func(x ShardID) bool { return x.Segment == segment }
}

// Faulty wraps a ShardStore and injects faults into chosen calls, for tests
// of what sits above a store: the naughty disk of a chaos test. With no
// faults it behaves exactly as the store it wraps. It is safe for concurrent
// use, and faults may be added and removed while calls are in flight.
type Faulty struct {
	ShardStore

	mu     sync.Mutex
	faults []*faultState
	calls  [numOps]int
}

type faultState struct {
	Fault
	left int // remaining firings when Times > 0
}

var _ ShardReaderInto = (*Faulty)(nil)

// NewFaulty wraps s.
func NewFaulty(s ShardStore) *Faulty { return &Faulty{ShardStore: s} }

// Inject adds a fault and returns a function that removes it.
func (f *Faulty) Inject(fault Fault) (remove func()) {
	st := &faultState{Fault: fault, left: fault.Times}
	f.mu.Lock()
	f.faults = append(f.faults, st)
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, x := range f.faults {
			if x == st {
				f.faults = append(f.faults[:i], f.faults[i+1:]...)
				return
			}
		}
	}
}

// Down makes every call fail with ErrInjected, as a dead node; it returns the
// function that brings the store back.
func (f *Faulty) Down() (up func()) { return f.Inject(Fault{}) }

// Clear removes every fault.
func (f *Faulty) Clear() {
	f.mu.Lock()
	f.faults = nil
	f.mu.Unlock()
}

// Calls returns how many calls of op the store has seen (OpAny: all calls),
// failed ones included.
func (f *Faulty) Calls(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if op == OpAny {
		n := 0
		for _, c := range f.calls {
			n += c
		}
		return n
	}
	return f.calls[op]
}

// match counts the call and returns the first fault it triggers, if any.
func (f *Faulty) match(op Op, id *ShardID) *Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	for _, st := range f.faults {
		if st.Op != OpAny && st.Op != op {
			continue
		}
		if st.Match != nil && (id == nil || !st.Match(*id)) {
			continue
		}
		if st.Times > 0 {
			if st.left == 0 {
				continue
			}
			st.left--
		}
		fault := st.Fault
		return &fault
	}
	return nil
}

// before applies a fault before the call. It returns pass=true when the call
// should reach the wrapped store (possibly to be corrupted afterwards).
func (f *Faulty) before(ctx context.Context, fault *Fault, op Op) (pass bool, err error) {
	if fault == nil {
		return true, nil
	}
	if fault.Delay > 0 {
		t := time.NewTimer(fault.Delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		}
	}
	if fault.Stall {
		<-ctx.Done()
		return false, ctx.Err()
	}
	if fault.Corrupt || fault.Delay > 0 && fault.Err == nil {
		return true, nil
	}
	if fault.Err != nil {
		return false, fault.Err
	}
	return false, fmt.Errorf("%w: %s on %s", ErrInjected, op, f.NodeID())
}

// Put implements ShardStore.
func (f *Faulty) Put(ctx context.Context, id ShardID, data []byte, sum [32]byte) error {
	if pass, err := f.before(ctx, f.match(OpPut, &id), OpPut); !pass {
		return err
	}
	return f.ShardStore.Put(ctx, id, data, sum)
}

// Get implements ShardStore: GetInto a buffer of its own.
func (f *Faulty) Get(ctx context.Context, id ShardID) ([]byte, error) {
	return f.GetInto(ctx, id, nil)
}

// GetInto implements ShardReaderInto, with the OpGet faults: the wrapped
// store's GetInto when it has one, else its Get copied into dst (so a
// corrupting fault never changes the wrapped store's bytes).
func (f *Faulty) GetInto(ctx context.Context, id ShardID, dst []byte) ([]byte, error) {
	fault := f.match(OpGet, &id)
	if pass, err := f.before(ctx, fault, OpGet); !pass {
		return nil, err
	}
	var b []byte
	var err error
	if r, ok := f.ShardStore.(ShardReaderInto); ok {
		b, err = r.GetInto(ctx, id, dst)
	} else if b, err = f.ShardStore.Get(ctx, id); err == nil {
		b = append(dst[:0], b...)
	}
	if err == nil && fault != nil && fault.Corrupt && len(b) > 0 {
		b[len(b)/2] ^= 0x5a // the caller's buffer: corrupt it in place
	}
	return b, err
}

// Delete implements ShardStore.
func (f *Faulty) Delete(ctx context.Context, id ShardID) error {
	if pass, err := f.before(ctx, f.match(OpDelete, &id), OpDelete); !pass {
		return err
	}
	return f.ShardStore.Delete(ctx, id)
}

// Stat implements ShardStore.
func (f *Faulty) Stat(ctx context.Context, id ShardID) (ShardInfo, error) {
	if pass, err := f.before(ctx, f.match(OpStat, &id), OpStat); !pass {
		return ShardInfo{}, err
	}
	return f.ShardStore.Stat(ctx, id)
}

// List implements ShardStore.
func (f *Faulty) List(ctx context.Context, after string, limit int) ([]ShardInfo, error) {
	if pass, err := f.before(ctx, f.match(OpList, nil), OpList); !pass {
		return nil, err
	}
	return f.ShardStore.List(ctx, after, limit)
}

// Usage implements ShardStore.
func (f *Faulty) Usage(ctx context.Context) (Usage, error) {
	if pass, err := f.before(ctx, f.match(OpUsage, nil), OpUsage); !pass {
		return Usage{}, err
	}
	return f.ShardStore.Usage(ctx)
}
