package failpoint_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCallSiteCompilesAway builds a small program with one failpoint call
// site (testdata/probe) without and with the failpoints tag. Without it the
// linker must keep nothing of the call site: no symbol of this package and
// not even the failpoint's name; with it, Eval and the name are there (so
// that the first half cannot pass by accident).
func TestCallSiteCompilesAway(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	dir := t.TempDir()
	build := func(tags ...string) string {
		out := filepath.Join(dir, "probe"+strings.Join(tags, "-"))
		args := append([]string{"build", "-o", out}, tags...)
		args = append(args, "./testdata/probe")
		if b, err := exec.Command("go", args...).CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return out
	}
	nm := func(bin string) string {
		b, err := exec.Command("go", "tool", "nm", bin).CombinedOutput()
		if err != nil {
			t.Fatalf("go tool nm %s: %v\n%s", bin, err, b)
		}
		return string(b)
	}
	const pkg = "github.com/strata-registry/strata/chaos/failpoint."

	off := build()
	if syms := nm(off); strings.Contains(syms, pkg) {
		var lines []string
		for _, l := range strings.Split(syms, "\n") {
			if strings.Contains(l, pkg) {
				lines = append(lines, strings.TrimSpace(l))
			}
		}
		t.Errorf("without the tag the probe still links failpoint code:\n%s", strings.Join(lines, "\n"))
	}
	if b, _ := os.ReadFile(off); bytes.Contains(b, []byte("probe-point")) {
		t.Error("without the tag the probe still holds the failpoint's name")
	}
	if out, err := exec.Command(off).CombinedOutput(); err != nil || !strings.Contains(string(out), "probe ran") {
		t.Errorf("probe without the tag: %v: %s", err, out)
	}

	on := build("-tags", "failpoints")
	if syms := nm(on); !strings.Contains(syms, pkg+"Eval") {
		t.Error("with the tag the probe does not link failpoint.Eval")
	}
	if b, _ := os.ReadFile(on); !bytes.Contains(b, []byte("probe-point")) {
		t.Error("with the tag the probe lacks the failpoint's name")
	}
	cmd := exec.Command(on)
	cmd.Env = append(os.Environ(), "STRATA_FAILPOINTS=probe-point=error(boom)")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "boom") {
		t.Errorf("probe with the tag and the failpoint armed: %v: %s (want exit 1 with the injected error)", err, out)
	}
}
