package api

import (
	"context"
	"sync"
	"time"

	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// pullRecorder remembers when manifests were last pulled (for lifecycle
// rules on sinceImagePulled) and writes them through Raft in one batched
// command per flush interval, never one write per pull.
type pullRecorder struct {
	mu      sync.Mutex
	pending map[[2]string]int64 // repo, digest -> last pull
}

const (
	pullFlushInterval = 10 * time.Second
	maxPendingPulls   = 100000 // beyond this, pulls of new images wait for the next flush
)

func (p *pullRecorder) record(repo, dgst string) {
	now := time.Now().UnixNano()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending == nil {
		p.pending = map[[2]string]int64{}
	}
	key := [2]string{repo, dgst}
	if _, ok := p.pending[key]; ok || len(p.pending) < maxPendingPulls {
		p.pending[key] = now
	}
}

func (p *pullRecorder) take() *pb.RecordPulls {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pending) == 0 {
		return nil
	}
	c := &pb.RecordPulls{}
	for k, t := range p.pending {
		c.Pulls = append(c.Pulls, &pb.Pull{Repo: k[0], Digest: k[1], TimeUnixNano: t})
	}
	p.pending = nil
	return c
}

// Run does the server's background work (flushing pull times) until ctx
// ends, then flushes once more.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(pullFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s.flushPulls(fctx)
			cancel()
			return
		case <-t.C:
			s.flushPulls(ctx)
		}
	}
}

func (s *Server) flushPulls(ctx context.Context) {
	c := s.pulls.take()
	if c == nil {
		return
	}
	if err := s.propose(ctx, &pb.Command{Op: &pb.Command_RecordPulls{RecordPulls: c}}); err != nil {
		s.log.Warn("recording pull times", "pulls", len(c.Pulls), "err", err)
	}
}
