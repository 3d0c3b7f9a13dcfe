package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// Settings: flag defaults < YAML file < STRATA_* environment < flags.
func TestSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "strata.yaml")
	os.WriteFile(cfg, []byte("http-addr: 10.0.0.1:5000\ndata_dir: /from/file\njoin: [a:1, b:2]\ndead-after: 7s\nk: 4\nm: 2\n"), 0o600)
	t.Setenv("STRATA_DATA_DIR", "/from/env")
	t.Setenv("STRATA_ZONE", "rack-9")
	cmd := newServeCmd()
	var got *serveOptions
	cmd.RunE = nil
	if err := cmd.ParseFlags([]string{"--config", cfg, "--k", "6", "--m", "3"}); err != nil {
		t.Fatal(err)
	}
	if err := applySettings(cmd, cfg); err != nil {
		t.Fatal(err)
	}
	f := cmd.Flags()
	val := func(name string) string { return f.Lookup(name).Value.String() }
	for name, want := range map[string]string{
		"http-addr":  "10.0.0.1:5000", // file
		"data-dir":   "/from/env",     // env beats file
		"zone":       "rack-9",        // env
		"dead-after": "7s",            // file
		"k":          "6",             // flag beats file
		"m":          "3",
		"grpc-addr":  "127.0.0.1:0", // default
	} {
		if got := val(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	join, _ := f.GetStringSlice("join")
	if !reflect.DeepEqual(join, []string{"a:1", "b:2"}) {
		t.Errorf("join = %v", join)
	}
	_ = got
	os.WriteFile(cfg, []byte("no-such-setting: 1\n"), 0o600)
	if err := applySettings(newServeCmd(), cfg); err == nil {
		t.Error("an unknown setting in the file was accepted")
	}
}
