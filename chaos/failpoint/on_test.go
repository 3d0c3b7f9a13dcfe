//go:build failpoints

package failpoint_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/strata-registry/strata/chaos/failpoint"
)

// eval passes n times through name and returns what each pass gave ("ok"
// or the error's text).
func eval(name string, n int) []string {
	var out []string
	for range n {
		if err := failpoint.Eval(name); err != nil {
			out = append(out, "err")
		} else {
			out = append(out, "ok")
		}
	}
	return out
}

func state(t *testing.T, name string) failpoint.State {
	t.Helper()
	for _, st := range failpoint.Status() {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("no failpoint %s in Status", name)
	return failpoint.State{}
}

func TestSpecs(t *testing.T) {
	if !failpoint.Enabled {
		t.Fatal("not Enabled with the failpoints tag")
	}
	cases := []struct {
		spec string
		want string // results of 5 passes
	}{
		{"error", "err err err err err"},
		{"off", "ok ok ok ok ok"},
		{"1*error", "err ok ok ok ok"},
		{"2*off->error", "ok ok err err err"},
		{"2*off->1*error->off", "ok ok err ok ok"},
		{" 3*error -> 1*off ", "err err err ok ok"},
		{"error(disk on fire)", "err err err err err"},
		{"100%1*error", "err ok ok ok ok"},
	}
	for i, tc := range cases {
		name := fmt.Sprintf("test-spec-%d", i)
		if err := failpoint.Enable(name, tc.spec); err != nil {
			t.Fatalf("%q: %v", tc.spec, err)
		}
		if got := strings.Join(eval(name, 5), " "); got != tc.want {
			t.Errorf("%q: %s, want %s", tc.spec, got, tc.want)
		}
		failpoint.Disable(name)
	}
	for _, bad := range []string{"", "explode", "exit(3)", "sleep", "sleep(soon)", "0*error", "x*error", "150%error", "-1%error",
		"error(unclosed", "1*error->", "panic(now)"} {
		if err := failpoint.Enable("test-bad", bad); err == nil {
			t.Errorf("spec %q accepted", bad)
		}
	}
	if err := failpoint.Enable("bad/name", "off"); err == nil {
		t.Error("a name with a slash was accepted")
	}
}

func TestErrorAndCounters(t *testing.T) {
	const name = "test-counters"
	if err := failpoint.Enable(name, "1*off->2*error(no space)"); err != nil {
		t.Fatal(err)
	}
	if st := state(t, name); st.Spec != "1*off->2*error(no space)" || st.Evaluated != 0 {
		t.Errorf("armed: %+v", st)
	}
	_ = failpoint.Eval(name)
	err := failpoint.Eval(name)
	if !errors.Is(err, failpoint.ErrInjected) || !strings.Contains(err.Error(), "no space") || !strings.Contains(err.Error(), name) {
		t.Errorf("error action: %v", err)
	}
	_ = failpoint.Eval(name)
	_ = failpoint.Eval(name) // disarmed by now: the last term ran out
	if st := state(t, name); st.Spec != "" || st.Evaluated != 3 || st.Fired != 2 {
		t.Errorf("after the terms ran out: %+v, want no spec, evaluated 3, fired 2", st)
	}
	// An unarmed failpoint is free: nothing is counted.
	if err := failpoint.Eval("test-never-armed"); err != nil {
		t.Error(err)
	}
}

func TestProbability(t *testing.T) {
	const name = "test-probability"
	if err := failpoint.Enable(name, "25%error"); err != nil {
		t.Fatal(err)
	}
	defer failpoint.Disable(name)
	errs := 0
	for _, r := range eval(name, 4000) {
		if r == "err" {
			errs++
		}
	}
	// Binomial(4000, 0.25): mean 1000, sd 27; this band is 9 sd wide.
	if errs < 750 || errs > 1250 {
		t.Errorf("25%% of 4000 passes failed %d times", errs)
	}
	if st := state(t, name); st.Fired != int64(errs) || st.Evaluated != 4000 {
		t.Errorf("counters %+v, want fired %d of 4000", st, errs)
	}
}

func TestSleepAndPanic(t *testing.T) {
	if err := failpoint.Enable("test-sleep", "1*sleep(30ms)"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := failpoint.Eval("test-sleep"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("sleep(30ms) returned after %v", d)
	}
	if err := failpoint.Enable("test-panic", "panic"); err != nil {
		t.Fatal(err)
	}
	defer failpoint.Disable("test-panic")
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "failpoint test-panic") {
				t.Errorf("panic action: recovered %v", r)
			}
		}()
		_ = failpoint.Eval("test-panic")
		t.Error("Eval returned from a panic action")
	}()
}

