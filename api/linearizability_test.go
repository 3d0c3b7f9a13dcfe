package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/opencontainers/go-digest"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/cluster"
	"github.com/strata-registry/strata/cluster/clustertest"
)

// registerModel is one tag as a register: puts set it, gets read it; 0 means
// the tag does not exist.
var registerModel = porcupine.Model{
	Init: func() any { return 0 },
	Step: func(state, input, output any) (bool, any) {
		in := input.(regOp)
		if in.put {
			return true, in.value
		}
		return output.(int) == state.(int), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(regOp)
		if in.put {
			return fmt.Sprintf("put(%d)", in.value)
		}
		return fmt.Sprintf("get() -> %d", output.(int))
	},
}

type regOp struct {
	put   bool
	value int
}

// Tag PUTs and GETs through five frontends (one on each meta node, two
// stateless ones that reach the meta nodes over gRPC) while the leader is
// killed: the history of acknowledged operations must be linearizable.
func TestTagHistoryIsLinearizableAcrossFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node history check")
	}
	c := clustertest.Start(t, 3, clustertest.Options{})
	dir := t.TempDir()
	ls, err := blobstore.OpenLocal("d0", filepath.Join(dir, "shards"))
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	nodes := []blobstore.Node{{Info: blobstore.NodeInfo{ID: "d0", Zone: "d0"}, Shards: ls}}
	blobs, err := blobstore.New(blobstore.Config{}, func() []blobstore.Node { return nodes })
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	serve := func(meta Metadata) {
		hs := httptest.NewServer(New(Config{}, meta, blobs).Handler())
		t.Cleanup(hs.Close)
		urls = append(urls, hs.URL)
	}
	var seeds []string
	for _, n := range c.Nodes {
		serve(n.Meta)
		seeds = append(seeds, n.GRPCAddr)
	}
	for i := 0; i < 2; i++ {
		peers := cluster.NewPeers(seeds, nil)
		t.Cleanup(func() { peers.Close() })
		meta, err := cluster.NewMeta(cluster.MetaConfig{Peers: peers})
		if err != nil {
			t.Fatal(err)
		}
		serve(meta)
	}

	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := digest.FromBytes(cfg)
	resp, err := http.Post(urls[3]+"/v2/lin/blobs/uploads/?digest="+cd.String(), "application/octet-stream", bytes.NewReader(cfg))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("config push: %v %v", err, resp)
	}
	manifest := func(v int) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[],"annotations":{"v":"%d"}}`, cd, len(cfg), v))
	}
	client := &http.Client{Timeout: 20 * time.Second}
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }

	var (
		mu      sync.Mutex
		history []porcupine.Operation
		nextVal atomic.Int64
		stop    atomic.Bool
		wg      sync.WaitGroup
		acked   atomic.Int64
	)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			// A bounded history keeps the checker fast (it is exponential
			// in the worst case); pace the operations over the run.
			for ops := 0; !stop.Load() && ops < 80; ops++ {
				time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
				url := urls[rng.IntN(len(urls))]
				op := porcupine.Operation{ClientId: w, Call: now()}
				if rng.IntN(2) == 0 {
					v := int(nextVal.Add(1))
					op.Input = regOp{put: true, value: v}
					req, _ := http.NewRequest("PUT", url+"/v2/lin/manifests/t", bytes.NewReader(manifest(v)))
					req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
					resp, err := client.Do(req)
					op.Return = now()
					switch {
					case err == nil && resp.StatusCode == http.StatusCreated:
						acked.Add(1)
					case err == nil && resp.StatusCode < 500:
						resp.Body.Close()
						t.Errorf("put refused: %d", resp.StatusCode)
						continue
					default:
						// Unknown outcome: it may take effect at any time later.
						op.Return = math.MaxInt64
					}
					if resp != nil {
						resp.Body.Close()
					}
				} else {
					op.Input = regOp{}
					resp, err := client.Get(url + "/v2/lin/manifests/t")
					op.Return = now()
					if err != nil {
						continue
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch resp.StatusCode {
					case http.StatusOK:
						var m struct{ Annotations map[string]string }
						if err := json.Unmarshal(body, &m); err != nil {
							t.Errorf("get body: %v", err)
							continue
						}
						var v int
						fmt.Sscan(m.Annotations["v"], &v)
						op.Output = v
					case http.StatusNotFound:
						op.Output = 0
					default:
						continue // failed read: no information
					}
				}
				mu.Lock()
				history = append(history, op)
				mu.Unlock()
			}
		}(w)
	}
	time.Sleep(1500 * time.Millisecond)
	leader := c.Leader()
	c.Kill(leader)
	t.Logf("killed leader %s at %v", leader.ID, time.Since(start))
	time.Sleep(3 * time.Second)
	stop.Store(true)
	wg.Wait()
	if acked.Load() < 10 {
		t.Fatalf("only %d puts acknowledged", acked.Load())
	}
	res, info := porcupine.CheckOperationsVerbose(registerModel, history, 60*time.Second)
	t.Logf("%d operations, %d acknowledged puts: %v", len(history), acked.Load(), res)
	if res != porcupine.Ok {
		path := filepath.Join(t.TempDir(), "history.html")
		if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
			t.Logf("visualization: %s", path)
		}
		t.Fatalf("tag history is not linearizable: %v", res)
	}
}

// The checker itself rejects a stale read: a get that starts after a put
// was acknowledged must not return the older value.
func TestRegisterModelRejectsStaleRead(t *testing.T) {
	history := []porcupine.Operation{
		{ClientId: 0, Input: regOp{put: true, value: 1}, Call: 0, Return: 10},
		{ClientId: 1, Input: regOp{put: true, value: 2}, Call: 20, Return: 30},
		{ClientId: 2, Input: regOp{}, Call: 40, Output: 1, Return: 50},
	}
	if porcupine.CheckOperations(registerModel, history) {
		t.Fatal("a stale read passed the linearizability check")
	}
	history[2].Output = 2
	if !porcupine.CheckOperations(registerModel, history) {
		t.Fatal("a linearizable history failed the check")
	}
}
