package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cpb "github.com/strata-registry/strata/cluster/clusterpb"
	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Meta is the metadata service as every role sees it. On a node with the
// meta role it applies proposals through its own Raft when it leads, and
// forwards them to the leader over gRPC otherwise; on a node without it
// (a stateless frontend, a storage node) it sends everything to the meta
// nodes it knows. Reads follow the consistency rules of the read path:
// tags, listings, repositories and upload sessions are linearizable (the
// leader after VerifyLeader and applying everything committed) unless stale
// reads are configured; anything addressed by digest is served by the local
// replica when it has it.
//
// Proposals carry a request id, so Meta retries them through leader changes
// without ever applying one twice.
type Meta struct {
	node  *Node            // nil without the meta role
	store *metastore.Store // nil without the meta role
	peers *Peers

	// Stale, when set, lets reads that would be linearizable be served by
	// any replica whose last contact with the leader is within MaxStaleness.
	stale        bool
	maxStaleness time.Duration

	seed atomic.Uint32 // round-robin over seeds

	// leaderHint, on a node without the meta role, is the gRPC address of
	// the meta node that said last it leads (every Read and Propose answer
	// names the leader: leaderHeader). Requests that need the leader go
	// there directly instead of to a seed that would relay them, which two
	// times in three with three meta nodes cost a second gRPC hop. Cleared
	// when a request through it fails, so the next one goes to the seeds.
	leaderHint atomic.Pointer[string]

	// leaderAddr, on a meta node, is the leader's gRPC address as last
	// looked up in the node registry: every answer names the leader, and a
	// registry read per answer was a tenth of the leader's CPU on reads.
	leaderAddr atomic.Pointer[leaderAddr]
}

// leaderAddr is a leader's id and gRPC address, and when they were read.
type leaderAddr struct {
	id, addr string
	at       time.Time
}

// leaderAddrTTL is how long a meta node answers with the leader address it
// looked up: a node that restarts with another address under the same id
// is named at its new address within this long (until then requests sent to
// the old one fail over to the seeds).
const leaderAddrTTL = time.Second

// leaderHeader is the gRPC response header in which meta nodes name the
// leader's gRPC address.
const leaderHeader = "strata-leader"

// MetaConfig configures a Meta.
type MetaConfig struct {
	Node  *Node
	Store *metastore.Store
	Peers *Peers
	// ReadConsistency is "linearizable" (default) or "stale".
	ReadConsistency string
	// MaxStaleness bounds stale reads (default 5s).
	MaxStaleness time.Duration
}

// NewMeta returns the metadata service of a node.
func NewMeta(cfg MetaConfig) (*Meta, error) {
	m := &Meta{node: cfg.Node, store: cfg.Store, peers: cfg.Peers, maxStaleness: cfg.MaxStaleness}
	switch cfg.ReadConsistency {
	case "", "linearizable":
	case "stale":
		m.stale = true
	default:
		return nil, fmt.Errorf("cluster: read consistency %q: want linearizable or stale", cfg.ReadConsistency)
	}
	if m.maxStaleness <= 0 {
		m.maxStaleness = 5 * time.Second
	}
	if (m.node == nil) != (m.store == nil) {
		return nil, errors.New("cluster: a meta node needs both its Raft node and its store")
	}
	if m.peers == nil {
		if m.node == nil {
			return nil, errors.New("cluster: a node without the meta role needs peers to reach the meta nodes")
		}
		m.peers = NewPeers(nil, nil)
	}
	return m, nil
}

// Node returns the local Raft node, or nil.
func (m *Meta) Node() *Node { return m.node }

// Store returns the local state machine, or nil.
func (m *Meta) Store() *metastore.Store { return m.store }

// newRequestID draws a proposal's request id.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// retriable reports errors that a retry after a short wait may clear: no
// leader, a leader change, an unreachable peer.
func retriable(err error) bool {
	return errors.Is(err, ErrNotLeader) || errors.Is(err, ErrNoLeader) || errors.Is(err, ErrUnreachable) ||
		errors.Is(err, context.DeadlineExceeded)
}

