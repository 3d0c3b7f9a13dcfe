package api

import (
	"fmt"
	"testing"

	"github.com/strata-registry/strata/gc"
	"github.com/strata-registry/strata/metastore"
)

func TestAdminErrorsAndLoopback(t *testing.T) {
	for _, c := range []struct {
		err  error
		typ  string
		code int
	}{
		{fmt.Errorf("%w: x", metastore.ErrRepoUnknown), "RepositoryNotFoundException", 400},
		{fmt.Errorf("%w: x", metastore.ErrRepoNotEmpty), "RepositoryNotEmptyException", 400},
		{fmt.Errorf("%w: x", metastore.ErrRepoExists), "RepositoryAlreadyExistsException", 400},
		{fmt.Errorf("%w: x", gc.ErrPolicyInvalid), "InvalidParameterException", 400},
		{fmt.Errorf("%w: x", gc.ErrNoPolicy), "LifecyclePolicyNotFoundException", 400},
		{fmt.Errorf("boom"), "ServerException", 500},
	} {
		ae := toAdminError(c.err)
		if ae.Type != c.typ || ae.status != c.code || ae.Message == "" {
			t.Errorf("%v -> %+v", c.err, ae)
		}
	}
	for addr, want := range map[string]bool{"127.0.0.1:5": true, "[::1]:5": true, "10.0.0.1:5": false, "192.168.1.2:80": false, "garbage": false} {
		if isLoopback(addr) != want {
			t.Errorf("isLoopback(%q) != %v", addr, want)
		}
	}
}
