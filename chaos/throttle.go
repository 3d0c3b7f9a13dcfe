package chaos

import (
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// limiter paces a byte stream shared by several writers to a rate.
type limiter struct {
	mu   sync.Mutex
	rate float64 // bytes per second
	next time.Time
}

// wait blocks until n more bytes may go, or ctx ends.
func (l *limiter) wait(ctx context.Context, n int) error {
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	d := l.next.Sub(now)
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	l.mu.Unlock()
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// throttledTransport paces the request bodies of all its requests together,
// like clients on a network link slower than the server's disks: uploads
// then last long enough for a kill to land in the middle of them. It also
// counts the body bytes actually sent.
type throttledTransport struct {
	base http.RoundTripper
	lim  *limiter // nil: no pacing
	sent *atomic.Int64
}

func (t *throttledTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return t.base.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	r.Body = &throttledBody{ctx: req.Context(), rc: req.Body, lim: t.lim, sent: t.sent}
	r.GetBody = nil
	return t.base.RoundTrip(r)
}

type throttledBody struct {
	ctx  context.Context
	rc   io.ReadCloser
	lim  *limiter
	sent *atomic.Int64
}

const throttleQuantum = 64 << 10

func (b *throttledBody) Read(p []byte) (int, error) {
	if len(p) > throttleQuantum {
		p = p[:throttleQuantum]
	}
	n, err := b.rc.Read(p)
	if n > 0 && b.sent != nil {
		b.sent.Add(int64(n))
	}
	if n > 0 && b.lim != nil {
		if werr := b.lim.wait(b.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

func (b *throttledBody) Close() error { return b.rc.Close() }
