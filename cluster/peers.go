package cluster

import (
	"crypto/tls"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"

	cpb "github.com/strata-registry/strata/cluster/clusterpb"
)

// Peers caches gRPC connections to other nodes, by address, and knows the
// seed addresses of meta nodes given at start (--join).
type Peers struct {
	tls *tls.Config // nil: plaintext (dev and tests)

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	seeds []string
}

// NewPeers returns a connection cache. tlsConf, when set, is used for
// mutual TLS on every connection.
func NewPeers(seeds []string, tlsConf *tls.Config) *Peers {
	return &Peers{tls: tlsConf, conns: map[string]*grpc.ClientConn{}, seeds: append([]string(nil), seeds...)}
}

// Seeds are the meta nodes to ask when no leader is known.
func (p *Peers) Seeds() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seeds...)
}

// SetSeeds replaces the seed list (for example with every meta node of the
// registry once it is known).
func (p *Peers) SetSeeds(seeds []string) {
	if len(seeds) == 0 {
		return
	}
	p.mu.Lock()
	p.seeds = append([]string(nil), seeds...)
	p.mu.Unlock()
}

// Conn returns a (shared, lazily connecting) connection to addr.
func (p *Peers) Conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	creds := insecure.NewCredentials()
	if p.tls != nil {
		creds = credentials.NewTLS(p.tls)
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithDisableServiceConfig(), // no DNS TXT lookups per connection
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)),
		experimental.WithBufferPool(grpcBuffers),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

// Client returns a Cluster client for addr.
func (p *Peers) Client(addr string) (cpb.ClusterClient, error) {
	c, err := p.Conn(addr)
	if err != nil {
		return nil, err
	}
	return cpb.NewClusterClient(c), nil
}

// Close closes every connection.
func (p *Peers) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
		delete(p.conns, a)
	}
	return nil
}

// MaxMessageSize bounds one gRPC message between nodes: manifests are at
// most 4 MiB, and a proposal carries one with its references.
const MaxMessageSize = 64 << 20
