package main

import (
	"runtime/debug"
	"testing"
)

func TestMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	t.Setenv("GOMEMLIMIT", "")

	const mib = 1 << 20
	for _, tc := range []struct {
		name   string
		args   []string
		want   int64
		source string
	}{
		{"frontend defaults", []string{"--roles", "api"}, memoryPerRole + 1024*mib + 256*mib, "roles and budgets"},
		{"dev: every role", []string{"--roles", "meta,storage,api", "--read-memory", "512MiB", "--segment-cache", "0"}, 3*memoryPerRole + 512*mib, "roles and budgets"},
		{"storage node", []string{"--roles", "storage"}, memoryPerRole, "roles and budgets"},
		{"explicit", []string{"--roles", "api", "--memory-limit", "3GiB"}, 3 << 30, "--memory-limit"},
		{"off", []string{"--roles", "api", "--memory-limit", "-1"}, 0, ""},
		{"unbounded reads", []string{"--roles", "api", "--read-memory", "-1"}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetMemoryLimit(prev)
			o := &serveOptions{}
			if err := newServeCmdFor(o).ParseFlags(tc.args); err != nil {
				t.Fatal(err)
			}
			got, source := o.setMemoryLimit()
			if got != tc.want || source != tc.source {
				t.Fatalf("setMemoryLimit = %d from %q, want %d from %q", got, source, tc.want, tc.source)
			}
			if tc.want > 0 && debug.SetMemoryLimit(-1) != tc.want {
				t.Fatalf("the runtime's limit is %d, want %d", debug.SetMemoryLimit(-1), tc.want)
			}
		})
	}

	// GOMEMLIMIT wins: the runtime read it at start; the node keeps it.
	t.Setenv("GOMEMLIMIT", "700MiB")
	debug.SetMemoryLimit(700 * mib)
	o := &serveOptions{}
	if err := newServeCmdFor(o).ParseFlags([]string{"--roles", "api", "--memory-limit", "3GiB"}); err != nil {
		t.Fatal(err)
	}
	if got, source := o.setMemoryLimit(); got != 700*mib || source != "GOMEMLIMIT" {
		t.Fatalf("with GOMEMLIMIT: %d from %q", got, source)
	}
}

// Nodes with the api role collect at half again their live heap; others
// keep Go's default; GOGC wins.
func TestGCPercent(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })
	t.Setenv("GOGC", "")
	for _, tc := range []struct {
		roles  string
		want   int
		source string
	}{
		{"api", apiGCPercent, "api role"},
		{"meta,storage,api", apiGCPercent, "api role"},
		{"storage", 100, ""},
		{"meta", 100, ""},
	} {
		debug.SetGCPercent(100)
		o := &serveOptions{}
		if err := newServeCmdFor(o).ParseFlags([]string{"--roles", tc.roles}); err != nil {
			t.Fatal(err)
		}
		got, source := o.setGCPercent()
		if got != tc.want || source != tc.source {
			t.Fatalf("roles %s: setGCPercent = %d from %q, want %d from %q", tc.roles, got, source, tc.want, tc.source)
		}
		if inForce := debug.SetGCPercent(100); inForce != tc.want {
			t.Fatalf("roles %s: the runtime's target is %d, want %d", tc.roles, inForce, tc.want)
		}
	}

	// GOGC wins: the runtime read it at start; the node keeps it.
	t.Setenv("GOGC", "80")
	debug.SetGCPercent(80)
	o := &serveOptions{}
	if err := newServeCmdFor(o).ParseFlags([]string{"--roles", "api"}); err != nil {
		t.Fatal(err)
	}
	if got, source := o.setGCPercent(); got != 80 || source != "GOGC" {
		t.Fatalf("with GOGC=80: %d from %q", got, source)
	}
	if inForce := debug.SetGCPercent(100); inForce != 80 {
		t.Fatalf("with GOGC=80 the runtime's target became %d", inForce)
	}
}
