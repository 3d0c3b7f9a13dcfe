package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/proto"

	"github.com/strata-registry/strata/keys"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

func newKeyedRegistry(t *testing.T) (*testRegistry, *keys.Keyring) {
	t.Helper()
	ring, err := keys.OpenKeyring(filepath.Join(t.TempDir(), "keyring"), true)
	if err != nil {
		t.Fatal(err)
	}
	return newTestRegistryWith(t, 2, 1, Config{Keys: ring, KeyManager: ring}), ring
}

// admin calls an admin operation and decodes its answer.
func (r *testRegistry) admin(op string, req any, out any) {
	r.t.Helper()
	b, _ := json.Marshal(req)
	body := expect(r.t, r.do("POST", "/admin/v1/"+op, b), http.StatusOK)
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			r.t.Fatalf("%s: %v: %s", op, err, body)
		}
	}
}

// versions counts the wrapped copies of key name by version.
func versions(t *testing.T, st *metastore.Store, name string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for cursor := ""; ; {
		items, next, err := st.WrappedKeys(cursor, 100, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			for _, wk := range it.Keys {
				if wk.KeyName == name {
					out[wk.KeyVersion]++
				}
			}
		}
		if next == "" {
			return out
		}
		cursor = next
	}
}

// Rotation while clients push and pull: the key gets a new version, every
// data key is rewrapped in the background, the old version is retired,
// and every acknowledged blob and manifest still reads back exactly.
func TestKeyRotationUnderLoadLosesNothing(t *testing.T) {
	r, ring := newKeyedRegistry(t)
	type pushed struct {
		repo, tag string
		dgst      digest.Digest
		body      []byte
		layer     []byte
	}
	var (
		mu     sync.Mutex
		acked  []pushed
		stop   atomic.Bool
		wg     sync.WaitGroup
		errs   = make(chan error, 100)
		client = &http.Client{Timeout: 30 * time.Second}
		seq    atomic.Int64
	)
	call := func(method, path string, body []byte, ct string) (*http.Response, []byte, error) {
		req, _ := http.NewRequest(method, r.url+path, bytes.NewReader(body))
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, b, err
	}
	push := func(repo string) error {
		i := seq.Add(1)
		layer := bytes.Repeat([]byte(fmt.Sprintf("layer %d ", i)), 2000+int(i)*37)
		ld := digest.FromBytes(layer)
		resp, b, err := call("POST", "/v2/"+repo+"/blobs/uploads/?digest="+ld.String(), layer, "")
		if err != nil || resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("push layer: %v %v %s", err, resp, b)
		}
		cfg := []byte(fmt.Sprintf(`{"os":"linux","n":%d}`, i))
		cd := digest.FromBytes(cfg)
		if resp, b, err := call("POST", "/v2/"+repo+"/blobs/uploads/?digest="+cd.String(), cfg, ""); err != nil || resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("push config: %v %v %s", err, resp, b)
		}
		m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}],"annotations":{"n":"%d"}}`,
			cd, len(cfg), ld, len(layer), i))
		tag := fmt.Sprintf("t%d", i)
		if resp, b, err := call("PUT", "/v2/"+repo+"/manifests/"+tag, m, "application/vnd.oci.image.manifest.v1+json"); err != nil || resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("push manifest: %v %v %s", err, resp, b)
		}
		mu.Lock()
		acked = append(acked, pushed{repo, tag, digest.FromBytes(m), m, layer})
		mu.Unlock()
		return nil
	}
	check := func(p pushed) error {
		resp, b, err := call("GET", "/v2/"+p.repo+"/manifests/"+p.tag, nil, "")
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(b, p.body) {
			return fmt.Errorf("manifest %s:%s: %v %v", p.repo, p.tag, err, resp)
		}
		resp, b, err = call("GET", "/v2/"+p.repo+"/blobs/"+digest.FromBytes(p.layer).String(), nil, "")
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(b, p.layer) {
			return fmt.Errorf("layer of %s:%s: %v %v", p.repo, p.tag, err, resp)
		}
		return nil
	}
	for i := 0; i < 30; i++ {
		if err := push(fmt.Sprintf("rot/r%d", i%3)); err != nil {
			t.Fatal(err)
		}
	}
	// An upload session opened (by its first chunk) before the rotation and
	// finished after it.
	resp := r.do("POST", "/v2/rot/open/blobs/uploads/", nil)
	expect(t, resp, http.StatusAccepted)
	openLoc := resp.Header.Get("Location")
	first := []byte("started before the rotation, ")
	expect(t, r.do("PATCH", openLoc, first, "Content-Range", fmt.Sprintf("0-%d", len(first)-1)), http.StatusAccepted)

	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				var err error
				if w%2 == 0 {
					err = push(fmt.Sprintf("rot/r%d", n%3))
				} else {
					mu.Lock()
					p := acked[n%len(acked)]
					mu.Unlock()
					err = check(p)
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}(w)
	}
	time.Sleep(300 * time.Millisecond)
	var rot struct {
		KeyName, KeyVersion string
	}
	r.admin("RotateKey", map[string]any{}, &rot)
	if rot.KeyName != keys.DefaultKeyName || rot.KeyVersion != "2" {
		t.Fatalf("RotateKey = %+v", rot)
	}
	var st struct{ Job KeyJobStatus }
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r.admin("GetKeyRotationStatus", map[string]any{}, &st)
		if st.Job.State != "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("rewrap pass still running after 60s")
		}
	}
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("during rotation: %v", err)
	}
	if st.Job.State != "done" || st.Job.Rewrapped == 0 || st.Job.Failed != 0 || st.Job.Stale < 60 {
		t.Fatalf("rewrap pass: %+v", st.Job)
	}
	t.Logf("pass: %d scanned, %d stale, %d rewrapped; %d images acknowledged", st.Job.Scanned, st.Job.Stale, st.Job.Rewrapped, len(acked))

	// The session opened under version 1 was rewrapped too, and finishes.
	id := openLoc[strings.LastIndex(openLoc, "/")+1:]
	if u, err := r.st.Upload(id); err != nil || u.Key.KeyVersion != "2" {
		t.Fatalf("open upload session after the pass: %v, %v", u, err)
	}
	chunk := []byte("finished after the rotation")
	whole := append(append([]byte(nil), first...), chunk...)
	expect(t, r.do("PUT", openLoc+"?digest="+digest.FromBytes(whole).String(), chunk), http.StatusCreated)
	r.admin("RetireKeyVersion", map[string]any{"keyName": keys.DefaultKeyName, "keyVersion": "1"}, nil)
	if v := versions(t, r.st, keys.DefaultKeyName); v["1"] != 0 || v["2"] == 0 {
		t.Fatalf("copies by version after retiring 1: %v", v)
	}
	infos, _ := ring.Keys()
	if len(infos[0].Versions) != 2 || infos[0].Versions[0].Retired.IsZero() {
		t.Fatalf("keyring after retire: %+v", infos)
	}
	for _, p := range acked {
		if err := check(p); err != nil {
			t.Fatalf("after retiring version 1: %v", err)
		}
	}
	if got := expect(t, r.do("GET", "/v2/rot/open/blobs/"+digest.FromBytes(whole).String(), nil), 200); !bytes.Equal(got, whole) {
		t.Fatal("late upload reads back wrong")
	}
	// The current version cannot be retired.
	resp = r.do("POST", "/admin/v1/RetireKeyVersion", []byte(`{"keyName":"default","keyVersion":"2"}`))
	if b := readAll(t, resp); resp.StatusCode != 400 || !bytes.Contains(b, []byte("current")) {
		t.Fatalf("retiring the current version: %d %s", resp.StatusCode, b)
	}
}

// A repository with a key of its own: its data keys are wrapped by it; a
// blob it shares with other repositories gets one more copy per key;
// deleting it destroys its key, so a blob only it had is unreadable even
// from shards that survive on a disk, while shared blobs stay readable.
func TestRepositoryKeysAndCryptoShredding(t *testing.T) {
	r, ring := newKeyedRegistry(t)
	ctx := t.Context()
	var created struct {
		Repository repositoryJSON `json:"repository"`
	}
	r.admin("CreateRepository", map[string]any{"repositoryName": "secret",
		"encryptionConfiguration": map[string]string{"encryptionType": "KMS", "kmsKey": "team-secret"}}, &created)
	if created.Repository.EncryptionConfiguration != (encryption{EncryptionType: "KMS", KmsKey: "team-secret"}) {
		t.Fatalf("created %+v", created.Repository)
	}
	if _, err := ring.CurrentVersion(ctx, "team-secret"); err != nil {
		t.Fatalf("repository key not created in the keyring: %v", err)
	}
	shared := bytes.Repeat([]byte("shared layer "), 50000)
	mounted := bytes.Repeat([]byte("mounted layer "), 40000)
	only := bytes.Repeat([]byte("only in secret "), 60000)
	sd, md, od := r.pushBlob("secret", shared), r.pushBlob("secret", mounted), r.pushBlob("secret", only)
	l, _ := r.st.Blob(od.String())
	if len(l.Keys) != 1 || l.Keys[0].KeyName != "team-secret" {
		t.Fatalf("layout keys %v", l.Keys)
	}
	// Pushed again to a default-key repository, and mounted into another.
	r.pushBlob("public", shared)
	resp := r.do("POST", "/v2/other/blobs/uploads/?mount="+md.String()+"&from=secret", nil)
	expect(t, resp, http.StatusCreated)
	if failed, err := r.srv.keyPass(ctx, true); err != nil || failed != 0 {
		t.Fatal(failed, err)
	}
	for _, d := range []digest.Digest{sd, md} {
		l, _ := r.st.Blob(d.String())
		if len(l.Keys) != 2 || l.Keys[0].KeyName != "team-secret" || l.Keys[1].KeyName != keys.DefaultKeyName {
			t.Fatalf("%s: keys %v, want a copy under team-secret and one under default", d, l.Keys)
		}
	}
	if items, _, _ := r.st.WrappedKeys("", 10, true); len(items) != 0 {
		t.Fatalf("needs left: %+v", items)
	}
	// What a thief keeps: the layout of the blob only secret had, and its
	// shard files.
	stolen := proto.Clone(l).(*pb.BlobLayout)
	var shardBytes int
	filepath.WalkDir(r.dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			for _, seg := range stolen.Segments {
				if bytes.Contains([]byte(p), []byte(seg.Id)) {
					b, _ := os.ReadFile(p)
					shardBytes += len(b)
				}
			}
		}
		return nil
	})
	if shardBytes == 0 {
		t.Fatal("found no shard file of the blob")
	}

	var del struct {
		KeyDestroyed string `json:"keyDestroyed"`
	}
	r.admin("DeleteRepository", map[string]any{"repositoryName": "secret", "force": true}, &del)
	if del.KeyDestroyed != "team-secret" {
		t.Fatalf("DeleteRepository: keyDestroyed %q", del.KeyDestroyed)
	}
	if _, err := r.srv.layoutSealer(ctx, stolen, "secret"); !errors.Is(err, keys.ErrKeyDestroyed) {
		t.Fatalf("the stolen layout's data key: err = %v, want ErrKeyDestroyed", err)
	}
	if _, err := keys.Unwrap(ctx, ring, wrappedFromPB(stolen.Keys[0])); !errors.Is(err, keys.ErrKeyDestroyed) {
		t.Fatalf("unwrap after shredding: %v", err)
	}
	// A full pass afterwards is clean: copies under the destroyed key are
	// counted, not failures (so later rotations can still retire).
	r.admin("RotateKey", map[string]any{"rotate": false}, nil)
	var st struct{ Job KeyJobStatus }
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if r.admin("GetKeyRotationStatus", map[string]any{}, &st); st.Job.State != "running" || time.Now().After(deadline) {
			break
		}
	}
	if st.Job.State != "done" || st.Job.Failed != 0 || st.Job.Destroyed < 2 {
		t.Fatalf("full pass after shredding: %+v", st.Job)
	}
	// Shared blobs read on through the repositories that keep them.
	if got := expect(t, r.do("GET", "/v2/public/blobs/"+sd.String(), nil), 200); !bytes.Equal(got, shared) {
		t.Fatal("shared blob lost with the deleted repository's key")
	}
	if got := expect(t, r.do("GET", "/v2/other/blobs/"+md.String(), nil), 200); !bytes.Equal(got, mounted) {
		t.Fatal("mounted blob lost with the deleted repository's key")
	}
	// A key name is never reused.
	resp = r.do("POST", "/admin/v1/CreateRepository", []byte(`{"repositoryName":"secret","encryptionConfiguration":{"encryptionType":"KMS","kmsKey":"team-secret"}}`))
	if b := readAll(t, resp); resp.StatusCode != 400 || !bytes.Contains(b, []byte("destroyed")) {
		t.Fatalf("recreating with a destroyed key: %d %s", resp.StatusCode, b)
	}
	// Bad encryption configurations change nothing.
	for _, body := range []string{
		`{"repositoryName":"x","encryptionConfiguration":{"encryptionType":"ROT13"}}`,
		`{"repositoryName":"x","encryptionConfiguration":{"encryptionType":"AES256","kmsKey":"k"}}`,
		`{"repositoryName":"x","encryptionConfiguration":{"encryptionType":"KMS","kmsKey":"bad key!"}}`,
	} {
		resp := r.do("POST", "/admin/v1/CreateRepository", []byte(body))
		if b := readAll(t, resp); resp.StatusCode != 400 {
			t.Fatalf("%s: %d %s", body, resp.StatusCode, b)
		}
	}
	if _, err := r.st.Repository("x"); !errors.Is(err, metastore.ErrRepoUnknown) {
		t.Fatalf("a refused CreateRepository created x: %v", err)
	}
}

// A frontend whose keyring is not the one the registry's data keys were
// wrapped with is told so (serve stops on it).
func TestWrongKeyringIsRefused(t *testing.T) {
	r, _ := newKeyedRegistry(t)
	r.pushImage("app", "v1", []byte("layer"))
	if err := r.srv.CheckKeys(t.Context(), 16); err != nil {
		t.Fatalf("the right keyring: %v", err)
	}
	other, err := keys.OpenKeyring(filepath.Join(t.TempDir(), "other"), true)
	if err != nil {
		t.Fatal(err)
	}
	wrong := New(Config{Keys: other}, r.srv.meta, r.srv.blobstore())
	if err := wrong.CheckKeys(context.Background(), 16); !errors.Is(err, ErrWrongKeys) {
		t.Fatalf("another keyring: err = %v, want ErrWrongKeys", err)
	}
}

// A pass asked for while one runs is queued behind it, not merged into it
// (the running one may have read the key versions before a rotation).
func TestKeyPassQueuedBehindRunningOne(t *testing.T) {
	r, ring := newKeyedRegistry(t)
	for i := range 20 {
		r.pushBlob("q", []byte(fmt.Sprintf("blob %d", i)))
	}
	first := r.srv.StartKeyPass("first")
	if _, err := ring.Rotate(keys.DefaultKeyName); err != nil {
		t.Fatal(err)
	}
	second := r.srv.StartKeyPass("second")
	if first == second {
		t.Fatal("the second request joined the running pass")
	}
	select {
	case <-second:
	case <-time.After(30 * time.Second):
		t.Fatal("queued pass did not finish")
	}
	<-first
	st := r.srv.KeyJobStatus()
	if st.Reason != "second" || st.State != "done" {
		t.Fatalf("status after both passes: %+v", st)
	}
	if v := versions(t, r.st, keys.DefaultKeyName); v["1"] != 0 || v["2"] != 20 {
		t.Fatalf("copies by version after the rotation's pass: %v", v)
	}
}
