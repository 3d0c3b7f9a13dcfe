package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/strata-registry/strata/blobstore/shardpb"
)

// The shard service (blobstore/shardpb) is the wire form of ShardStore: a
// storage node serves its store with RegisterShardServer, and frontends reach
// it through a RemoteStore. Payloads travel in chunks of at most ChunkSize
// bytes, so every message stays far below gRPC's default 4 MiB limit and
// neither side needs its message size limits raised, whatever the shard size.
const (
	// ChunkSize is the most payload bytes one message of the shard service carries.
	ChunkSize = 1 << 20

	// MaxShardSize bounds the payload of a shard sent over the wire: a
	// shard is at most a whole segment plus its seal overhead.
	MaxShardSize = MaxSegmentSize + 1<<20

	// MaxListPage caps the page size of the List RPC.
	MaxListPage = 10000

	// nodeIDKey is the metadata key under which a RemoteStore sends the id
	// of the node it means to reach.
	nodeIDKey = "strata-node-id"
)

// ShardVerifier is implemented by stores that can re-check a stored shard
// against the checksum in its header: LocalStore (reading the file) and
// RemoteStore (asking the node to). Verify returns what it learnt of the
// shard, and an error wrapping ErrShardCorrupt when the shard fails the check,
// ErrShardNotFound when there is no such shard, or another error when the
// shard could not be read.
type ShardVerifier interface {
	Verify(ctx context.Context, id ShardID) (ShardInfo, error)
}

// RegisterShardServer registers the shard service (strata.shard.v1.Shards)
// on s, serving store. Put answers only once store.Put has returned, that is
// once the shard is durable; Get streams a payload store.Get has verified.
// Errors become gRPC status codes (see statusError) that RemoteStore maps
// back to this package's sentinels.
//
// A call that names another node id (metadata "strata-node-id") than
// store.NodeID() is refused with FAILED_PRECONDITION, so that a frontend
// with a stale address book never records shards under the wrong node.
func RegisterShardServer(s grpc.ServiceRegistrar, store ShardStore) {
	shardpb.RegisterShardsServer(s, &shardServer{store: store})
}

type shardServer struct {
	shardpb.UnimplementedShardsServer
	store ShardStore
	// noSpaceLogged is when a full store was last reported in the log
	// (unix nanoseconds): at most once a minute.
	noSpaceLogged atomic.Int64
}

// noSpace logs, at most once a minute, that the store refused a shard for
// lack of space: the node's disk is full.
func (s *shardServer) noSpace(err error) {
	now := time.Now().UnixNano()
	last := s.noSpaceLogged.Load()
	if now-last < int64(time.Minute) || !s.noSpaceLogged.CompareAndSwap(last, now) {
		return
	}
	slog.Warn("shard store full: refusing new shards until space is freed (frontends place them on other nodes)",
		"node", s.store.NodeID(), "err", err)
}

// begin checks what every call starts with: the node the caller wants and
// the shard id.
func (s *shardServer) begin(ctx context.Context, id *ShardID) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if want := md.Get(nodeIDKey); len(want) > 0 && want[0] != s.store.NodeID() {
		return status.Errorf(codes.FailedPrecondition, "blobstore: this is node %q, not %q", s.store.NodeID(), want[0])
	}
	if id != nil {
		if err := id.Validate(); err != nil {
			return statusError(err)
		}
	}
	return nil
}

func shardIDFromPB(id *shardpb.ShardId) ShardID {
	return ShardID{Segment: id.GetSegment(), Index: id.GetIndex()}
}

func shardIDToPB(id ShardID) *shardpb.ShardId {
	return &shardpb.ShardId{Segment: id.Segment, Index: id.Index}
}

func shardInfoToPB(info ShardInfo) *shardpb.ShardInfo {
	return &shardpb.ShardInfo{Id: shardIDToPB(info.ID), Size: info.Size, Blake3: info.Sum[:]}
}

