package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// `strata bench report` turns the JSON lines of several targets into a table
// of ratios to a baseline target, per case and headline metric.

func newBenchReportCmd() *cobra.Command {
	var baseline string
	cmd := &cobra.Command{
		Use:   "report [file.jsonl ...]",
		Short: "Print a Markdown table of ratios to a baseline target from strata bench JSON lines",
		Long: `Read JSON lines written by strata bench (files, or stdin when none or "-") and print
a Markdown table: one row per case (--case, else scenario and parameters) and
headline metric (--metric, else MB/s for data scenarios, ops/s for manifest and
small-image scenarios, p50 latency for tag-list), one column per --target with
its value and its ratio to the baseline target. A goal given with --metric
name:goal is checked on the ratio (at least the goal when higher is better, at
most the goal otherwise). When a case was measured more than once on a
target, the median is used.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			results, err := readBenchResults(cmd.InOrStdin(), args)
			if err != nil {
				return err
			}
			return printBenchReport(cmd.OutOrStdout(), results, baseline)
		},
	}
	cmd.Flags().StringVar(&baseline, "baseline", "distribution", "target the others are divided by")
	return cmd
}

func readBenchResults(stdin io.Reader, files []string) ([]benchResult, error) {
	if len(files) == 0 {
		files = []string{"-"}
	}
	var out []benchResult
	for _, f := range files {
		var r io.Reader = stdin
		if f != "-" {
			fh, err := os.Open(f)
			if err != nil {
				return nil, err
			}
			defer fh.Close()
			r = fh
		}
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for line := 1; sc.Scan(); line++ {
			t := strings.TrimSpace(sc.Text())
			if !strings.HasPrefix(t, "{") {
				continue
			}
			var res benchResult
			if err := json.Unmarshal([]byte(t), &res); err != nil {
				return nil, fmt.Errorf("%s:%d: %w", f, line, err)
			}
			out = append(out, res)
		}
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// defaultBenchMetric is the headline metric of a scenario without --metric.
func defaultBenchMetric(scenario string) benchMetric {
	switch scenario {
	case "manifest-get", "push-small-images":
		return benchMetric{Name: "ops_per_s", HigherIsBetter: true}
	case "tag-list":
		return benchMetric{Name: "p50_ms"}
	}
	return benchMetric{Name: "mb_per_s", HigherIsBetter: true}
}

var benchMetricLabels = map[string]string{
	"ops_per_s": "ops/s", "mb_per_s": "MB/s", "p50_ms": "p50 ms", "p90_ms": "p90 ms", "p99_ms": "p99 ms",
	"max_ms": "max ms", "mean_ms": "mean ms", "server_cpu_s": "server CPU s", "server_peak_rss_mib": "server RSS MiB",
	"frontend_peak_rss_mib": "frontend RSS MiB", "cpu_s_per_gb": "server CPU s/GB",
}

type benchCell struct {
	values []float64
	errors bool
}

func (c *benchCell) median() float64 {
	s := slices.Clone(c.values)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func printBenchReport(w io.Writer, results []benchResult, baseline string) error {
	type rowKey struct{ caseName, metric string }
	var rows []rowKey
	var targets []string
	rowMetric := map[rowKey]benchMetric{}
	cells := map[rowKey]map[string]*benchCell{}
	for i := range results {
		r := &results[i]
		name := r.Case
		if name == "" {
			name = r.Scenario + " " + benchParamsText(r)
		}
		if !slices.Contains(targets, r.Target) {
			targets = append(targets, r.Target)
		}
		ms := r.Metrics
		if len(ms) == 0 {
			m := defaultBenchMetric(r.Scenario)
			m.Value, _ = r.value(m.Name)
			ms = []benchMetric{m}
		}
		for _, m := range ms {
			k := rowKey{name, m.Name}
			if _, ok := rowMetric[k]; !ok {
				rows = append(rows, k)
				rowMetric[k] = m
				cells[k] = map[string]*benchCell{}
			}
			if m.Goal > 0 {
				rm := rowMetric[k]
				rm.Goal = m.Goal
				rowMetric[k] = rm
			}
			c := cells[k][r.Target]
			if c == nil {
				c = &benchCell{}
				cells[k][r.Target] = c
			}
			if r.SetupError != "" {
				c.errors = true
				continue
			}
			c.values = append(c.values, m.Value)
			c.errors = c.errors || r.Errors > 0
		}
	}
	// The baseline first, the others in order of appearance.
	if i := slices.Index(targets, baseline); i > 0 {
		targets = append([]string{baseline}, slices.Delete(targets, i, i+1)...)
	}
	hasBase := slices.Contains(targets, baseline)
	hdr := []string{"case", "metric"}
	for _, t := range targets {
		label := t
		if label == "" {
			label = "(no target)"
		}
		hdr = append(hdr, label)
		if hasBase && t != baseline {
			hdr = append(hdr, label+" / "+baseline)
		}
	}
	hdr = append(hdr, "goal")
	fmt.Fprintln(w, "| "+strings.Join(hdr, " | ")+" |")
	sep := make([]string, len(hdr))
	for i := range sep {
		sep[i] = "---"
		if i >= 2 {
			sep[i] = "---:"
		}
	}
	fmt.Fprintln(w, "|"+strings.Join(sep, "|")+"|")
	anyErrors := false
	for _, k := range rows {
		m := rowMetric[k]
		line := []string{k.caseName, benchMetricLabels[m.Name]}
		base := cells[k][baseline]
		for _, t := range targets {
			c := cells[k][t]
			switch {
			case c == nil:
				line = append(line, "")
			case len(c.values) == 0:
				line = append(line, "failed")
				anyErrors = true
			default:
				v := fmtBenchValue(c.median())
				if c.errors {
					v += " (!)"
					anyErrors = true
				}
				line = append(line, v)
			}
			if !hasBase || t == baseline {
				continue
			}
			if c == nil || len(c.values) == 0 || base == nil || len(base.values) == 0 || base.median() == 0 {
				line = append(line, "")
				continue
			}
			ratio := c.median() / base.median()
			cell := fmt.Sprintf("%.2f×", ratio)
			if m.Goal > 0 {
				if m.HigherIsBetter && ratio >= m.Goal || !m.HigherIsBetter && ratio <= m.Goal {
					cell += " ✓"
				} else {
					cell += " ✗"
				}
			}
			line = append(line, cell)
		}
		goal := ""
		if m.Goal > 0 {
			if m.HigherIsBetter {
				goal = fmt.Sprintf("≥ %g×", m.Goal)
			} else {
				goal = fmt.Sprintf("≤ %g×", m.Goal)
			}
		}
		line = append(line, goal)
		fmt.Fprintln(w, "| "+strings.Join(line, " | ")+" |")
	}
	if anyErrors {
		fmt.Fprintln(w, "\n(!) some operations failed in this measurement; \"failed\": its setup failed (see the JSON lines).")
	}
	return nil
}

func fmtBenchValue(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
