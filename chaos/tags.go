package chaos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
)

// TagConfig configures a TagWorkload.
type TagConfig struct {
	// Frontends are the base URLs the clients spread their requests over.
	Frontends []string
	// Repo is the repository whose tags are moved. Default "chaos-tags".
	Repo string
	// Clients is how many concurrent clients move and read tags. Default 4.
	Clients int
	// Keys is how many tags are in play at once. Default 3.
	Keys int
	// OpsPerKey is how many operations a tag sees before the clients move
	// on to a fresh tag name in its place: it bounds each partition of the
	// history the checker has to search. Default 60.
	OpsPerKey int
	// Gap is the longest pause between two operations of one client.
	// Default 60ms.
	Gap time.Duration
	// DeleteShare is the fraction of operations that delete the tag.
	// Default 0.1.
	DeleteShare float64
	// Timeout bounds each request. Default 10s.
	Timeout time.Duration
	// Seed makes the choices repeatable.
	Seed uint64
	// History receives violations (bytes that do not match their digest)
	// and unexpected answers.
	History *History
}

// TagOp is one operation on a tag as the clients saw it: the history the
// linearizability check runs on. Times are nanoseconds since the workload
// started.
type TagOp struct {
	Client   int    `json:"client"`
	Kind     string `json:"kind"` // put, get, delete
	Tag      string `json:"tag"`
	Value    int    `json:"value,omitempty"` // put: the value written; get: the value read (0: no such tag)
	Result   string `json:"result"`          // ok, absent, ambiguous (outcome unknown), failed (a get with no answer)
	Frontend string `json:"frontend"`
	Call     int64  `json:"call_ns"`
	Return   int64  `json:"return_ns"`
	Error    string `json:"error,omitempty"`
}

// Results of a TagOp.
const (
	TagOK        = "ok"
	TagAbsent    = "absent"
	TagAmbiguous = "ambiguous"
	TagFailed    = "failed"
)

// TagWorkload moves tags (PUT of a manifest under a tag), deletes them and
// reads them, through different frontends at once, and records every
// operation with its call and return time. Each PUT writes a manifest with
// a value no other PUT uses, so a read says which write it saw; Check then
// decides with porcupine whether the history is linearizable for a register
// per tag (the model of api/linearizability_test.go, with deletes).
type TagWorkload struct {
	cfg     TagConfig
	start   time.Time
	config  Blob
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	nextVal atomic.Int64

	mu   sync.Mutex
	ops  []TagOp
	keys []keySlot
}

type keySlot struct {
	gen int
	ops int
}

