package cluster

import (
	"context"
	"errors"
	"testing"
	"time"
)

// stuckFuture is a Raft future that is never answered, as a verification of
// leadership can be when Raft shuts down with it in flight.
type stuckFuture struct{ never chan struct{} }

func (f stuckFuture) Error() error { <-f.never; return nil }

type doneFuture struct{ err error }

func (f doneFuture) Error() error { return f.err }

// A read waits for the verification of leadership only while its context
// lasts: an unanswered future ends in ErrNoLeader (which callers retry
// elsewhere), not in a request that hangs for good.
func TestWaitFutureEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	open := make(chan struct{})
	if err := waitFuture(ctx, open, stuckFuture{make(chan struct{})}); !errors.Is(err, ErrNoLeader) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered verification: %v", err)
	}
	want := errors.New("leadership lost")
	if err := waitFuture(context.Background(), open, doneFuture{want}); !errors.Is(err, want) {
		t.Fatalf("answered verification: %v", err)
	}
	if err := waitFuture(context.Background(), open, doneFuture{}); err != nil {
		t.Fatalf("verified: %v", err)
	}
	// Closing the node ends every wait, whatever the context.
	closed := make(chan struct{})
	close(closed)
	if err := waitFuture(context.Background(), closed, stuckFuture{make(chan struct{})}); !errors.Is(err, ErrShutdown) {
		t.Fatalf("unanswered future on a closed node: %v", err)
	}
}
