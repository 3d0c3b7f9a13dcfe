package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Settings come from, in rising precedence: the flag defaults, a YAML file
// (--config), STRATA_* environment variables, and flags given on the command
// line. A YAML key and an environment variable are named after the flag:
// --http-addr is `http-addr:` (or `http_addr:`) in the file and
// STRATA_HTTP_ADDR in the environment. Lists are YAML sequences or
// comma-separated values.

// applySettings fills every flag of cmd that was not given on the command
// line from the environment or the config file.
func applySettings(cmd *cobra.Command, configPath string) error {
	file := map[string]any{}
	if configPath != "" {
		b, err := os.ReadFile(configPath)
		if err != nil {
			return fmt.Errorf("--config: %w", err)
		}
		if err := yaml.Unmarshal(b, &file); err != nil {
			return fmt.Errorf("--config %s: %w", configPath, err)
		}
		known := map[string]bool{}
		cmd.Flags().VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
		for k := range file {
			if !known[strings.ReplaceAll(k, "_", "-")] {
				return fmt.Errorf("--config %s: unknown setting %q", configPath, k)
			}
		}
	}
	var firstErr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" || firstErr != nil {
			return
		}
		env := "STRATA_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := setFlag(f, strings.Split(v, ",")); err != nil {
				firstErr = fmt.Errorf("%s=%q: %w", env, v, err)
			}
			return
		}
		v, ok := file[f.Name]
		if !ok {
			v, ok = file[strings.ReplaceAll(f.Name, "-", "_")]
		}
		if !ok {
			return
		}
		var vals []string
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				vals = append(vals, fmt.Sprint(e))
			}
		default:
			vals = []string{fmt.Sprint(x)}
		}
		if err := setFlag(f, vals); err != nil {
			firstErr = fmt.Errorf("--config %s: %s: %w", configPath, f.Name, err)
		}
	})
	return firstErr
}

// setFlag sets a flag from one or more values: list flags get every value,
// scalar flags take a single one.
func setFlag(f *pflag.Flag, vals []string) error {
	switch f.Value.Type() {
	case "stringSlice", "stringArray":
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			var clean []string
			for _, v := range vals {
				if v = strings.TrimSpace(v); v != "" {
					clean = append(clean, v)
				}
			}
			return sv.Replace(clean)
		}
	}
	if len(vals) != 1 {
		return fmt.Errorf("takes one value, got %d", len(vals))
	}
	return f.Value.Set(vals[0])
}