// StartTagWorkload pushes the config blob every manifest references
// (retrying for up to a minute) and starts the clients.
func StartTagWorkload(ctx context.Context, cfg TagConfig) (*TagWorkload, error) {
	if cfg.Repo == "" {
		cfg.Repo = "chaos-tags"
	}
	if cfg.Clients == 0 {
		cfg.Clients = 4
	}
	if cfg.Keys == 0 {
		cfg.Keys = 3
	}
	if cfg.OpsPerKey == 0 {
		cfg.OpsPerKey = 60
	}
	if cfg.Gap == 0 {
		cfg.Gap = 60 * time.Millisecond
	}
	if cfg.DeleteShare == 0 {
		cfg.DeleteShare = 0.1
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.History == nil {
		cfg.History = NewHistory()
	}
	tw := &TagWorkload{cfg: cfg, keys: make([]keySlot, cfg.Keys)}
	tw.config = LiteralBlob([]byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"Labels":{"chaos.tags":"%x"}}}`, cfg.Seed)))
	deadline := time.Now().Add(time.Minute)
	for i := 0; ; i++ {
		c := NewClient(cfg.Frontends[i%len(cfg.Frontends)])
		pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		err := c.PushWhole(pctx, cfg.Repo, tw.config)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("chaos: tag workload: pushing its config blob: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	cctx, cancel := context.WithCancel(context.Background())
	tw.cancel = cancel
	tw.start = time.Now()
	for i := 0; i < cfg.Clients; i++ {
		tc := &tagClient{tw: tw, id: i, r: rand.New(rand.NewPCG(cfg.Seed, 3000+uint64(i)))}
		for _, fe := range cfg.Frontends {
			tc.clients = append(tc.clients, &Client{Base: fe, HTTP: &http.Client{Transport: NewTransport(), Timeout: cfg.Timeout}})
		}
		tw.wg.Add(1)
		go func() {
			defer tw.wg.Done()
			tc.run(cctx)
		}()
	}
	return tw, nil
}

// Started is when the workload started: TagOp times count from it.
func (tw *TagWorkload) Started() time.Time { return tw.start }

// Stop ends the clients and waits for them.
func (tw *TagWorkload) Stop() {
	tw.cancel()
	tw.wg.Wait()
}

// Ops returns the recorded operations, in order of call.
func (tw *TagWorkload) Ops() []TagOp {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	out := append([]TagOp(nil), tw.ops...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Call < out[j].Call })
	return out
}

// key picks a slot and returns its current tag name, counting the
// operation against the slot's budget.
func (tw *TagWorkload) key(r *rand.Rand) string {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	i := r.IntN(len(tw.keys))
	k := &tw.keys[i]
	if k.ops >= tw.cfg.OpsPerKey {
		k.gen++
		k.ops = 0
	}
	k.ops++
	return fmt.Sprintf("k%d-g%d", i, k.gen)
}

func (tw *TagWorkload) record(op TagOp) {
	tw.mu.Lock()
	tw.ops = append(tw.ops, op)
	tw.mu.Unlock()
}

func (tw *TagWorkload) now() int64 { return int64(time.Since(tw.start)) }

// manifest is the manifest written for value v.
func (tw *TagWorkload) manifest(v int) []byte {
	return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[],"annotations":{"chaos.value":"%d"}}`,
		MediaTypeManifest, MediaTypeConfig, tw.config.Digest, tw.config.Size, v))
}

type tagClient struct {
	tw      *TagWorkload
	id      int
	clients []*Client
	r       *rand.Rand
}

func (tc *tagClient) run(ctx context.Context) {
	cfg := tc.tw.cfg
	for ctx.Err() == nil {
		sleepCtx(ctx, time.Duration(tc.r.Int64N(int64(cfg.Gap)+1)))
		if ctx.Err() != nil {
			return
		}
		c := tc.clients[tc.r.IntN(len(tc.clients))]
		tag := tc.tw.key(tc.r)
		op := TagOp{Client: tc.id, Tag: tag, Frontend: c.Base}
		x := tc.r.Float64()
		switch {
		case x < cfg.DeleteShare:
			op.Kind = "delete"
			op.Call = tc.tw.now()
			err := c.DeleteManifest(ctx, cfg.Repo, tag)
			op.Return = tc.tw.now()
			switch {
			case err == nil:
				op.Result = TagOK
			case ErrorCode(err) == "MANIFEST_UNKNOWN":
				op.Result = TagAbsent
			default:
				op.Result, op.Error = TagAmbiguous, err.Error()
				tc.unexpected(ctx, "DELETE tag "+tag, err)
			}
		case x < cfg.DeleteShare+(1-cfg.DeleteShare)/2:
			op.Kind = "put"
			op.Value = int(tc.tw.nextVal.Add(1))
			op.Call = tc.tw.now()
			err := c.PutManifest(ctx, cfg.Repo, tag, MediaTypeManifest, tc.tw.manifest(op.Value))
			op.Return = tc.tw.now()
			if err == nil {
				op.Result = TagOK
			} else {
				op.Result, op.Error = TagAmbiguous, err.Error()
				tc.unexpected(ctx, "PUT tag "+tag, err)
			}
		default:
			op.Kind = "get"
			op.Call = tc.tw.now()
			v, err := tc.get(ctx, c, tag)
			op.Return = tc.tw.now()
			switch {
			case err == nil:
				op.Result, op.Value = TagOK, v
			case ErrorCode(err) == "MANIFEST_UNKNOWN":
				op.Result = TagAbsent
			default:
				op.Result, op.Error = TagFailed, err.Error()
				if isViolation(err) {
					tc.tw.cfg.History.Violation("tag read %s:%s through %s: %v", cfg.Repo, tag, c.Base, err)
				} else {
					tc.unexpected(ctx, "GET tag "+tag, err)
				}
			}
		}
		if ctx.Err() != nil && op.Result != TagOK && op.Result != TagAbsent {
			// Cut short by the end of the run: an ambiguous write is still
			// worth keeping (it may have landed), a failed read is not.
			if op.Kind == "get" {
				continue
			}
		}
		tc.tw.record(op)
	}
}