// statusError turns an error of a ShardStore into a gRPC status error:
//
//	ErrShardNotFound                  NOT_FOUND
//	ErrShardCorrupt                   DATA_LOSS
//	ErrInvalidShardID                 INVALID_ARGUMENT
//	ErrInvalidRange                   OUT_OF_RANGE
//	ErrClosed, ErrNodeUnavailable     UNAVAILABLE
//	ErrNoSpace                        RESOURCE_EXHAUSTED
//	context.Canceled                  CANCELLED
//	context.DeadlineExceeded          DEADLINE_EXCEEDED
//	a gRPC status error               itself
//	anything else                     INTERNAL
//
// The message is the error's text.
func statusError(err error) error {
	if err == nil {
		return nil
	}
	var code codes.Code
	switch {
	case errors.Is(err, ErrShardNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrShardCorrupt):
		code = codes.DataLoss
	case errors.Is(err, ErrInvalidShardID):
		code = codes.InvalidArgument
	case errors.Is(err, ErrInvalidRange):
		code = codes.OutOfRange
	case errors.Is(err, ErrClosed), errors.Is(err, ErrNodeUnavailable):
		code = codes.Unavailable
	case errors.Is(err, ErrNoSpace):
		code = codes.ResourceExhausted
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	default:
		if st, ok := status.FromError(err); ok {
			return st.Err()
		}
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}

// Put implements the Put RPC: it assembles the chunks, hashing each as it
// arrives (while it is still in the CPU's cache), checks the length and the
// BLAKE3 sum (the ShardStore contract: bytes damaged on the way are refused
// with ErrShardCorrupt, here DATA_LOSS), and hands the payload to the store,
// which makes the shard durable.
func (s *shardServer) Put(stream shardpb.Shards_PutServer) error {
	ctx := stream.Context()
	if err := s.begin(ctx, nil); err != nil {
		return err
	}
	// RecvMsg into a putChunk: wireCodec appends each message's data to one
	// buffer straight out of gRPC's (see wirecodec.go), allocated at once
	// from the announced length (but not more than a large shard before the
	// bytes arrive).
	var chunk putChunk
	if err := stream.RecvMsg(&chunk); err == io.EOF {
		return status.Error(codes.InvalidArgument, "blobstore: put: empty stream")
	} else if err != nil {
		return statusError(err)
	}
	id := shardIDFromPB(chunk.ID)
	if err := id.Validate(); err != nil {
		return statusError(err)
	}
	var sum [32]byte
	if len(chunk.Blake3) != len(sum) {
		return status.Errorf(codes.InvalidArgument, "blobstore: put %s: checksum of %d bytes, want %d", id, len(chunk.Blake3), len(sum))
	}
	copy(sum[:], chunk.Blake3)
	length := chunk.Length
	if length > MaxShardSize {
		return status.Errorf(codes.InvalidArgument, "blobstore: put %s: length %d over the limit of %d", id, length, MaxShardSize)
	}
	h := blake3.New()
	h.Write(chunk.Buf)
	for {
		if uint64(len(chunk.Buf)) > length {
			return status.Errorf(codes.DataLoss, "%v: put %s: more than the %d bytes announced", ErrShardCorrupt, id, length)
		}
		had := len(chunk.Buf)
		err := stream.RecvMsg(&chunk)
		if err == io.EOF {
			break
		}
		if err != nil {
			return statusError(err)
		}
		if chunk.ID != nil || chunk.Length != 0 || len(chunk.Blake3) != 0 {
			return status.Errorf(codes.InvalidArgument, "blobstore: put %s: header fields in a data message", id)
		}
		h.Write(chunk.Buf[had:])
	}
	data := chunk.Buf
	if uint64(len(data)) != length {
		return status.Errorf(codes.DataLoss, "%v: put %s: %d of the %d bytes announced", ErrShardCorrupt, id, len(data), length)
	}
	if got := h.Sum(nil); string(got) != string(sum[:]) {
		return status.Errorf(codes.DataLoss, "%v: put %s: data does not match its checksum", ErrShardCorrupt, id)
	}
	if err := s.store.Put(ctx, id, data, sum); err != nil {
		if errors.Is(err, ErrNoSpace) {
			s.noSpace(err)
		}
		return statusError(err)
	}
	return stream.SendAndClose(&shardpb.PutResponse{})
}

// Get implements the Get RPC. The payload is not hashed here: the reader
// checks it end to end (ShardStore.Get), which also covers the network.
func (s *shardServer) Get(req *shardpb.GetRequest, stream shardpb.Shards_GetServer) error {
	ctx := stream.Context()
	id := shardIDFromPB(req.GetId())
	if err := s.begin(ctx, &id); err != nil {
		return err
	}
	var (
		data    []byte
		release = func() {}
		err     error
	)
	if p, ok := s.store.(pooledShardReader); ok {
		data, release, err = p.GetPooled(ctx, id)
	} else {
		data, err = s.store.Get(ctx, id)
	}
	if err != nil {
		return statusError(err)
	}
	// One reference for this handler, one per chunk in flight; gRPC drops a
	// chunk's once its bytes are written, and the last drop gives the
	// buffer back.
	whole := mem.NewBuffer(&data, releaser(release))
	defer whole.Free()
	size := uint64(len(data))
	off := req.GetOffset()
	if off > size {
		return statusError(fmt.Errorf("%w: get %s: offset %d past the %d bytes of the shard", ErrInvalidRange, id, off, size))
	}
	end := size
	if n := req.GetLength(); n > 0 && n < size-off {
		end = off + n
	}
	msg := &getResponseOut{Size: size, Length: end - off}
	for first := true; first || off < end; first = false {
		n := min(end-off, ChunkSize)
		msg.Data = whole.Slice(int(off), int(off+n))
		if err := stream.SendMsg(msg); err != nil {
			return statusError(err)
		}
		off += n
		msg = &getResponseOut{}
	}
	return nil
}

// pooledShardReader is implemented by stores that read a shard into a pooled
// buffer (LocalStore).
type pooledShardReader interface {
	GetPooled(ctx context.Context, id ShardID) (data []byte, release func(), err error)
}

var _ pooledShardReader = (*LocalStore)(nil)

// releaser is the mem.BufferPool of one pooled shard buffer: gRPC puts it
// back when its last reference is dropped.
type releaser func()

func (r releaser) Get(int) *[]byte { panic("blobstore: releaser hands out no buffers") }
func (r releaser) Put(*[]byte)     { r() }

// Delete implements the Delete RPC.
func (s *shardServer) Delete(ctx context.Context, req *shardpb.DeleteRequest) (*shardpb.DeleteResponse, error) {
	id := shardIDFromPB(req.GetId())
	if err := s.begin(ctx, &id); err != nil {
		return nil, err
	}
	if err := s.store.Delete(ctx, id); err != nil {
		return nil, statusError(err)
	}
	return &shardpb.DeleteResponse{}, nil
}

// Stat implements the Stat RPC.
func (s *shardServer) Stat(ctx context.Context, req *shardpb.StatRequest) (*shardpb.StatResponse, error) {
	id := shardIDFromPB(req.GetId())
	if err := s.begin(ctx, &id); err != nil {
		return nil, err
	}
	info, err := s.store.Stat(ctx, id)
	if err != nil {
		return nil, statusError(err)
	}
	return &shardpb.StatResponse{Info: shardInfoToPB(info)}, nil
}

// List implements the List RPC, with pages of at most MaxListPage shards.
func (s *shardServer) List(ctx context.Context, req *shardpb.ListRequest) (*shardpb.ListResponse, error) {
	if err := s.begin(ctx, nil); err != nil {
		return nil, err
	}
	limit := int(min(req.GetLimit(), MaxListPage))
	infos, err := s.store.List(ctx, req.GetAfter(), limit)
	if err != nil {
		return nil, statusError(err)
	}
	resp := &shardpb.ListResponse{Shards: make([]*shardpb.ShardInfo, len(infos))}
	for i, info := range infos {
		resp.Shards[i] = shardInfoToPB(info)
	}
	return resp, nil
}

// Usage implements the Usage RPC.
func (s *shardServer) Usage(ctx context.Context, _ *shardpb.UsageRequest) (*shardpb.UsageResponse, error) {
	if err := s.begin(ctx, nil); err != nil {
		return nil, err
	}
	u, err := s.store.Usage(ctx)
	if err != nil {
		return nil, statusError(err)
	}
	return &shardpb.UsageResponse{Shards: u.Shards, Used: u.Used, Capacity: u.Capacity, Free: u.Free}, nil
}

// Verify implements the Verify RPC: a shard that fails its check is a
// response with ok = false, not an RPC error.
func (s *shardServer) Verify(ctx context.Context, req *shardpb.VerifyRequest) (*shardpb.VerifyResponse, error) {
	id := shardIDFromPB(req.GetId())
	if err := s.begin(ctx, &id); err != nil {
		return nil, err
	}
	info, err := VerifyShard(ctx, s.store, id)
	switch {
	case err == nil:
		return &shardpb.VerifyResponse{Info: shardInfoToPB(info), Ok: true}, nil
	case errors.Is(err, ErrShardCorrupt):
		return &shardpb.VerifyResponse{Info: shardInfoToPB(info), Error: err.Error()}, nil
	default:
		return nil, statusError(err)
	}
}

// VerifyShard re-checks shard id of store against the checksum recorded at
// Put, with the store's own Verify when it is a ShardVerifier, and otherwise
// with Stat (the recorded checksum) and Get (the payload, hashed again here
// so that even a store that fails to check is caught). The results are those
// of ShardVerifier.Verify.
func VerifyShard(ctx context.Context, store ShardStore, id ShardID) (ShardInfo, error) {
	if v, ok := store.(ShardVerifier); ok {
		return v.Verify(ctx, id)
	}
	info, err := store.Stat(ctx, id)
	if err != nil {
		return info, err
	}
	data, err := store.Get(ctx, id)
	if err != nil {
		return info, err
	}
	if int64(len(data)) != info.Size || blake3.Sum256(data) != info.Sum {
		return info, fmt.Errorf("%w: verify %s on %s: payload does not match the recorded checksum", ErrShardCorrupt, id, store.NodeID())
	}
	return info, nil
}
