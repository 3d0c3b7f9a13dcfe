package gc_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/strata-registry/strata/api"
	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/gc"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// registry is the real single-node stack with a collector: Raft over TCP,
// Pebble, three shard directories at 2+1, and the HTTP API.
type registry struct {
	t     *testing.T
	url   string
	meta  *cluster.Meta
	store *metastore.Store
	dirs  []string
	gc    *gc.Collector
}

// newRegistry builds the stack; sweepMinAge < 0 lets the storage sweep
// delete unrecorded shards at once, which is only safe with no upload in
// flight.
func newRegistry(t *testing.T, sweepMinAge time.Duration) *registry {
	t.Helper()
	dir := t.TempDir()
	st, err := metastore.Open(filepath.Join(dir, "pebble"))
	if err != nil {
		t.Fatal(err)
	}
	node, err := cluster.Open(cluster.Config{NodeID: "n1", Dir: filepath.Join(dir, "raft"), RaftAddr: "127.0.0.1:0", Bootstrap: true}, st)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := node.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	meta, err := cluster.NewMeta(cluster.MetaConfig{Node: node, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	r := &registry{t: t, meta: meta, store: st}
	var nodes []blobstore.Node
	for i := 0; i < 3; i++ {
		d := filepath.Join(dir, fmt.Sprintf("shards%d", i))
		ls, err := blobstore.OpenLocal(fmt.Sprintf("d%d", i), d)
		if err != nil {
			t.Fatal(err)
		}
		r.dirs = append(r.dirs, d)
		nodes = append(nodes, blobstore.Node{Info: blobstore.NodeInfo{ID: ls.NodeID(), Zone: ls.NodeID(), Free: 1 << 40}, Shards: ls})
		t.Cleanup(func() { ls.Close() })
	}
	blobs, err := blobstore.New(blobstore.Config{K: 2, M: 1, SegmentSize: 256 << 10, SmallBlobThreshold: 64 << 10},
		func() []blobstore.Node { return nodes })
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(api.New(api.Config{}, meta, blobs).Handler())
	r.url = hs.URL
	r.gc = gc.NewCollector(gc.CollectorConfig{Grace: -1, SweepMinAge: sweepMinAge}, st, meta,
		func() []blobstore.Node { return nodes }, node.IsLeader, nil, nil)
	t.Cleanup(func() {
		hs.Close()
		node.Close()
		st.Close()
	})
	return r
}

func (r *registry) req(method, path string, body []byte, hdr ...string) (*http.Response, []byte) {
	req, err := http.NewRequest(method, r.url+path, bytes.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (r *registry) pushBlob(repo string, b []byte) (digest.Digest, error) {
	d := digest.FromBytes(b)
	resp, body := r.req("POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), b)
	if resp.StatusCode != http.StatusCreated {
		return d, fmt.Errorf("push blob: %d %s", resp.StatusCode, body)
	}
	return d, nil
}

// pushImage pushes config and layers and a manifest tagged tag; it returns
// the manifest's digest, or the error of whichever step failed.
func (r *registry) pushImage(repo, tag string, layers ...[]byte) (digest.Digest, error) {
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","tag":%q}`, tag))
	cd, err := r.pushBlob(repo, cfg)
	if err != nil {
		return "", err
	}
	var ls []string
	for _, l := range layers {
		d, err := r.pushBlob(repo, l)
		if err != nil {
			return "", err
		}
		ls = append(ls, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}`, d, len(l)))
	}
	m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		cd, len(cfg), strings.Join(ls, ",")))
	resp, body := r.req("PUT", "/v2/"+repo+"/manifests/"+tag, m, "Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("push manifest: %d %s", resp.StatusCode, body)
	}
	return digest.FromBytes(m), nil
}

// pullImage pulls a manifest by digest and every blob it names, checking
// every digest.
func (r *registry) pullImage(repo string, md digest.Digest) error {
	resp, body := r.req("GET", "/v2/"+repo+"/manifests/"+md.String(), nil)
	if resp.StatusCode != 200 || digest.FromBytes(body) != md {
		return fmt.Errorf("manifest %s: %d", md, resp.StatusCode)
	}
	var descs []string
	for _, part := range strings.Split(string(body), `"digest":"`)[1:] {
		descs = append(descs, part[:strings.IndexByte(part, '"')])
	}
	for _, d := range descs {
		resp, b := r.req("GET", "/v2/"+repo+"/blobs/"+d, nil)
		if resp.StatusCode != 200 || digest.FromBytes(b).String() != d {
			return fmt.Errorf("blob %s of %s: status %d", d, md, resp.StatusCode)
		}
	}
	return nil
}

// shardBytes is the total size of the shard files under every shard dir.
func (r *registry) shardBytes() (files int, size int64) {
	for _, d := range r.dirs {
		filepath.WalkDir(filepath.Join(d, "shards"), func(p string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				info, _ := e.Info()
				files++
				size += info.Size()
			}
			return nil
		})
	}
	return files, size
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// Deleting everything and collecting leaves no shard behind; live images
// keep every byte they need.
func TestCollectReclaimsEverythingUnreferenced(t *testing.T) {
	r := newRegistry(t, -1)
	shared := randBytes(300 << 10)
	keep, err := r.pushImage("app", "keep", shared, randBytes(100))
	if err != nil {
		t.Fatal(err)
	}
	var gone []digest.Digest
	for i := 0; i < 5; i++ {
		d, err := r.pushImage("app", fmt.Sprintf("v%d", i), shared, randBytes(700<<10))
		if err != nil {
			t.Fatal(err)
		}
		gone = append(gone, d)
	}
	// An abandoned upload and a blob nobody references.
	resp, _ := r.req("POST", "/v2/app/blobs/uploads/", nil)
	r.req("PATCH", resp.Header.Get("Location"), randBytes(1000))
	if _, err := r.pushBlob("other", randBytes(500<<10)); err != nil {
		t.Fatal(err)
	}
	for _, d := range gone {
		if resp, _ := r.req("DELETE", "/v2/app/manifests/"+d.String(), nil); resp.StatusCode != 202 {
			t.Fatal(resp.Status)
		}
	}
	_, before := r.shardBytes()
	// The abandoned upload is idle only after UploadIdle; cancel it by hand.
	ups, _ := r.store.IdleUploads(time.Now().Add(time.Hour).UnixNano(), 10)
	for _, u := range ups {
		if err := r.meta.Propose(context.Background(), &pb.Command{Op: &pb.Command_CancelUpload{CancelUpload: &pb.CancelUpload{Id: u.Id}}}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := r.gc.RunOnce(context.Background(), 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.BlobsCollected != 11 { // 5 configs, 5 layers, 1 stray blob
		t.Fatalf("collected %d blobs: %+v", st.BlobsCollected, st)
	}
	if err := r.pullImage("app", keep); err != nil {
		t.Fatalf("live image damaged by collection: %v", err)
	}
	files, after := r.shardBytes()
	// What is left is exactly the live image: config, shared layer, small layer.
	need := 0
	l, _ := r.store.Blob(digest.FromBytes(shared).String())
	for _, s := range l.Segments {
		need += len(s.Shards)
	}
	need += 2 * 2 // the config and the small layer: 1+1 replicas each
	if files != need {
		t.Fatalf("%d shard files left (%d bytes, was %d), live images need %d", files, after, before, need)
	}
	for _, d := range gone {
		if resp, _ := r.req("GET", "/v2/app/manifests/"+d.String(), nil); resp.StatusCode != 404 {
			t.Fatalf("deleted manifest %s answers %d", d, resp.StatusCode)
		}
	}
	if o, _ := r.store.Orphans("", 10); len(o) != 0 {
		t.Fatalf("orphan records left: %d", len(o))
	}
}

// Pushes that share layers, deletions and re-pushes race a collector running
// continuously with no grace period. Every acknowledged image that was not
// deleted pulls back intact; collection never takes a byte a live image
// needs, and at the end nothing unreferenced remains on disk.
func TestPushDeleteRepushRacesCollector(t *testing.T) {
	if testing.Short() {
		t.Skip("race test")
	}
	// The storage sweep keeps its production floor here: pushes are in
	// flight all the time, and a shard written but not yet committed looks
	// exactly like a leftover.
	r := newRegistry(t, 0)
	layers := make([][]byte, 6)
	for i := range layers {
		layers[i] = randBytes(64<<10 + i*90<<10)
	}
	// Lifecycle keeps the 4 newest images of race/0 tagged w*.
	policy := `{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["w"],"countType":"imageCountMoreThan","countNumber":4},"action":{"type":"expire"}}]}`
	lc := gc.NewLifecycle(r.store, r.meta, func() bool { return true }, time.Hour, nil, nil)
	var expiredMu sync.Mutex
	expired := map[digest.Digest]bool{}
	ctx, cancel := context.WithCancel(context.Background())
	var gcRuns sync.WaitGroup
	gcRuns.Add(1)
	go func() {
		defer gcRuns.Done()
		for ctx.Err() == nil {
			if _, err := r.gc.RunOnce(ctx, 0, true); err != nil && ctx.Err() == nil {
				t.Errorf("collector: %v", err)
			}
			// With no grace at all, a blob is fair game the moment it is
			// unreferenced; a short pause lets pushes finish at all.
			time.Sleep(20 * time.Millisecond)
		}
	}()
	gcRuns.Add(1)
	go func() {
		defer gcRuns.Done()
		// Each pass runs to its end (not under ctx): an expiration whose
		// proposal a cancelled context cut short has an unknown outcome,
		// and it could be applied without being counted here.
		for ctx.Err() == nil {
			if _, err := r.store.Repository("race/0"); err == nil {
				r.meta.Propose(context.Background(), &pb.Command{Op: &pb.Command_SetRepositoryPolicy{SetRepositoryPolicy: &pb.SetRepositoryPolicy{
					Repo: "race/0", Set: []string{"lifecycle_policy"}, LifecyclePolicy: policy}}})
				exps, err := lc.Apply(context.Background(), "race/0")
				if err != nil {
					t.Errorf("lifecycle: %v", err)
				}
				expiredMu.Lock()
				for _, e := range exps {
					expired[digest.Digest(e.Image.Digest)] = true
				}
				expiredMu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	type image struct {
		repo string
		d    digest.Digest
	}
	var (
		mu    sync.Mutex
		alive = map[image]bool{}
		wg    sync.WaitGroup
	)
	retried := 0
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			repo := fmt.Sprintf("race/%d", w%2)
			for i := 0; i < 12; i++ {
				a, b := layers[(w+i)%len(layers)], layers[(w+2*i+1)%len(layers)]
				tag := fmt.Sprintf("w%d-%d", w, i)
				var d digest.Digest
				var err error
				for attempt := 0; attempt < 50; attempt++ {
					// A push that loses a race with the collector fails
					// with MANIFEST_BLOB_UNKNOWN; the client uploads again.
					if d, err = r.pushImage(repo, tag, a, b); err == nil {
						break
					}
					if !strings.Contains(err.Error(), "MANIFEST_BLOB_UNKNOWN") {
						break
					}
					mu.Lock()
					retried++
					mu.Unlock()
				}
				if err != nil {
					t.Errorf("push %s: %v", tag, err)
					return
				}
				mu.Lock()
				alive[image{repo, d}] = true
				mu.Unlock()
				if i%3 == 1 { // delete some
					if resp, body := r.req("DELETE", "/v2/"+repo+"/manifests/"+d.String(), nil); resp.StatusCode != 202 {
						if resp.StatusCode != 404 { // another worker pushed the same bytes and deleted them
							t.Errorf("delete: %d %s", resp.StatusCode, body)
						}
					}
					mu.Lock()
					delete(alive, image{repo, d})
					mu.Unlock()
				}
			}
		}(w)
	}
	wg.Wait()
	cancel()
	gcRuns.Wait()
	for img := range alive {
		if img.repo == "race/0" && expired[img.d] {
			delete(alive, img)
		}
	}
	t.Logf("%d images alive, %d expired by lifecycle, %d pushes retried after losing a race with the collector", len(alive), len(expired), retried)
	if len(expired) == 0 {
		t.Fatal("the lifecycle policy expired nothing")
	}
	// Images deleted by one worker may share a digest with one another
	// worker keeps (same config and layers, same tag text cannot happen:
	// tags differ, so configs differ): every alive image must pull.
	for img := range alive {
		if err := r.pullImage(img.repo, img.d); err != nil {
			t.Fatalf("acknowledged image %s@%s: %v", img.repo, img.d, err)
		}
	}
	// Final collection: nothing unreferenced remains.
	if _, err := r.gc.RunOnce(context.Background(), 0, true); err != nil {
		t.Fatal(err)
	}
	files, _ := r.shardBytes()
	want := 0
	seen := map[string]bool{}
	for img := range alive {
		rec, err := r.store.Manifest(img.repo, img.d.String())
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range rec.Blobs {
			if seen[b] {
				continue
			}
			seen[b] = true
			l, err := r.store.Blob(b)
			if err != nil {
				t.Fatalf("live blob %s: %v", b, err)
			}
			for _, s := range l.Segments {
				want += len(s.Shards)
			}
		}
	}
	if files != want {
		t.Fatalf("%d shard files on disk, live images need %d", files, want)
	}
}
