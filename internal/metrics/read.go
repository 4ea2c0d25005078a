package metrics

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"text/tabwriter"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// VerdictCount is one verdict counter as read back from an agent's metrics.
type VerdictCount struct {
	VerdictLabels
	Packets, Bytes uint64
}

// ReadPolicyVerdicts scrapes an agent's metrics at url and returns its policy verdict
// counters, drops first, then by packets.
func ReadPolicyVerdicts(ctx context.Context, url string) ([]VerdictCount, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read the agent's metrics (is the agent running with --metrics-address?): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read the agent's metrics from %s: %s", url, resp.Status)
	}
	return parseVerdicts(resp.Body)
}

func parseVerdicts(r io.Reader) ([]VerdictCount, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	byLabels := map[VerdictLabels]*VerdictCount{}
	get := func(m *dto.Metric) *VerdictCount {
		var l VerdictLabels
		for _, lp := range m.GetLabel() {
			switch lp.GetName() {
			case "tier":
				l.Tier = lp.GetValue()
			case "policy":
				l.Policy = lp.GetValue()
			case "direction":
				l.Direction = lp.GetValue()
			case "rule":
				l.Rule = lp.GetValue()
			case "verdict":
				l.Verdict = lp.GetValue()
			}
		}
		v, ok := byLabels[l]
		if !ok {
			v = &VerdictCount{VerdictLabels: l}
			byLabels[l] = v
		}
		return v
	}
	for _, m := range families[PolicyPacketsMetric].GetMetric() {
		get(m).Packets = uint64(m.GetCounter().GetValue())
	}
	for _, m := range families[PolicyBytesMetric].GetMetric() {
		get(m).Bytes = uint64(m.GetCounter().GetValue())
	}
	out := make([]VerdictCount, 0, len(byLabels))
	for _, v := range byLabels {
		out = append(out, *v)
	}
	slices.SortFunc(out, func(a, b VerdictCount) int {
		if (a.Verdict == VerdictDrop) != (b.Verdict == VerdictDrop) {
			if a.Verdict == VerdictDrop {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(b.Packets, a.Packets), cmp.Compare(a.Tier, b.Tier),
			cmp.Compare(a.Policy, b.Policy), cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Rule, b.Rule))
	})
	return out, nil
}

// WriteVerdicts prints counters as a table; with all false, counters at zero are left out.
func WriteVerdicts(w io.Writer, vs []VerdictCount, all bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERDICT\tPACKETS\tBYTES\tTIER\tPOLICY\tDIRECTION\tRULE")
	for _, v := range vs {
		if v.Packets == 0 && !all {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\n", v.Verdict, v.Packets, v.Bytes,
			dash(v.Tier), dash(v.Policy), dash(v.Direction), v.Rule)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