// retry runs op until it succeeds, fails for good, or ctx ends, giving each
// attempt at most attemptTimeout. Without a deadline in ctx it gives up
// after defaultRetryFor.
func retry(ctx context.Context, op func(ctx context.Context) error) error {
	return retryEach(ctx, attemptTimeout, op)
}

// retryEach is retry with a chosen bound per attempt (0: none, for calls
// that legitimately run long, such as a garbage collection).
func retryEach(ctx context.Context, each time.Duration, op func(ctx context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultRetryFor)
		defer cancel()
	}
	wait := 20 * time.Millisecond
	for {
		// Each attempt gets its own bound, so that a peer that vanished
		// (its connection hangs until the dial times out) costs one attempt,
		// not the whole budget. Retried proposals keep their request id, so
		// an attempt that timed out after committing is not applied twice.
		actx, cancel := ctx, context.CancelFunc(func() {})
		if each > 0 {
			actx, cancel = context.WithTimeout(ctx, each)
		}
		err := op(actx)
		cancel()
		if err == nil || !retriable(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		if wait < 500*time.Millisecond {
			wait *= 2
		}
	}
}

// defaultRetryFor bounds retries through a leader change when the caller
// set no deadline. Elections here take well under 2 s.
const defaultRetryFor = 10 * time.Second

// attemptTimeout bounds one attempt of a proposal or read (a forwarded call
// included).
const attemptTimeout = 3 * time.Second

// Propose replicates cmd and returns once it is applied: nil, or the
// metastore error that refused it.
func (m *Meta) Propose(ctx context.Context, cmd *pb.Command) error {
	if cmd.TimeUnixNano == 0 {
		cmd.TimeUnixNano = time.Now().UnixNano()
	}
	if cmd.RequestId == "" {
		cmd.RequestId = newRequestID()
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return err
	}
	return retry(ctx, func(ctx context.Context) error { return m.proposeVia(ctx, data, cmd, 0, false) })
}

// propose makes one attempt: apply locally when leading, else forward. A
// request that arrived over gRPC (relay) carries the hops it has made: the
// origin sends 0, a node that is not the leader relays it once with 1, and
// a node that receives it with 1 and does not lead refuses, so that the
// origin retries with fresh knowledge of the leader.
func (m *Meta) proposeVia(ctx context.Context, data []byte, cmd *pb.Command, hops uint32, relay bool) error {
	if m.node != nil && m.node.Shutdown() {
		return ErrShutdown
	}
	if m.node != nil && m.node.IsLeader() {
		if cmd == nil {
			cmd = &pb.Command{}
			if err := proto.Unmarshal(data, cmd); err != nil {
				return fmt.Errorf("%w: %v", metastore.ErrCommandInvalid, err)
			}
		}
		return m.node.Propose(ctx, cmd)
	}
	if relay && hops > 0 {
		return ErrNotLeader // relayed once already: let the origin retry
	}
	c, err := m.target(ctx)
	if err != nil {
		return err
	}
	if relay {
		hops++
	}
	var md metadata.MD
	resp, err := c.Propose(ctx, &cpb.ProposeRequest{Command: data, Hops: hops}, grpc.Header(&md))
	m.learnLeader(md, err)
	if err != nil {
		return fromStatus(err)
	}
	return resultErr(resp.Result)
}

// target returns a client for where a request should go: the leader when
// this node knows it (from its registry, or from the last answer of a meta
// node), else the next seed.
func (m *Meta) target(ctx context.Context) (cpb.ClusterClient, error) {
	if m.node != nil {
		addr, err := m.leaderGRPC()
		if err != nil {
			return nil, err
		}
		return m.peers.Client(addr)
	}
	if hint := m.leaderHint.Load(); hint != nil {
		return m.peers.Client(*hint)
	}
	return m.anySeed()
}

