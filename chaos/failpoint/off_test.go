//go:build !failpoints

package failpoint_test

import (
	"errors"
	"testing"

	"github.com/strata-registry/strata/chaos/failpoint"
)

func TestOffBuildDoesNothing(t *testing.T) {
	if failpoint.Enabled {
		t.Fatal("Enabled in a build without the failpoints tag")
	}
	if err := failpoint.Enable(failpoint.UploadBeforeCommit, "exit"); !errors.Is(err, failpoint.ErrNotBuilt) {
		t.Errorf("Enable: %v, want ErrNotBuilt", err)
	}
	for _, n := range failpoint.Names {
		if err := failpoint.Eval(n); err != nil {
			t.Errorf("Eval(%s) = %v", n, err)
		}
	}
	if st := failpoint.Status(); st != nil {
		t.Errorf("Status: %v", st)
	}
}
