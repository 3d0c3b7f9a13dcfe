//go:build failpoints

package failpoint

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Enabled is true: this build has failpoints (-tags failpoints).
const Enabled = true

// term is one step of a spec.
type term struct {
	count  int     // 0: for ever
	prob   float64 // in (0, 1]
	action string
	arg    string
	sleep  time.Duration
}

type point struct {
	spec      string
	terms     []term
	evaluated int64
	fired     int64
}

var registry = struct {
	sync.Mutex
	points map[string]*point
}{points: map[string]*point{}}

// Enable arms failpoint name with spec (see the package comment). Any name
// is accepted, so that tests can use their own.
func Enable(name, spec string) error {
	if name == "" || strings.ContainsAny(name, "=;/ ") {
		return fmt.Errorf("failpoint: bad name %q", name)
	}
	terms, err := parse(spec)
	if err != nil {
		return fmt.Errorf("failpoint %s: %w", name, err)
	}
	registry.Lock()
	defer registry.Unlock()
	p := registry.points[name]
	if p == nil {
		p = &point{}
		registry.points[name] = p
	}
	p.spec, p.terms = strings.TrimSpace(spec), terms
	return nil
}

// Disable disarms failpoint name (its counters stay).
func Disable(name string) {
	registry.Lock()
	defer registry.Unlock()
	if p := registry.points[name]; p != nil {
		p.spec, p.terms = "", nil
	}
}

// Status describes every failpoint compiled in or armed once, by name.
func Status() []State {
	registry.Lock()
	defer registry.Unlock()
	names := slices.Clone(Names)
	for n := range registry.points {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	out := make([]State, 0, len(names))
	for _, n := range names {
		st := State{Name: n}
		if p := registry.points[n]; p != nil {
			st.Spec, st.Evaluated, st.Fired = p.spec, p.evaluated, p.fired
		}
		out = append(out, st)
	}
	return out
}

// Eval passes through failpoint name: it does what the failpoint is armed
// to do (nothing when it is not).
func Eval(name string) error {
	registry.Lock()
	p := registry.points[name]
	if p == nil || len(p.terms) == 0 {
		registry.Unlock()
		return nil
	}
	p.evaluated++
	t := &p.terms[0]
	if t.prob < 1 && rand.Float64() >= t.prob {
		registry.Unlock()
		return nil
	}
	do := *t
	if t.count > 0 {
		t.count--
		if t.count == 0 {
			p.terms = p.terms[1:]
			if len(p.terms) == 0 {
				p.spec = ""
			}
		}
	}
	if do.action != "off" {
		p.fired++
	}
	registry.Unlock()

	switch do.action {
	case "off":
		return nil
	case "sleep":
		time.Sleep(do.sleep)
		return nil
	case "error":
		if do.arg != "" {
			return fmt.Errorf("%w at %s: %s", ErrInjected, name, do.arg)
		}
		return fmt.Errorf("%w at %s", ErrInjected, name)
	case "panic":
		panic("failpoint " + name)
	case "exit":
		fmt.Fprintf(os.Stderr, "failpoint %s: exit\n", name)
		os.Exit(ExitCode)
	}
	return nil
}

// parse reads a spec: terms joined by "->", each [P%][N*]action[(arg)].
func parse(spec string) ([]term, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, errors.New("empty spec")
	}
	var out []term
	for _, raw := range strings.Split(spec, "->") {
		s := strings.TrimSpace(raw)
		t := term{prob: 1}
		if i := strings.Index(s, "%"); i >= 0 && !strings.Contains(s[:i], "(") {
			p, err := strconv.ParseFloat(s[:i], 64)
			if err != nil || p <= 0 || p > 100 {
				return nil, fmt.Errorf("bad probability in %q", s)
			}
			t.prob, s = p/100, s[i+1:]
		}
		if i := strings.Index(s, "*"); i >= 0 && !strings.Contains(s[:i], "(") {
			n, err := strconv.Atoi(s[:i])
			if err != nil || n < 1 {
				return nil, fmt.Errorf("bad count in %q", s)
			}
			t.count, s = n, s[i+1:]
		}
		t.action = s
		if i := strings.Index(s, "("); i >= 0 {
			if !strings.HasSuffix(s, ")") {
				return nil, fmt.Errorf("unclosed argument in %q", raw)
			}
			t.action, t.arg = s[:i], s[i+1:len(s)-1]
		}
		switch t.action {
		case "off", "panic", "exit":
			if t.arg != "" {
				return nil, fmt.Errorf("%s takes no argument", t.action)
			}
		case "error":
		case "sleep":
			d, err := time.ParseDuration(t.arg)
			if err != nil || d < 0 {
				return nil, fmt.Errorf("sleep needs a duration, got %q", t.arg)
			}
			t.sleep = d
		default:
			return nil, fmt.Errorf("unknown action %q (exit, panic, error, sleep(d), off)", t.action)
		}
		out = append(out, t)
	}
	return out, nil
}

// EnableAll arms failpoints from a list "name=spec;name=spec" (the form of
// STRATA_FAILPOINTS).
func EnableAll(list string) error {
	var errs []error
	for _, item := range strings.Split(list, ";") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, spec, ok := strings.Cut(item, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("failpoint: %q is not name=spec", item))
			continue
		}
		errs = append(errs, Enable(strings.TrimSpace(name), spec))
	}
	return errors.Join(errs...)
}

// Handler serves the HTTP endpoint: GET / lists the failpoints ("name=spec
// evaluated=N fired=N" lines), GET /<name> one of them, PUT /<name> arms it
// with the request body as spec, DELETE /<name> disarms it.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.Trim(r.URL.Path, "/")
		switch {
		case r.Method == http.MethodGet:
			for _, st := range Status() {
				if name == "" || st.Name == name {
					fmt.Fprintf(w, "%s=%s evaluated=%d fired=%d\n", st.Name, st.Spec, st.Evaluated, st.Fired)
				}
			}
		case r.Method == http.MethodPut && name != "":
			b, err := io.ReadAll(io.LimitReader(r.Body, 4096))
			if err == nil {
				err = Enable(name, string(b))
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		case r.Method == http.MethodDelete && name != "":
			Disable(name)
			w.WriteHeader(http.StatusNoContent)
		default:
			http.Error(w, "GET /, GET|PUT|DELETE /<name>", http.StatusMethodNotAllowed)
		}
	})
}

// Serve starts the HTTP endpoint on addr and returns its base URL.
func Serve(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	go func() { _ = http.Serve(ln, Handler()) }()
	return "http://" + ln.Addr().String(), nil
}

func init() {
	if list := os.Getenv(EnvSpecs); list != "" {
		if err := EnableAll(list); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", EnvSpecs, err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "failpoints: armed from %s: %s\n", EnvSpecs, list)
	}
	if addr := os.Getenv(EnvAddr); addr != "" {
		url, err := Serve(addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s=%s: %v\n", EnvAddr, addr, err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "%s%s\n", ListeningPrefix, url)
	}
}