// anySeed returns a client for the next seed, round-robin.
func (m *Meta) anySeed() (cpb.ClusterClient, error) {
	seeds := m.peers.Seeds()
	if len(seeds) == 0 {
		return nil, fmt.Errorf("%w: no meta nodes known", ErrNoLeader)
	}
	i := int(m.seed.Add(1)) % len(seeds)
	return m.peers.Client(seeds[i])
}

// learnLeader keeps, on a node without the meta role, the leader named by
// an answer's header, or forgets the hint when the request failed (the hinted
// node may be gone or no longer lead).
func (m *Meta) learnLeader(md metadata.MD, err error) {
	if m.node != nil {
		return
	}
	if err != nil {
		m.leaderHint.Store(nil)
		return
	}
	if v := md.Get(leaderHeader); len(v) == 1 && v[0] != "" {
		if old := m.leaderHint.Load(); old == nil || *old != v[0] {
			addr := v[0]
			m.leaderHint.Store(&addr)
		}
	}
}

// LeaderHint returns the leader address a node without the meta role has
// learnt from the meta nodes' answers ("" when it has none).
func (m *Meta) LeaderHint() string {
	if h := m.leaderHint.Load(); h != nil {
		return *h
	}
	return ""
}

// nameLeader sets the leaderHeader of a gRPC answer, when this node knows
// the leader.
func (m *Meta) nameLeader(ctx context.Context) {
	if m.node == nil {
		return
	}
	if addr, err := m.leaderGRPC(); err == nil {
		_ = grpc.SetHeader(ctx, metadata.Pairs(leaderHeader, addr))
	}
}

// leaderGRPC is the gRPC address of the current leader, from the registry.
func (m *Meta) leaderGRPC() (string, error) {
	id := m.node.LeaderID()
	if id == "" {
		return "", ErrNoLeader
	}
	now := time.Now()
	if c := m.leaderAddr.Load(); c != nil && c.id == id && now.Sub(c.at) < leaderAddrTTL {
		return c.addr, nil
	}
	rec, err := m.store.Node(id)
	if err != nil || rec.GrpcAddr == "" {
		return "", fmt.Errorf("%w: leader %s is not registered yet", ErrNoLeader, id)
	}
	m.leaderAddr.Store(&leaderAddr{id: id, addr: rec.GrpcAddr, at: now})
	return rec.GrpcAddr, nil
}

func resultErr(r *pb.ApplyResult) error {
	if r == nil || r.ErrorCode == "" {
		return nil
	}
	return metastore.ErrorFromCode(r.ErrorCode, r.ErrorDetail)
}

func toResult(err error) *pb.ApplyResult {
	if err == nil {
		return &pb.ApplyResult{}
	}
	return &pb.ApplyResult{ErrorCode: metastore.ErrorCode(err), ErrorDetail: err.Error()}
}

// toStatus turns a non-metastore error into a gRPC status for the wire.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotLeader), errors.Is(err, ErrNoLeader), errors.Is(err, ErrShutdown),
		errors.Is(err, ErrUnreachable), errors.Is(err, ErrLinkCut):
		// The caller may retry: through an election, or via another node.
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// fromStatus turns a gRPC error back into this package's errors.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("%w: %s", ErrUnreachable, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("%w: %s", context.DeadlineExceeded, st.Message())
	case codes.Canceled:
		return fmt.Errorf("%w: %s", context.Canceled, st.Message())
	case codes.FailedPrecondition:
		return fmt.Errorf("%w: %s", ErrNotLeader, st.Message())
	}
	return fmt.Errorf("cluster: remote: %s", st.Message())
}

// ---- reads ----

// Reads by digest used to be answered by any replica that had the object,
// but what a repository holds changes with deletes and garbage collection:
// a replica that has not applied a DELETE yet would still serve the object.
// They are linearizable like every other read (stale mode aside), and a
// replica that lacks an object never reports it absent on its own.

