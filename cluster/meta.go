package cluster

import (
	"context"
	"errors"

	"github.com/strata-registry/strata/metastore"
	pb "github.com/strata-registry/strata/metastore/metastorepb"
)

// Local is the metadata service of a process that runs the meta role: writes
// go through this node's Raft, reads come from its own state machine. Reads
// of mutable state (tags, listings, upload sessions) are fenced to be
// linearizable; reads addressed by digest are served from local state.
type Local struct {
	Node  *Node
	Store *metastore.Store
}

func (l *Local) Propose(ctx context.Context, cmd *pb.Command) error { return l.Node.Propose(ctx, cmd) }

// byDigest answers a read of immutable, digest-addressed state from the local
// replica; only when the local replica does not have it yet does it fence and
// read again, so that a push acknowledged elsewhere is never reported absent.
func byDigest[T any](ctx context.Context, l *Local, read func() (T, error)) (T, error) {
	v, err := read()
	if err == nil || !isNotFound(err) {
		return v, err
	}
	if ferr := l.Node.LinearizableRead(ctx); ferr != nil {
		return v, err
	}
	return read()
}

func isNotFound(err error) bool {
	return errors.Is(err, metastore.ErrBlobUnknown) || errors.Is(err, metastore.ErrManifestUnknown)
}

func (l *Local) Blob(ctx context.Context, dgst string) (*pb.BlobLayout, error) {
	return byDigest(ctx, l, func() (*pb.BlobLayout, error) { return l.Store.Blob(dgst) })
}

func (l *Local) RepoBlob(ctx context.Context, repo, dgst string) (*pb.BlobLayout, error) {
	return byDigest(ctx, l, func() (*pb.BlobLayout, error) { return l.Store.RepoBlob(repo, dgst) })
}

func (l *Local) BlobRepositories(ctx context.Context, dgst string, limit int) ([]string, error) {
	return l.Store.BlobRepositories(dgst, limit)
}

func (l *Local) Manifest(ctx context.Context, repo, dgst string) (*pb.ManifestRecord, error) {
	return byDigest(ctx, l, func() (*pb.ManifestRecord, error) { return l.Store.Manifest(repo, dgst) })
}

func (l *Local) Upload(ctx context.Context, id string) (*pb.Upload, error) {
	if err := l.Node.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	return l.Store.Upload(id)
}

func (l *Local) Tag(ctx context.Context, repo, tag string) (*pb.TagRecord, error) {
	if err := l.Node.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	return l.Store.Tag(repo, tag)
}

func (l *Local) Repository(ctx context.Context, repo string) (*pb.Repository, error) {
	if err := l.Node.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	return l.Store.Repository(repo)
}

func (l *Local) Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error) {
	if err := l.Node.LinearizableRead(ctx); err != nil {
		return nil, false, err
	}
	return l.Store.Tags(repo, last, n)
}

func (l *Local) Repositories(ctx context.Context, last string, n int) ([]string, bool, error) {
	if err := l.Node.LinearizableRead(ctx); err != nil {
		return nil, false, err
	}
	return l.Store.Repositories(last, n)
}

func (l *Local) Referrers(ctx context.Context, repo, subject string) ([]*pb.Descriptor, error) {
	if err := l.Node.LinearizableRead(ctx); err != nil {
		return nil, err
	}
	return l.Store.Referrers(repo, subject)
}
