package api

import (
	"bytes"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/strata-registry/strata/keys"
)

// What encryption costs a push and a pull of a 16 MiB blob through the
// whole HTTP path (single-node Raft, Pebble, one local shard directory),
// with and without a keyring. Run with:
//
//	go test -run XXX -bench EncryptionCost -count 5 ./api/
func BenchmarkEncryptionCost(b *testing.B) {
	blob := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	for _, enc := range []bool{false, true} {
		name := "plain"
		cfg := Config{}
		if enc {
			name = "aes-gcm"
			ring, err := keys.OpenKeyring(filepath.Join(b.TempDir(), "keyring"), true)
			if err != nil {
				b.Fatal(err)
			}
			cfg.Keys = keys.NewCache(ring, 4096, 0)
		}
		r := newTestRegistryWith(b, 1, 0, cfg)
		b.Run("push/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(blob)))
			for i := 0; i < b.N; i++ {
				data := append([]byte(fmt.Sprintf("%d-%s-", i, name)), blob...)
				d := digest.FromBytes(data)
				resp, err := http.Post(r.url+"/v2/bench/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(data))
				if err != nil || resp.StatusCode != http.StatusCreated {
					b.Fatal(err, resp)
				}
				resp.Body.Close()
			}
		})
		d := digest.FromBytes(blob)
		resp, err := http.Post(r.url+"/v2/bench/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(blob))
		if err != nil || resp.StatusCode != http.StatusCreated {
			b.Fatal(err, resp)
		}
		resp.Body.Close()
		b.Run("pull/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(blob)))
			for i := 0; i < b.N; i++ {
				resp, err := http.Get(r.url + "/v2/bench/blobs/" + d.String())
				if err != nil || resp.StatusCode != 200 {
					b.Fatal(err, resp)
				}
				var buf bytes.Buffer
				buf.ReadFrom(resp.Body)
				resp.Body.Close()
			}
		})
	}
}
