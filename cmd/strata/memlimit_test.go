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
