package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/proto"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster/clustertest"
	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// The encryption promise, checked on disk: images and manifests carrying a
// marker go through a three-node metadata cluster (Raft over TCP, Pebble)
// and three gRPC storage nodes with encryption on; then every file under
// every node's data directory (Pebble's WAL and tables, the Raft log and
// stable store, Raft snapshots, shard files) is read, and the marker is
// nowhere. Tags, which stay in the clear by design, are found, which shows
// the scan reads what it should.
func TestNothingInTheClearOnAnyDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node cluster")
	}
	c := clustertest.Start(t, 3, clustertest.Options{})
	st := clustertest.StartStorage(t, c, 3)
	ring, err := keys.OpenKeyring(filepath.Join(t.TempDir(), "keyring"), true)
	if err != nil {
		t.Fatal(err)
	}
	// Small blobs (the config, the open upload's first chunk) are inline:
	// sealed into the metadata, which must not hold them in the clear either.
	blobs, err := blobstore.New(blobstore.Config{K: 2, M: 1, SegmentSize: 1 << 20, InlineMax: 16 << 10}, st.BlobNodes)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(New(Config{Keys: ring}, c.Nodes[1].Meta, blobs).Handler())
	t.Cleanup(hs.Close)
	r := &testRegistry{t: t, url: hs.URL}

	const marker = "STRATA-SECRET-MARKER-91c2"
	const tag = "clear-tag-4e7d"                                  // tags are index keys: in the clear by design
	layer := bytes.Repeat([]byte(marker+" layer bytes "), 100000) // ~3.8 MB: several segments
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{"Env":["` + marker + `"]}}`)
	ld, cd := r.pushBlob("enc/app", layer), r.pushBlob("enc/app", cfg)
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}],`+
		`"annotations":{"org.example.note":%q}}`, cd, len(cfg), ld, len(layer), marker))
	md := digest.FromBytes(manifest)
	expect(t, r.do("PUT", "/v2/enc/app/manifests/"+tag, manifest, "Content-Type", "application/vnd.oci.image.manifest.v1+json"), http.StatusCreated)
	for dg, inline := range map[digest.Digest]bool{cd: true, ld: false} {
		l, err := c.Nodes[1].Meta.Blob(context.Background(), dg.String())
		if err != nil || len(l.Segments) == 0 || (l.Segments[0].Inline != nil) != inline || l.Segments[0].Format != blobstore.FormatAESGCM {
			t.Fatalf("layout of %s (%d bytes): %v, want inline %v and sealed", dg, l.GetSize(), err, inline)
		}
	}
	// A referrer whose annotations the referrers API serves.
	empty := r.pushBlob("enc/app", []byte("{}"))
	sig := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig",`+
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},"layers":[],`+
		`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d},"annotations":{"sig":%q}}`,
		empty, md, len(manifest), marker))
	sd := digest.FromBytes(sig)
	expect(t, r.do("PUT", "/v2/enc/app/manifests/"+sd.String(), sig, "Content-Type", "application/vnd.oci.image.manifest.v1+json"), http.StatusCreated)
	// An upload left open after a chunk shorter than SHA-256's block: the
	// session's hash state holds those bytes.
	resp := r.do("POST", "/v2/enc/app/blobs/uploads/", nil)
	expect(t, resp, http.StatusAccepted)
	resp = r.do("PATCH", resp.Header.Get("Location"), []byte(marker), "Content-Range", fmt.Sprintf("0-%d", len(marker)-1))
	expect(t, resp, http.StatusAccepted)

	// Everything reads back in the clear through the API.
	if got := expect(t, r.do("GET", "/v2/enc/app/manifests/"+tag, nil), 200); !bytes.Equal(got, manifest) {
		t.Fatal("manifest reads back wrong")
	}
	if resp := r.do("HEAD", "/v2/enc/app/manifests/"+md.String(), nil); resp.ContentLength != int64(len(manifest)) {
		t.Fatalf("HEAD Content-Length %d, want %d", resp.ContentLength, len(manifest))
	}
	if got := expect(t, r.do("GET", "/v2/enc/app/blobs/"+ld.String(), nil), 200); !bytes.Equal(got, layer) {
		t.Fatal("layer reads back wrong")
	}
	if got := expect(t, r.do("GET", "/v2/enc/app/referrers/"+md.String(), nil), 200); !bytes.Contains(got, []byte(`"sig":"`+marker+`"`)) {
		t.Fatalf("referrers lost the annotations: %s", got)
	}

	// Snapshots on every meta node, so they are on disk too.
	for _, n := range c.Nodes {
		if err := n.Raft.Snapshot(); err != nil {
			t.Fatalf("snapshot on %s: %v", n.ID, err)
		}
	}
	scan := map[string]bool{} // data directory -> holds shards
	for _, n := range c.Nodes {
		scan[n.Dir] = false
	}
	for _, n := range st.List() {
		scan[n.Dir] = true
	}
	seen := map[string]int{} // kind of file -> count
	tagFound := false
	for dir, shards := range scan {
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			switch {
			case shards:
				seen["shards"]++
			case strings.HasSuffix(p, "raft.db"):
				seen["raft log and stable store"]++
			case strings.Contains(p, "snapshots"):
				seen["raft snapshot"]++
			case strings.Contains(p, "pebble"):
				seen["pebble"]++
			}
			if bytes.Contains(b, []byte(marker)) {
				t.Errorf("%s holds the marker in the clear", p)
			}
			if bytes.Contains(b, []byte(tag)) {
				tagFound = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("files scanned by kind: %v", seen)
	for _, kind := range []string{"raft log and stable store", "raft snapshot", "pebble", "shards"} {
		if seen[kind] == 0 {
			t.Errorf("no %s file found to scan", kind)
		}
	}
	if !tagFound {
		t.Error("the tag (kept in the clear) was found in no file: the scan does not read the metadata")
	}
}

// One flipped byte anywhere in a sealed manifest record, or a record moved
// onto another digest, is refused as corrupt, never served.
func TestSealedManifestTamperRefused(t *testing.T) {
	ring, err := keys.OpenKeyring(filepath.Join(t.TempDir(), "keyring"), true)
	if err != nil {
		t.Fatal(err)
	}
	r := newTestRegistryWith(t, 1, 1, Config{Keys: ring})
	cfg := r.pushBlob("tamper", []byte(`{"os":"linux"}`))
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":14},"layers":[],"annotations":{"a":"b"}}`, cfg))
	md := digest.FromBytes(manifest)
	expect(t, r.do("PUT", "/v2/tamper/manifests/v1", manifest, "Content-Type", "application/vnd.oci.image.manifest.v1+json"), http.StatusCreated)
	rec, err := r.st.Manifest("tamper", md.String())
	if err != nil {
		t.Fatal(err)
	}
	if rec.Key == nil || bytes.Contains(rec.Body, []byte("schemaVersion")) || rec.Size != uint64(len(manifest)) {
		t.Fatalf("stored manifest is not sealed: key %v, size %d, body %q", rec.Key, rec.Size, rec.Body)
	}
	ctx := t.Context()
	if body, err := r.srv.manifestBody(ctx, rec); err != nil || !bytes.Equal(body, manifest) {
		t.Fatalf("open = %q, %v", body, err)
	}
	for i := range rec.Body {
		bad := proto.Clone(rec).(*pb.ManifestRecord)
		bad.Body[i] ^= 0x80
		if _, err := r.srv.manifestBody(ctx, bad); !errors.Is(err, metastore.ErrCorrupt) {
			t.Fatalf("byte %d flipped: err = %v, want ErrCorrupt", i, err)
		}
	}
	moved := proto.Clone(rec).(*pb.ManifestRecord)
	moved.Digest = digest.FromString("other").String()
	if _, err := r.srv.manifestBody(ctx, moved); !errors.Is(err, metastore.ErrCorrupt) {
		t.Fatalf("record moved to another digest: err = %v", err)
	}
	wrongKey := proto.Clone(rec).(*pb.ManifestRecord)
	wrongKey.Key.Ciphertext[len(wrongKey.Key.Ciphertext)-1] ^= 1
	if _, err := r.srv.manifestBody(ctx, wrongKey); !errors.Is(err, keys.ErrDecrypt) {
		t.Fatalf("tampered wrapped key: err = %v", err)
	}
}
