package blobstore

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/strata-registry/strata/blobstore/shardpb"
)

// RemoteStore is the ShardStore of a storage node reached over gRPC: the
// client of the service RegisterShardServer serves. It is safe for
// concurrent use. Deadlines and cancellation come from each call's ctx; the
// connection (its credentials, its life) belongs to the caller.
//
// Errors the node returns map back to this package's sentinels, so that
// errors.Is works across the wire:
//
//	NOT_FOUND                         ErrShardNotFound
//	DATA_LOSS                         ErrShardCorrupt
//	INVALID_ARGUMENT                  ErrInvalidShardID
//	OUT_OF_RANGE                      ErrInvalidRange
//	UNAVAILABLE, FAILED_PRECONDITION  ErrNodeUnavailable (unreachable, closed, or another node)
//	CANCELLED, DEADLINE_EXCEEDED      the context's error
//
// The errors also carry their gRPC status (status.Code works on them).
type RemoteStore struct {
	nodeID string
	client shardpb.ShardsClient
}

var (
	_ ShardStore    = (*RemoteStore)(nil)
	_ ShardVerifier = (*RemoteStore)(nil)
)

// NewRemoteStore returns the store of node nodeID reached through cc. Every
// call tells the server which node it means, and a server of another node
// refuses it (ErrNodeUnavailable).
func NewRemoteStore(nodeID string, cc grpc.ClientConnInterface) *RemoteStore {
	return &RemoteStore{nodeID: nodeID, client: shardpb.NewShardsClient(cc)}
}

// NodeID implements ShardStore.
func (r *RemoteStore) NodeID() string { return r.nodeID }

// begin checks what can be checked before a call goes out and returns the
// context to make it with.
func (r *RemoteStore) begin(ctx context.Context, op string, id *ShardID) (context.Context, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("blobstore: %s on %s: %w", op, r.nodeID, err)
	}
	if id != nil {
		if err := id.Validate(); err != nil {
			return nil, err
		}
	}
	return metadata.AppendToOutgoingContext(ctx, nodeIDKey, r.nodeID), nil
}

// Put implements ShardStore: it streams data in chunks of ChunkSize and
// returns nil once the node has made the shard durable. data is not used
// after Put returns: wireCodec sends it without copying, and by the time the
// node has answered it has received every byte; a Put that returns early on
// an error has torn its stream down.
func (r *RemoteStore) Put(ctx context.Context, id ShardID, data []byte, sum [32]byte) error {
	cctx, err := r.begin(ctx, "put", &id)
	if err != nil {
		return err
	}
	if len(data) > MaxShardSize {
		return fmt.Errorf("blobstore: put %s on %s: %d bytes over the limit of %d", id, r.nodeID, len(data), MaxShardSize)
	}
	cctx, cancel := context.WithCancel(cctx)
	defer cancel() // tears the stream down if we leave early
	stream, err := r.client.Put(cctx)
	if err != nil {
		return r.error(ctx, "put", &id, err)
	}
	n := min(len(data), ChunkSize)
	msg := &shardpb.PutRequest{Id: shardIDToPB(id), Length: uint64(len(data)), Blake3: sum[:], Data: data[:n]}
	for {
		if err := stream.Send(msg); err != nil {
			if err == io.EOF { // the server ended the call: its status says why
				_, err = stream.CloseAndRecv()
			}
			return r.error(ctx, "put", &id, err)
		}
		data = data[n:]
		if len(data) == 0 {
			break
		}
		n = min(len(data), ChunkSize)
		msg = &shardpb.PutRequest{Data: data[:n]}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return r.error(ctx, "put", &id, err)
	}
	return nil
}

var _ ShardReaderInto = (*RemoteStore)(nil)

// Get implements ShardStore: the whole payload (checked by the caller).
func (r *RemoteStore) Get(ctx context.Context, id ShardID) ([]byte, error) {
	return r.getRange(ctx, id, 0, 0, nil)
}

// GetInto implements ShardReaderInto: the chunks are appended to dst[:0]
// as they arrive.
func (r *RemoteStore) GetInto(ctx context.Context, id ShardID, dst []byte) ([]byte, error) {
	return r.getRange(ctx, id, 0, 0, dst[:0])
}