// TestExitFromEnvironment runs this test binary again as a child with the
// failpoints armed from the environment and the HTTP endpoint on: the child
// arms one more over HTTP and passes through it, and must die with
// ExitCode and say which failpoint ended it.
func TestExitFromEnvironment(t *testing.T) {
	if os.Getenv("FAILPOINT_CHILD") == "1" {
		child()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestExitFromEnvironment$", "-test.v")
	cmd.Env = append(os.Environ(), "FAILPOINT_CHILD=1",
		failpoint.EnvSpecs+"=test-env-a=1*error;test-env-b=sleep(1ms)", failpoint.EnvAddr+"=127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != failpoint.ExitCode {
		t.Fatalf("child: %v (want exit status %d)\n%s", err, failpoint.ExitCode, out)
	}
	for _, want := range []string{"failpoints: armed from STRATA_FAILPOINTS", failpoint.ListeningPrefix + "http://127.0.0.1:",
		"child: env armed a and b", "child: PUT armed test-http", "failpoint test-http: exit"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "child: survived") {
		t.Error("the child survived its exit failpoint")
	}
}

func child() {
	fail := func(format string, args ...any) {
		fmt.Printf("child: FAIL "+format+"\n", args...)
		os.Exit(3)
	}
	if failpoint.Eval("test-env-a") == nil || failpoint.Eval("test-env-a") != nil || failpoint.Eval("test-env-b") != nil {
		fail("the environment's specs did not act")
	}
	fmt.Println("child: env armed a and b")
	// The endpoint STRATA_FAILPOINTS_ADDR started printed its URL on
	// stderr (the parent checks that line); a second one, whose URL this
	// process knows, serves the same failpoints.
	url, err := failpoint.Serve("127.0.0.1:0")
	if err != nil {
		fail("serve: %v", err)
	}
	req, _ := http.NewRequest(http.MethodPut, url+"/test-http", strings.NewReader("2*off->exit"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		fail("PUT: %v %v", err, resp)
	}
	resp.Body.Close()
	resp, err = http.Get(url + "/test-http")
	if err != nil {
		fail("GET: %v", err)
	}
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	if !strings.HasPrefix(line, "test-http=2*off->exit evaluated=0") {
		fail("GET said %q", line)
	}
	fmt.Println("child: PUT armed test-http")
	for range 3 {
		_ = failpoint.Eval("test-http")
	}
	fmt.Println("child: survived")
	os.Exit(0)
}

func TestHTTPEndpoint(t *testing.T) {
	url, err := failpoint.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, url+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := do(http.MethodPut, "/test-endpoint", "1*error"); code != http.StatusNoContent {
		t.Fatalf("PUT: %d", code)
	}
	if code, body := do(http.MethodPut, "/test-endpoint", "explode"); code != http.StatusBadRequest || !strings.Contains(body, "unknown action") {
		t.Errorf("PUT of a bad spec: %d %s", code, body)
	}
	if _, body := do(http.MethodGet, "/", ""); !strings.Contains(body, "test-endpoint=1*error evaluated=0 fired=0") ||
		!strings.Contains(body, failpoint.UploadBeforeCommit+"=") {
		t.Errorf("GET /:\n%s", body)
	}
	if err := failpoint.Eval("test-endpoint"); err == nil {
		t.Error("armed over HTTP, the failpoint did not act")
	}
	if _, body := do(http.MethodGet, "/test-endpoint", ""); strings.TrimSpace(body) != "test-endpoint= evaluated=1 fired=1" {
		t.Errorf("GET /test-endpoint: %q", body)
	}
	_ = failpoint.Enable("test-endpoint", "error")
	if code, _ := do(http.MethodDelete, "/test-endpoint", ""); code != http.StatusNoContent {
		t.Errorf("DELETE: %d", code)
	}
	if err := failpoint.Eval("test-endpoint"); err != nil {
		t.Errorf("disarmed over HTTP, the failpoint still acts: %v", err)
	}
}
