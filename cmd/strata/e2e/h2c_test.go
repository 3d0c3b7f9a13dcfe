package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"testing"
)

// Clients that speak HTTP/2 over cleartext with prior knowledge get it:
// a blob pushed and pulled over one h2c connection.
func TestH2C(t *testing.T) {
	if strataBin == "" {
		t.Skip("h2c is a property of Strata's server; STRATA_E2E_URL targets another registry")
	}
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	blob := bytes.Repeat([]byte("h2c "), 100000)
	sum := sha256.Sum256(blob)
	dgst := "sha256:" + hex.EncodeToString(sum[:])
	resp, err := client.Post(reg.url+"/v2/e2e/h2c/blobs/uploads/?digest="+dgst, "application/octet-stream", bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.ProtoMajor != 2 {
		t.Fatalf("push: %s over %s", resp.Status, resp.Proto)
	}
	resp, err = client.Get(reg.url + "/v2/e2e/h2c/blobs/" + dgst)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.ProtoMajor != 2 || !bytes.Equal(got, blob) {
		t.Fatalf("pull over %s: %v, %d bytes", resp.Proto, err, len(got))
	}
}
