package cluster

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Bridge is Raft's stream layer over TCP with a switch: links to chosen
// peers can be cut and healed, to partition a node in tests and chaos runs
// (the pattern of etcd's integration bridge). Cutting a link refuses new
// dials to the peer and closes the connections open to it. Cut both ends
// (each node's Bridge) for a symmetric partition.
type Bridge struct {
	net.Listener
	advertise net.Addr // what peers are told to dial; the listener's address if nil

	mu      sync.Mutex
	blocked map[raft.ServerAddress]bool
	conns   map[raft.ServerAddress]map[net.Conn]bool
}

// Addr is the address peers dial: the advertised one when set.
func (b *Bridge) Addr() net.Addr {
	if b.advertise != nil {
		return b.advertise
	}
	return b.Listener.Addr()
}

// Advertise makes the node known to its peers by addr (host:port, where host
// may be a DNS name) instead of the address it listens on.
func (b *Bridge) Advertise(addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("cluster: advertised raft address %q: %w", addr, err)
	}
	b.advertise = namedAddr(addr)
	return nil
}

// namedAddr is a TCP address that may name its host.
type namedAddr string

func (a namedAddr) Network() string { return "tcp" }
func (a namedAddr) String() string  { return string(a) }

// ErrLinkCut is returned when dialling a peer whose link is cut.
var ErrLinkCut = errors.New("cluster: link cut")

// NewBridge listens on addr.
func NewBridge(addr string) (*Bridge, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &Bridge{Listener: ln, blocked: map[raft.ServerAddress]bool{}, conns: map[raft.ServerAddress]map[net.Conn]bool{}}, nil
}

// Dial connects to a peer unless its link is cut.
func (b *Bridge) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	b.mu.Lock()
	cut := b.blocked[address]
	b.mu.Unlock()
	if cut {
		return nil, ErrLinkCut
	}
	c, err := net.DialTimeout("tcp", string(address), timeout)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.blocked[address] {
		c.Close()
		return nil, ErrLinkCut
	}
	if b.conns[address] == nil {
		b.conns[address] = map[net.Conn]bool{}
	}
	tc := &trackedConn{Conn: c, onClose: func(c net.Conn) {
		b.mu.Lock()
		delete(b.conns[address], c)
		b.mu.Unlock()
	}}
	b.conns[address][tc] = true
	return tc, nil
}

// Cut severs the links to peers.
func (b *Bridge) Cut(peers ...string) {
	b.mu.Lock()
	var victims []net.Conn
	for _, p := range peers {
		a := raft.ServerAddress(p)
		b.blocked[a] = true
		for c := range b.conns[a] {
			victims = append(victims, c)
		}
	}
	b.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
}

// Heal restores the links to peers.
func (b *Bridge) Heal(peers ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range peers {
		delete(b.blocked, raft.ServerAddress(p))
	}
}

type trackedConn struct {
	net.Conn
	once    sync.Once
	onClose func(net.Conn)
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.onClose(c) })
	return c.Conn.Close()
}
