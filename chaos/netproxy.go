package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Net is a layer of TCP proxies between the nodes of a Cluster, to cut
// links between them: a network partition without touching the kernel's
// packet filter. Every node gets a proxy in front of its gRPC port (and its
// Raft port, for meta nodes), and the nodes are made to advertise the
// proxies' addresses (serve's --advertise-grpc-addr and
// --advertise-raft-addr) and to join through them, so that every
// connection from one node to another passes a proxy.
//
// All nodes share the loopback interface, so a proxy cannot tell its
// clients apart by address. It tells them apart by process instead: for
// each connection it accepts it looks the client's socket up in
// /proc/net/tcp and finds which node's process holds it (/proc/<pid>/fd).
// A link (from, to) is the set of connections node from opens to node to;
// cutting it closes those open now and refuses new ones (accepted, then
// closed at once, which a client sees as a reset). Connections from other
// processes (the harness, the strata CLI) are never cut.
type Net struct {
	pids func() map[int]string // node of each running process

	mu      sync.Mutex
	proxies map[string]*proxy // by node id + "/grpc" or "/raft"
	cut     map[netLink]bool
	owners  map[uint64]string // socket inode to node, cached
	closed  bool
	wg      sync.WaitGroup
	stats   NetStats
}

// NetStats counts what the proxies did.
type NetStats struct {
	Accepted   int64 `json:"connections_accepted"`
	Attributed int64 `json:"connections_from_nodes"` // whose node was found
	Refused    int64 `json:"connections_refused"`    // on a cut link
	Severed    int64 `json:"connections_severed"`    // open when their link was cut
	Cuts       int64 `json:"links_cut"`
}

// Stats returns the counts so far.
func (n *Net) Stats() NetStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stats
}

type netLink struct{ from, to string }

type proxy struct {
	n      *Net
	node   string
	kind   string // grpc or raft
	target string // the address the node listens on
	ln     net.Listener
	conns  map[*proxyConn]bool
}

type proxyConn struct {
	from   string
	client net.Conn
	server net.Conn
}

func (pc *proxyConn) close() {
	pc.client.Close()
	if pc.server != nil {
		pc.server.Close()
	}
}

// NewNet returns an empty proxy layer; pids names the node of each running
// node process.
func NewNet(pids func() map[int]string) *Net {
	return &Net{pids: pids, proxies: map[string]*proxy{}, cut: map[netLink]bool{}, owners: map[uint64]string{}}
}

// Proxy starts a proxy for node's kind port (grpc or raft), which listens
// on target, and returns the proxy's address.
func (n *Net) Proxy(node, kind, target string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	p := &proxy{n: n, node: node, kind: kind, target: target, ln: ln, conns: map[*proxyConn]bool{}}
	n.mu.Lock()
	n.proxies[node+"/"+kind] = p
	n.mu.Unlock()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		p.serve()
	}()
	return ln.Addr().String(), nil
}

// Addr is the address of node's kind proxy, or "".
func (n *Net) Addr(node, kind string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.proxies[node+"/"+kind]; p != nil {
		return p.ln.Addr().String()
	}
	return ""
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *proxy) handle(c net.Conn) {
	from := p.n.identify(c)
	pc := &proxyConn{from: from, client: c}
	p.n.mu.Lock()
	p.n.stats.Accepted++
	if from != "" {
		p.n.stats.Attributed++
	}
	if p.n.closed || p.n.cut[netLink{from, p.node}] {
		p.n.stats.Refused++
		p.n.mu.Unlock()
		c.Close()
		return
	}
	p.conns[pc] = true
	p.n.mu.Unlock()
	defer func() {
		p.n.mu.Lock()
		delete(p.conns, pc)
		p.n.mu.Unlock()
		pc.close()
	}()
	s, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	p.n.mu.Lock()
	pc.server = s
	stillOK := p.conns[pc] // not cut while dialling
	p.n.mu.Unlock()
	if !stillOK {
		s.Close()
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(s, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, s); done <- struct{}{} }()
	<-done // either side ending ends both
}

// Cut severs the links between a and b, both ways: connections either
// opens to the other are closed, and new ones refused.
func (n *Net) Cut(a, b string) {
	n.mu.Lock()
	n.cut[netLink{a, b}] = true
	n.cut[netLink{b, a}] = true
	n.stats.Cuts += 2
	var victims []*proxyConn
	for _, p := range n.proxies {
		for pc := range p.conns {
			if (p.node == b && pc.from == a) || (p.node == a && pc.from == b) {
				victims = append(victims, pc)
				delete(p.conns, pc)
			}
		}
	}
	n.stats.Severed += int64(len(victims))
	n.mu.Unlock()
	for _, pc := range victims {
		pc.close()
	}
}

// Heal restores every link cut.
func (n *Net) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut = map[netLink]bool{}
}

// Cuts lists the links cut now, "from>to", sorted.
func (n *Net) Cuts() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for l := range n.cut {
		out = append(out, l.from+">"+l.to)
	}
	slices.Sort(out)
	return out
}

// Close stops every proxy and closes every connection.
func (n *Net) Close() {
	n.mu.Lock()
	n.closed = true
	var conns []*proxyConn
	for _, p := range n.proxies {
		p.ln.Close()
		for pc := range p.conns {
			conns = append(conns, pc)
		}
	}
	n.mu.Unlock()
	for _, pc := range conns {
		pc.close()
	}
	n.wg.Wait()
}

// identify returns the node whose process opened c, or "" for any other
// process.
func (n *Net) identify(c net.Conn) string {
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return ""
	}
	la, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return ""
	}
	inode, err := socketInode(ra, la)
	if err != nil || inode == 0 {
		return ""
	}
	n.mu.Lock()
	node, ok := n.owners[inode]
	n.mu.Unlock()
	if ok {
		return node
	}
	owners := scanSocketOwners(n.pids())
	n.mu.Lock()
	defer n.mu.Unlock()
	n.owners = owners
	return owners[inode]
}

// socketInode finds, in /proc/net/tcp, the inode of the socket whose local
// address is local and remote address is remote (the client's end of a
// connection this process accepted).
func socketInode(local, remote *net.TCPAddr) (uint64, error) {
	want := procAddr(local) + " " + procAddr(remote)
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[1]+" "+fields[2] != want {
			continue
		}
		return strconv.ParseUint(fields[9], 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("socket not found")
}

// procAddr renders an IPv4 address as /proc/net/tcp does: the address as
// a little-endian word, the port big-endian, in hex.
func procAddr(a *net.TCPAddr) string {
	ip := a.IP.To4()
	if ip == nil {
		return ""
	}
	return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
}

// scanSocketOwners maps the inode of every socket the processes in pids
// hold to their node.
func scanSocketOwners(pids map[int]string) map[uint64]string {
	out := map[uint64]string{}
	for pid, node := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			l, err := os.Readlink(filepath.Join(dir, e.Name()))
			if err != nil || !strings.HasPrefix(l, "socket:[") {
				continue
			}
			if ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"), 10, 64); err == nil {
				out[ino] = node
			}
		}
	}
	return out
}