// GetRange returns length bytes of the payload of shard id from offset (to
// the end when length is 0; a range past the end is cut at the end, an
// offset past the end is ErrInvalidRange). Like LocalStore.Get, the node
// does not hash the payload: the caller checks it end to end.
func (r *RemoteStore) GetRange(ctx context.Context, id ShardID, offset, length int64) ([]byte, error) {
	return r.getRange(ctx, id, offset, length, nil)
}

// getRange is GetRange appending to dst (nil: a buffer of the announced
// length).
func (r *RemoteStore) getRange(ctx context.Context, id ShardID, offset, length int64, dst []byte) ([]byte, error) {
	cctx, err := r.begin(ctx, "get", &id)
	if err != nil {
		return nil, err
	}
	if offset < 0 || length < 0 {
		return nil, fmt.Errorf("%w: get %s: offset %d, length %d", ErrInvalidRange, id, offset, length)
	}
	cctx, cancel := context.WithCancel(cctx)
	defer cancel()
	stream, err := r.client.Get(cctx, &shardpb.GetRequest{Id: shardIDToPB(id), Offset: uint64(offset), Length: uint64(length)})
	if err != nil {
		return nil, r.error(ctx, "get", &id, err)
	}
	// RecvMsg into a getChunk: wireCodec appends each message's data to
	// one buffer straight out of gRPC's (see wirecodec.go).
	chunk := getChunk{Buf: dst}
	if err := stream.RecvMsg(&chunk); err == io.EOF {
		return nil, fmt.Errorf("blobstore: get %s on %s: empty response", id, r.nodeID)
	} else if err != nil {
		return nil, r.error(ctx, "get", &id, err)
	}
	want := chunk.Length
	if want > MaxShardSize {
		return nil, fmt.Errorf("blobstore: get %s on %s: node announces %d bytes", id, r.nodeID, want)
	}
	for uint64(len(chunk.Buf)) <= want {
		err := stream.RecvMsg(&chunk)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, r.error(ctx, "get", &id, err)
		}
	}
	data := chunk.Buf
	if uint64(len(data)) != want {
		return nil, fmt.Errorf("blobstore: get %s on %s: node sent %d bytes, announced %d", id, r.nodeID, len(data), want)
	}
	return data, nil
}

// Delete implements ShardStore.
func (r *RemoteStore) Delete(ctx context.Context, id ShardID) error {
	cctx, err := r.begin(ctx, "delete", &id)
	if err != nil {
		return err
	}
	if _, err := r.client.Delete(cctx, &shardpb.DeleteRequest{Id: shardIDToPB(id)}); err != nil {
		return r.error(ctx, "delete", &id, err)
	}
	return nil
}

// Stat implements ShardStore.
func (r *RemoteStore) Stat(ctx context.Context, id ShardID) (ShardInfo, error) {
	cctx, err := r.begin(ctx, "stat", &id)
	if err != nil {
		return ShardInfo{}, err
	}
	resp, err := r.client.Stat(cctx, &shardpb.StatRequest{Id: shardIDToPB(id)})
	if err != nil {
		return ShardInfo{}, r.error(ctx, "stat", &id, err)
	}
	return r.shardInfo(resp.GetInfo())
}