// read answers req at its consistency, locally when that is allowed and
// through the leader otherwise.
func (m *Meta) read(ctx context.Context, req *cpb.ReadRequest) (*cpb.ReadResponse, error) {
	if m.stale && req.Consistency == cpb.Consistency_LINEARIZABLE {
		req.Consistency = cpb.Consistency_STALE
		req.MaxStalenessMs = m.maxStaleness.Milliseconds()
	}
	var resp *cpb.ReadResponse
	err := retry(ctx, func(ctx context.Context) error {
		var err error
		resp, err = m.readVia(ctx, req, false)
		return err
	})
	return resp, err
}

// propose relays a proposal that arrived over gRPC with hops made so far.
func (m *Meta) propose(ctx context.Context, data []byte, cmd *pb.Command, hops uint32) error {
	return m.proposeVia(ctx, data, cmd, hops, true)
}

// readOnce relays a read that arrived over gRPC.
func (m *Meta) readOnce(ctx context.Context, req *cpb.ReadRequest) (*cpb.ReadResponse, error) {
	return m.readVia(ctx, req, true)
}

func (m *Meta) readVia(ctx context.Context, req *cpb.ReadRequest, relay bool) (*cpb.ReadResponse, error) {
	if m.node != nil && m.node.Shutdown() {
		return nil, ErrShutdown
	}
	if m.node != nil {
		switch {
		case m.node.IsLeader():
			if err := m.node.LinearizableRead(ctx); err != nil {
				return nil, err
			}
			return m.answer(req), nil
		case req.Consistency == cpb.Consistency_STALE &&
			m.node.FreshWithin(time.Duration(req.MaxStalenessMs)*time.Millisecond):
			if resp := m.answer(req); resp.Error == nil || !notFound(resp.Error) {
				return resp, nil
			}
			// Absent here: only the leader can say it is absent everywhere.
		}
	}
	if relay && req.Hops > 0 {
		return nil, ErrNotLeader
	}
	var c cpb.ClusterClient
	var err error
	if m.node == nil && req.Consistency == cpb.Consistency_STALE {
		c, err = m.anySeed() // any replica may answer: spread the reads
	} else {
		c, err = m.target(ctx)
	}
	if err != nil {
		return nil, err
	}
	fwd := proto.Clone(req).(*cpb.ReadRequest)
	if relay {
		fwd.Hops++
	}
	var md metadata.MD
	resp, err := c.Read(ctx, fwd, grpc.Header(&md))
	if req.Consistency != cpb.Consistency_STALE {
		m.learnLeader(md, err)
	}
	if err != nil {
		return nil, fromStatus(err)
	}
	return resp, nil
}

// notFound reports an answer that says something does not exist: a
// replica that may lag cannot give it on its own authority.
func notFound(r *pb.ApplyResult) bool {
	switch r.ErrorCode {
	case "BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "UPLOAD_UNKNOWN", "UPLOAD_NOT_STARTED", "TAG_UNKNOWN", "REPO_UNKNOWN", "NODE_UNKNOWN":
		return true
	}
	return false
}