// unexpected files error answers that faults do not explain: anything but
// transport errors, timeouts and 503s.
func (tc *tagClient) unexpected(ctx context.Context, what string, err error) {
	if ctx.Err() != nil || IsTransient(err) || errors.Is(err, context.DeadlineExceeded) {
		return
	}
	if IsServerError(err) {
		tc.tw.cfg.History.ServerError("%s in %s: %v", what, tc.tw.cfg.Repo, err)
		return
	}
	var pe *ProtocolError
	if errors.As(err, &pe) {
		tc.tw.cfg.History.Violation("%s in %s: %v", what, tc.tw.cfg.Repo, err)
		return
	}
	tc.tw.cfg.History.Unexpected("%s in %s: %v", what, tc.tw.cfg.Repo, err)
}

// get reads a tag and returns the value of the manifest it names. The
// body must hash to the digest the server announces, and be a manifest this
// workload wrote.
func (tc *tagClient) get(ctx context.Context, c *Client, tag string) (int, error) {
	repo := tc.tw.cfg.Repo
	resp, err := c.do(ctx, http.MethodGet, c.manifestURL(repo, tag), nil, 0, map[string]string{"Accept": MediaTypeManifest})
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, statusError("GET tag", resp)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	sum := sha256.Sum256(body)
	if got, want := resp.Header.Get("Docker-Content-Digest"), "sha256:"+hex.EncodeToString(sum[:]); got != want {
		return 0, violationf("WRONG CONTENT: GET %s:%s: the body hashes to %s, the server announced %q", repo, tag, want, got)
	}
	var m struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return 0, violationf("WRONG CONTENT: GET %s:%s: not a manifest: %v", repo, tag, err)
	}
	v, err := strconv.Atoi(m.Annotations["chaos.value"])
	if err != nil || v <= 0 || !bytes.Equal(body, tc.tw.manifest(v)) {
		return 0, violationf("WRONG CONTENT: GET %s:%s: a manifest this workload never wrote: %.200s", repo, tag, body)
	}
	return v, nil
}

// tagInput and tagOutput are the porcupine operation's input and output.
type tagInput struct {
	kind  string
	tag   string
	value int
}

type tagOutput struct {
	result string
	value  int
}

// TagModel is a register per tag: a put sets it, a delete clears it (0),
// a get must see the current value (0 when the tag does not exist). A
// delete answered 404 says the tag did not exist.
var TagModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(tagInput).tag
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return 0 },
	Step: func(state, input, output any) (bool, any) {
		in, out := input.(tagInput), output.(tagOutput)
		switch in.kind {
		case "put":
			return true, in.value
		case "delete":
			if out.result == TagAbsent {
				return state.(int) == 0, 0
			}
			return true, 0
		default:
			return out.value == state.(int), state
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(tagInput), output.(tagOutput)
		switch in.kind {
		case "put":
			return fmt.Sprintf("put(%s, %d) %s", in.tag, in.value, out.result)
		case "delete":
			return fmt.Sprintf("delete(%s) %s", in.tag, out.result)
		default:
			return fmt.Sprintf("get(%s) -> %d", in.tag, out.value)
		}
	},
	DescribeState: func(state any) string { return strconv.Itoa(state.(int)) },
}

// LinearizabilityResult is the outcome of CheckTags.
type LinearizabilityResult struct {
	Result     string `json:"result"` // ok, illegal, unknown (timed out)
	Operations int    `json:"operations"`
	Tags       int    `json:"tags"`
	Puts       int    `json:"puts_acknowledged"`
	Ambiguous  int    `json:"writes_ambiguous"`
	// Pruned are ambiguous puts left out of the check because no read
	// saw their value: they change nothing any client observed.
	Pruned     int    `json:"ambiguous_puts_pruned"`
	Gets       int    `json:"gets"`
	Deletes    int    `json:"deletes_acknowledged"`
	DurationMS int64  `json:"check_ms"`
	Visual     string `json:"visualization,omitempty"` // HTML file, when not ok
	// IllegalTags are the tags whose own history is not linearizable.
	IllegalTags []string `json:"illegal_tags,omitempty"`
}

