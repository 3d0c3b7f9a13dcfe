package blobstore_test

import (
	"testing"

	"github.com/strata-registry/strata/blobstore"
	"github.com/strata-registry/strata/blobstore/shardtest"
)

func openLocal(t *testing.T) *blobstore.LocalStore {
	t.Helper()
	s, err := blobstore.OpenLocal("node-a", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestLocalStoreConformance(t *testing.T) {
	shardtest.Run(t, func(t *testing.T) blobstore.ShardStore { return openLocal(t) }, shardtest.TrustsPutSums())
}

func TestFaultyConformance(t *testing.T) {
	shardtest.Run(t, func(t *testing.T) blobstore.ShardStore { return blobstore.NewFaulty(openLocal(t)) }, shardtest.TrustsPutSums())
}