// answer executes a read against the local state machine.
func (m *Meta) answer(req *cpb.ReadRequest) *cpb.ReadResponse {
	st := m.store
	resp := &cpb.ReadResponse{}
	var rec proto.Message
	var err error
	switch req.Kind {
	case cpb.ReadKind_BLOB:
		rec, err = st.Blob(req.Digest)
	case cpb.ReadKind_REPO_BLOB:
		rec, err = st.RepoBlob(req.Repo, req.Digest)
	case cpb.ReadKind_UPLOAD:
		rec, err = st.Upload(req.Id)
	case cpb.ReadKind_MANIFEST:
		rec, err = st.Manifest(req.Repo, req.Digest)
	case cpb.ReadKind_TAG:
		rec, err = st.Tag(req.Repo, req.Tag)
	case cpb.ReadKind_MANIFEST_BY_TAG:
		rec, err = st.ManifestByTag(req.Repo, req.Tag)
	case cpb.ReadKind_REPOSITORY:
		rec, err = st.Repository(req.Repo)
	case cpb.ReadKind_BLOB_REPOSITORIES:
		resp.Names, err = st.BlobRepositories(req.Digest, int(req.N))
	case cpb.ReadKind_TAGS:
		resp.Names, resp.More, err = st.Tags(req.Repo, req.Last, int(req.N))
	case cpb.ReadKind_REPOSITORIES:
		resp.Names, resp.More, err = st.Repositories(req.Last, int(req.N))
	case cpb.ReadKind_REFERRERS:
		resp.Descriptors, err = st.Referrers(req.Repo, req.Digest)
	case cpb.ReadKind_NODES:
		resp.Nodes, err = st.Nodes()
	case cpb.ReadKind_IMAGES:
		var imgs []metastore.ImageInfo
		imgs, err = st.Images(req.Repo)
		for _, im := range imgs {
			resp.Images = append(resp.Images, &cpb.Image{Digest: im.Digest, Tags: im.Tags,
				PushedUnixNano: im.PushedNs, LastPulledUnixNano: im.LastPulledNs, Subject: im.Subject})
		}
	case cpb.ReadKind_WRAPPED_KEYS:
		var items []metastore.KeyItem
		items, resp.Next, err = st.WrappedKeys(req.Last, int(req.N), req.NeedsOnly)
		for _, it := range items {
			resp.KeyItems = append(resp.KeyItems, &cpb.KeyItem{Kind: it.Kind, Repo: it.Repo, Id: it.ID, Keys: it.Keys, Need: it.Need})
		}
	default:
		err = fmt.Errorf("%w: read kind %v", metastore.ErrCommandInvalid, req.Kind)
	}
	if err == nil && rec != nil {
		resp.Record, err = proto.Marshal(rec)
	}
	if err != nil {
		return &cpb.ReadResponse{Error: toResult(err)}
	}
	return resp
}

// readRecord runs a single-record read and decodes the record into out.
func readRecord[T proto.Message](ctx context.Context, m *Meta, req *cpb.ReadRequest, out T) (T, error) {
	resp, err := m.read(ctx, req)
	if err != nil {
		return out, err
	}
	if err := resultErr(resp.Error); err != nil {
		return out, err
	}
	if err := proto.Unmarshal(resp.Record, out); err != nil {
		return out, fmt.Errorf("%w: %v", metastore.ErrCorrupt, err)
	}
	return out, nil
}

func (m *Meta) readList(ctx context.Context, req *cpb.ReadRequest) (*cpb.ReadResponse, error) {
	resp, err := m.read(ctx, req)
	if err != nil {
		return nil, err
	}
	return resp, resultErr(resp.Error)
}

// The api.Metadata methods.

func (m *Meta) Blob(ctx context.Context, dgst string) (*pb.BlobLayout, error) {
	return readRecord(ctx, m, &cpb.ReadRequest{Kind: cpb.ReadKind_BLOB, Digest: dgst}, &pb.BlobLayout{})
}

func (m *Meta) RepoBlob(ctx context.Context, repo, dgst string) (*pb.BlobLayout, error) {
	return readRecord(ctx, m, &cpb.ReadRequest{Kind: cpb.ReadKind_REPO_BLOB, Repo: repo, Digest: dgst}, &pb.BlobLayout{})
}

func (m *Meta) Upload(ctx context.Context, id string) (*pb.Upload, error) {
	return readRecord(ctx, m, &cpb.ReadRequest{Kind: cpb.ReadKind_UPLOAD, Id: id}, &pb.Upload{})
}