// CheckTagHistory decides whether ops are linearizable under TagModel.
// Ambiguous writes may take effect at any time after their call (their
// return is infinitely late); ambiguous puts whose value no read saw are
// left out first, which changes nothing (such a put can always be placed
// last). Failed reads carry no information and are left out. When the
// history is not linearizable and visual is not empty, porcupine's
// visualization is written there.
func CheckTagHistory(ops []TagOp, timeout time.Duration, visual string) LinearizabilityResult {
	var res LinearizabilityResult
	seen := map[int]bool{}
	tags := map[string]bool{}
	for _, op := range ops {
		if op.Kind == "get" && op.Result == TagOK {
			seen[op.Value] = true
		}
	}
	var hist []porcupine.Operation
	for _, op := range ops {
		in := tagInput{kind: op.Kind, tag: op.Tag, value: op.Value}
		out := tagOutput{result: op.Result}
		ret := op.Return
		switch {
		case op.Kind == "get" && op.Result == TagFailed:
			continue
		case op.Kind == "get":
			res.Gets++
			if op.Result == TagOK {
				out.value = op.Value
			}
			in.value = 0
		case op.Result == TagAmbiguous:
			res.Ambiguous++
			if op.Kind == "put" && !seen[op.Value] {
				res.Pruned++
				continue
			}
			ret = math.MaxInt64
		case op.Kind == "put":
			res.Puts++
		case op.Kind == "delete" && op.Result == TagOK:
			res.Deletes++
		}
		tags[op.Tag] = true
		hist = append(hist, porcupine.Operation{ClientId: op.Client, Input: in, Call: op.Call, Output: out, Return: ret})
	}
	res.Operations, res.Tags = len(hist), len(tags)
	began := time.Now()
	r, info := porcupine.CheckOperationsVerbose(TagModel, hist, timeout)
	res.DurationMS = time.Since(began).Milliseconds()
	switch r {
	case porcupine.Ok:
		res.Result = "ok"
	case porcupine.Illegal:
		res.Result = "illegal"
	default:
		res.Result = "unknown"
	}
	if r != porcupine.Ok && visual != "" {
		if err := porcupine.VisualizePath(TagModel, info, visual); err == nil {
			res.Visual = visual
		}
	}
	if r == porcupine.Illegal {
		// Which tags: each is a partition of its own.
		for _, part := range TagModel.Partition(hist) {
			if porcupine.CheckOperationsTimeout(TagModel, part, 10*time.Second) == porcupine.Illegal {
				res.IllegalTags = append(res.IllegalTags, part[0].Input.(tagInput).tag)
			}
		}
	}
	return res
}

// DescribeTag renders the operations on one tag, in order of call, with
// wall-clock times (start is the workload's start), for a post-mortem.
func DescribeTag(ops []TagOp, tag string, start time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "operations on tag %s (times are wall clock; [call, return]; writes whose outcome is unknown are ambiguous)\n", tag)
	var list []TagOp
	for _, op := range ops {
		if op.Tag == tag {
			list = append(list, op)
		}
	}
	sort.SliceStable(list, func(i, j int) bool { return list[i].Call < list[j].Call })
	at := func(ns int64) string { return start.Add(time.Duration(ns)).UTC().Format("15:04:05.000000") }
	for _, op := range list {
		v := ""
		switch {
		case op.Kind == "put" || (op.Kind == "get" && op.Result == TagOK):
			v = strconv.Itoa(op.Value)
		}
		fmt.Fprintf(&b, "  client %d  %-6s %-7s %-9s [%s, %s]  via %s", op.Client, op.Kind, v, op.Result, at(op.Call), at(op.Return), op.Frontend)
		if op.Error != "" {
			fmt.Fprintf(&b, "  (%.120s)", op.Error)
		}
		b.WriteString("\n")
	}
	return b.String()
}