// List implements ShardStore. The node caps a page at MaxListPage shards.
func (r *RemoteStore) List(ctx context.Context, after string, limit int) ([]ShardInfo, error) {
	cctx, err := r.begin(ctx, "list", nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.client.List(cctx, &shardpb.ListRequest{After: after, Limit: uint32(min(uint64(max(limit, 0)), math.MaxUint32))})
	if err != nil {
		return nil, r.error(ctx, "list", nil, err)
	}
	infos := make([]ShardInfo, 0, len(resp.GetShards()))
	for _, pb := range resp.GetShards() {
		info, err := r.shardInfo(pb)
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// Usage implements ShardStore.
func (r *RemoteStore) Usage(ctx context.Context) (Usage, error) {
	cctx, err := r.begin(ctx, "usage", nil)
	if err != nil {
		return Usage{}, err
	}
	resp, err := r.client.Usage(cctx, &shardpb.UsageRequest{})
	if err != nil {
		return Usage{}, r.error(ctx, "usage", nil, err)
	}
	return Usage{Shards: resp.GetShards(), Used: resp.GetUsed(), Capacity: resp.GetCapacity(), Free: resp.GetFree()}, nil
}

// Verify implements ShardVerifier: the node reads the shard and checks it
// against the checksum in its header. A shard that fails the check is an
// error wrapping ErrShardCorrupt with the node's reason.
func (r *RemoteStore) Verify(ctx context.Context, id ShardID) (ShardInfo, error) {
	cctx, err := r.begin(ctx, "verify", &id)
	if err != nil {
		return ShardInfo{}, err
	}
	resp, err := r.client.Verify(cctx, &shardpb.VerifyRequest{Id: shardIDToPB(id)})
	if err != nil {
		return ShardInfo{}, r.error(ctx, "verify", &id, err)
	}
	info, err := r.shardInfo(resp.GetInfo())
	if err != nil {
		return info, err
	}
	if !resp.GetOk() {
		return info, &remoteError{op: "verify", id: id.String(), node: r.nodeID, msg: resp.GetError(), is: ErrShardCorrupt,
			st: status.New(codes.DataLoss, resp.GetError())}
	}
	return info, nil
}

func (r *RemoteStore) shardInfo(pb *shardpb.ShardInfo) (ShardInfo, error) {
	info := ShardInfo{ID: shardIDFromPB(pb.GetId()), Size: pb.GetSize()}
	if n := len(pb.GetBlake3()); n != len(info.Sum) && n != 0 {
		return ShardInfo{}, fmt.Errorf("blobstore: %s on %s: checksum of %d bytes", info.ID, r.nodeID, n)
	}
	copy(info.Sum[:], pb.GetBlake3())
	return info, nil
}

// error turns the error of a call into one that wraps the matching sentinel
// of this package. ctx is the caller's context.
func (r *RemoteStore) error(ctx context.Context, op string, id *ShardID, err error) error {
	st := status.Convert(err)
	e := &remoteError{op: op, node: r.nodeID, msg: st.Message(), st: st}
	if id != nil {
		e.id = id.String()
	}
	switch st.Code() {
	case codes.NotFound:
		e.is = ErrShardNotFound
	case codes.DataLoss:
		e.is = ErrShardCorrupt
	case codes.InvalidArgument:
		e.is = ErrInvalidShardID
	case codes.OutOfRange:
		e.is = ErrInvalidRange
	case codes.Unavailable, codes.FailedPrecondition:
		e.is = ErrNodeUnavailable
	case codes.ResourceExhausted:
		e.is = ErrNoSpace
	case codes.Canceled:
		e.is = context.Canceled
	case codes.DeadlineExceeded:
		e.is = context.DeadlineExceeded
	}
	if cerr := ctx.Err(); cerr != nil && (e.is == nil || e.is == context.Canceled || e.is == context.DeadlineExceeded) {
		e.is = cerr // the caller's context ended: say so, whatever the transport made of it
	}
	return e
}

// remoteError is an error returned by a storage node or the way to it.
type remoteError struct {
	op, id, node string
	msg          string
	is           error // the sentinel it wraps, if any
	st           *status.Status
}

func (e *remoteError) Error() string {
	var b strings.Builder
	b.WriteString("blobstore: ")
	b.WriteString(e.op)
	if e.id != "" {
		b.WriteString(" ")
		b.WriteString(e.id)
	}
	b.WriteString(" on ")
	b.WriteString(e.node)
	b.WriteString(": ")
	if e.is != nil && !strings.Contains(e.msg, e.is.Error()) {
		b.WriteString(e.is.Error())
		if e.msg != "" {
			b.WriteString(": ")
		}
	}
	b.WriteString(e.msg)
	return b.String()
}

func (e *remoteError) Unwrap() error { return e.is }

// GRPCStatus lets status.FromError and status.Code see the call's status.
func (e *remoteError) GRPCStatus() *status.Status { return e.st }