func (m *Meta) Manifest(ctx context.Context, repo, dgst string) (*pb.ManifestRecord, error) {
	return readRecord(ctx, m, &cpb.ReadRequest{Kind: cpb.ReadKind_MANIFEST, Repo: repo, Digest: dgst}, &pb.ManifestRecord{})
}

// ManifestByTag returns the manifest a tag points at, in one read.
func (m *Meta) ManifestByTag(ctx context.Context, repo, tag string) (*pb.ManifestRecord, error) {
	return readRecord(ctx, m, &cpb.ReadRequest{Kind: cpb.ReadKind_MANIFEST_BY_TAG, Repo: repo, Tag: tag}, &pb.ManifestRecord{})
}

func (m *Meta) Tag(ctx context.Context, repo, tag string) (*pb.TagRecord, error) {
	return readRecord(ctx, m, &cpb.ReadRequest{Kind: cpb.ReadKind_TAG, Repo: repo, Tag: tag}, &pb.TagRecord{})
}

func (m *Meta) Repository(ctx context.Context, repo string) (*pb.Repository, error) {
	return readRecord(ctx, m, &cpb.ReadRequest{Kind: cpb.ReadKind_REPOSITORY, Repo: repo}, &pb.Repository{})
}

func (m *Meta) BlobRepositories(ctx context.Context, dgst string, limit int) ([]string, error) {
	resp, err := m.readList(ctx, &cpb.ReadRequest{Kind: cpb.ReadKind_BLOB_REPOSITORIES, Digest: dgst, N: int32(limit)})
	if err != nil {
		return nil, err
	}
	return resp.Names, nil
}

func (m *Meta) Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error) {
	resp, err := m.readList(ctx, &cpb.ReadRequest{Kind: cpb.ReadKind_TAGS, Repo: repo, Last: last, N: int32(n)})
	if err != nil {
		return nil, false, err
	}
	if resp.Names == nil {
		resp.Names = []string{}
	}
	return resp.Names, resp.More, nil
}

func (m *Meta) Repositories(ctx context.Context, last string, n int) ([]string, bool, error) {
	resp, err := m.readList(ctx, &cpb.ReadRequest{Kind: cpb.ReadKind_REPOSITORIES, Last: last, N: int32(n)})
	if err != nil {
		return nil, false, err
	}
	if resp.Names == nil {
		resp.Names = []string{}
	}
	return resp.Names, resp.More, nil
}

func (m *Meta) Referrers(ctx context.Context, repo, subject string) ([]*pb.Descriptor, error) {
	resp, err := m.readList(ctx, &cpb.ReadRequest{Kind: cpb.ReadKind_REFERRERS, Repo: repo, Digest: subject})
	if err != nil {
		return nil, err
	}
	return resp.Descriptors, nil
}

// WrappedKeys lists a page of the records holding wrapped data keys (see
// metastore.Store.WrappedKeys).
func (m *Meta) WrappedKeys(ctx context.Context, after string, n int, needsOnly bool) ([]metastore.KeyItem, string, error) {
	resp, err := m.readList(ctx, &cpb.ReadRequest{Kind: cpb.ReadKind_WRAPPED_KEYS, Last: after, N: int32(n), NeedsOnly: needsOnly})
	if err != nil {
		return nil, "", err
	}
	items := make([]metastore.KeyItem, len(resp.KeyItems))
	for i, it := range resp.KeyItems {
		items[i] = metastore.KeyItem{Kind: it.Kind, Repo: it.Repo, ID: it.Id, Keys: it.Keys, Need: it.Need}
	}
	return items, resp.Next, nil
}

// Nodes lists the node registry (linearizable).
func (m *Meta) Nodes(ctx context.Context) ([]*pb.NodeRecord, error) {
	resp, err := m.readList(ctx, &cpb.ReadRequest{Kind: cpb.ReadKind_NODES})
	if err != nil {
		return nil, err
	}
	return resp.Nodes, nil
}
