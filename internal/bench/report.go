// Package bench holds twill's benchmark programs (run by `twill bench SUITE`) and the report
// format they share: bench/out/SUITE.json, a list of measurements, each with the baseline it is
// compared to in the same run, printed as a table too. Benchmarks report numbers; tests assert
// behaviour.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"
)

// Measurement is one reported figure.
type Measurement struct {
	Metric string  `json:"metric"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	// Baseline is the figure this one is compared with, measured in the same run (0: none).
	Baseline float64 `json:"baseline,omitempty"`
	// Ratio is Value/Baseline when there is a baseline.
	Ratio float64 `json:"ratio,omitempty"`
	// Conditions say what was measured under what load, so figures are never read out of context.
	Conditions string `json:"conditions"`
}

// WithBaseline sets the baseline and the ratio to it.
func (m Measurement) WithBaseline(b float64) Measurement {
	m.Baseline = b
	if b != 0 {
		m.Ratio = m.Value / b
	}
	return m
}

// Report is a suite's output.
type Report struct {
	Suite        string
	Measurements []Measurement
}

// Write stores the report as outDir/SUITE.json and prints it as a table to w.
func (r Report) Write(outDir string, w io.Writer) (string, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", outDir, err)
	}
	data, err := json.MarshalIndent(r.Measurements, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(outDir, r.Suite+".json")
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tVALUE\tUNIT\tBASELINE\tRATIO\tCONDITIONS")
	for _, m := range r.Measurements {
		base, ratio := "-", "-"
		if m.Baseline != 0 {
			base, ratio = fmt.Sprintf("%.3g", m.Baseline), fmt.Sprintf("%.3f", m.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%.3f\t%s\t%s\t%s\t%s\n", m.Metric, m.Value, m.Unit, base, ratio, m.Conditions)
	}
	return path, tw.Flush()
}

// Percentile returns the p-th percentile (0..100) of ds by the nearest-rank method.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(p/100*float64(len(s))+0.999999) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(s) {
		rank = len(s) - 1
	}
	return s[rank]
}

// Millis converts a duration to fractional milliseconds for reporting.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
