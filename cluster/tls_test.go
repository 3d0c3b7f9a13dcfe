package cluster_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/strata-registry/strata/cluster"
	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/metastore"
)

// writeCert issues a certificate for 127.0.0.1 signed by ca (self-signed
// when ca is nil) and writes it and its key as PEM files.
func writeCert(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	parent, signer := tmpl, key
	if ca == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	} else {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kb, _ := x509.MarshalECPrivateKey(key)
	certPath, keyPath := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, key, certPath, keyPath
}

// Internal gRPC with mutual TLS: a peer with a certificate from the
// cluster's CA is served; one without a certificate, or with one from
// another CA, is refused.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey, caPath, _ := writeCert(t, dir, "ca", nil, nil)
	_, _, srvCert, srvKey := writeCert(t, dir, "server", ca, caKey)
	_, _, cliCert, cliKey := writeCert(t, dir, "client", ca, caKey)
	other, otherKey, otherCA, _ := writeCert(t, dir, "other-ca", nil, nil)
	_, _, rogueCert, rogueKey := writeCert(t, dir, "rogue", other, otherKey)
	_ = otherCA

	st, err := metastore.Open(filepath.Join(dir, "pebble"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	node, err := cluster.Open(cluster.Config{NodeID: "n1", Dir: filepath.Join(dir, "raft"), RaftAddr: "127.0.0.1:0", Bootstrap: true}, st)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if err := node.WaitLeader(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	meta, _ := cluster.NewMeta(cluster.MetaConfig{Node: node, Store: st})
	svc, _ := cluster.NewService(meta, time.Minute, nil)
	srvTLS, err := cluster.LoadTLS(srvCert, srvKey, caPath)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(cluster.ServerOptions(srvTLS)...)
	svc.Register(g)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go g.Serve(ln)
	defer g.Stop()

	status := func(conf [3]string) error {
		tlsConf, err := cluster.LoadTLS(conf[0], conf[1], conf[2])
		if err != nil {
			t.Fatal(err)
		}
		peers := cluster.NewPeers(nil, tlsConf)
		defer peers.Close()
		c, err := peers.Client(ln.Addr().String())
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = c.Status(ctx, &cpb.StatusRequest{})
		return err
	}
	if err := status([3]string{cliCert, cliKey, caPath}); err != nil {
		t.Fatalf("a peer with the cluster's certificate was refused: %v", err)
	}
	if err := status([3]string{"", "", ""}); err == nil {
		t.Fatal("a plaintext peer was served")
	}
	if err := status([3]string{rogueCert, rogueKey, caPath}); err == nil {
		t.Fatal("a peer with a certificate from another CA was served")
	}
	if _, err := cluster.LoadTLS(cliCert, cliKey, ""); err == nil {
		t.Fatal("a TLS configuration without a CA was accepted")
	}
}
