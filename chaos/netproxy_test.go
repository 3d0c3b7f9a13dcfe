package chaos

import (
	"bufio"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// roundTrip sends a line through c and reads it back.
func roundTrip(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil && line != "ping\n" {
		return io.ErrUnexpectedEOF
	}
	return err
}

func TestNetCutsLinksByProcess(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	// This test process plays node "a"; the echo server is node "b".
	n := NewNet(func() map[int]string { return map[int]string{os.Getpid(): "a"} })
	defer n.Close()
	addr, err := n.Proxy("b", "grpc", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c1, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if err := roundTrip(c1); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	if st := n.Stats(); st.Accepted != 1 || st.Attributed != 1 {
		t.Fatalf("the connection was not attributed to this process: %+v", st)
	}

	n.Cut("a", "b")
	if err := roundTrip(c1); err == nil {
		t.Fatal("an open connection survived the cut")
	}
	c2, err := net.Dial("tcp", addr)
	if err == nil {
		defer c2.Close()
		if err := roundTrip(c2); err == nil {
			t.Fatal("a new connection crossed a cut link")
		}
	}
	if st := n.Stats(); st.Severed != 1 || st.Refused < 1 || st.Cuts != 2 {
		t.Fatalf("after the cut: %+v", st)
	}
	if got := n.Cuts(); len(got) != 2 || got[0] != "a>b" || got[1] != "b>a" {
		t.Fatalf("cuts %v", got)
	}

	n.Heal()
	c3, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if err := roundTrip(c3); err != nil {
		t.Fatalf("after healing: %v", err)
	}
}

func TestNetLeavesOtherProcessesAlone(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	// No node runs in this process: its connections are nobody's, and a
	// cut between two nodes does not touch them.
	n := NewNet(func() map[int]string { return map[int]string{} })
	defer n.Close()
	addr, err := n.Proxy("b", "grpc", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	n.Cut("a", "b")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c); err != nil {
		t.Fatalf("a connection from outside the cluster was cut: %v", err)
	}
	if st := n.Stats(); st.Attributed != 0 || st.Refused != 0 {
		t.Fatalf("%+v", st)
	}
}

func TestProxiedArgs(t *testing.T) {
	argv := []string{"strata", "serve", "--roles", "storage", "--node-id", "s1", "--join", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:9"}
	got := proxiedArgs(argv, "127.0.0.1:100", "", map[string]string{"127.0.0.1:1": "127.0.0.1:11", "127.0.0.1:2": "127.0.0.1:12"})
	want := "strata serve --roles storage --node-id s1 --join 127.0.0.1:11,127.0.0.1:12,127.0.0.1:9 --advertise-grpc-addr 127.0.0.1:100"
	if s := joinArgs(got); s != want {
		t.Errorf("got  %s\nwant %s", s, want)
	}
	meta := []string{"strata", "serve", "--roles", "meta"}
	if s := joinArgs(proxiedArgs(meta, "127.0.0.1:100", "127.0.0.1:101", nil)); s != "strata serve --roles meta --advertise-grpc-addr 127.0.0.1:100 --advertise-raft-addr 127.0.0.1:101" {
		t.Errorf("meta: %s", s)
	}
}

func joinArgs(a []string) string {
	s := ""
	for i, x := range a {
		if i > 0 {
			s += " "
		}
		s += x
	}
	return s
}
