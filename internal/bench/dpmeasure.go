package bench

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// dpConditions say under what the datapath figures were measured.
type dpConditions struct {
	rounds   int
	duration time.Duration
	cores    int
}

// dpScenarioInfo says what each scenario is, and which limit it is a ratio to.
var dpScenarioInfo = []struct {
	key, what, limit string
}{
	{scVethLimit, "limit within a node: bare veth pair between two namespaces, nothing else on the path", ""},
	{scNodeLimit, "limit across nodes: node to node over the lab underlay (veth, bridge, veth), no CNI on the path", ""},
	{scSameNode, "twill (eBPF fast path), pod to pod on one node", scVethLimit},
	{scNative, "twill (eBPF fast path), pod to pod across nodes, native routing", scNodeLimit},
	{scVXLAN, "twill (eBPF fast path), pod to pod across nodes, VXLAN", scNodeLimit},
	{scSameNode + nftablesKeySuffix, "twill (nftables), pod to pod on one node", scVethLimit},
	{scNative + nftablesKeySuffix, "twill (nftables), pod to pod across nodes, native routing", scNodeLimit},
	{scVXLAN + nftablesKeySuffix, "twill (nftables), pod to pod across nodes, VXLAN", scNodeLimit},
	{scRefSameNode, "reference baseline (Debian bridge + host-local), pod to pod on one node", scVethLimit},
	{scRefCrossNode, "reference baseline (Debian bridge + host-local, host-gw routes), pod to pod across nodes", scNodeLimit},
}

// dpComparisons are the suite's targets, for twill's default datapath (the eBPF fast path):
// figure / baseline figure, with the least ratio the project aims at; and what the fast path
// gains over nftables alone.
var dpComparisons = []struct {
	name, value, baseline string
	target                float64
}{
	{"native_vs_node_limit", scNative, scNodeLimit, 0.85},
	{"vxlan_vs_native", scVXLAN, scNative, 0.90},
	{"same_node_vs_reference", scSameNode, scRefSameNode, 1},
	{"native_vs_reference", scNative, scRefCrossNode, 1},
	{"vxlan_vs_reference", scVXLAN, scRefCrossNode, 1},
	{"same_node_ebpf_vs_nftables", scSameNode, scSameNode + nftablesKeySuffix, 1},
	{"native_ebpf_vs_nftables", scNative, scNative + nftablesKeySuffix, 1},
	{"vxlan_ebpf_vs_nftables", scVXLAN, scVXLAN + nftablesKeySuffix, 1},
}

var dpMetricInfo = map[string]struct{ unit, what string }{
	metricThroughput: {"Gbit/s", "iperf3, one TCP stream, receiver's rate"},
	metricRR:         {"trans/s", "TCP_RR: 1-byte request/response on one TCP connection (twill bench rr-client/rr-server, one thread each)"},
	metricCRR:        {"trans/s", "TCP_CRR: connect, 1-byte request/response, close (RST) per transaction (twill bench rr-client/rr-server, one thread each)"},
}

// median of vs (0 for none).
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// datapathMeasurements turns the samples into the report: every scenario's median figure of
// every metric, as a ratio to its limit, then the target comparisons. A figure with no samples
// is left out; a baseline with none is left off rather than given as zero.
func datapathMeasurements(s dpSamples, c dpConditions) []Measurement {
	run := fmt.Sprintf("median of %d runs of %s (min %%.3g, max %%.3g), IPv4, %d cores, %s", c.rounds, c.duration, c.cores,
		strings.ReplaceAll(machineLoad(), "%", "%%"))
	var out []Measurement
	for _, metric := range dpMetrics {
		info := dpMetricInfo[metric]
		for _, sc := range dpScenarioInfo {
			vs := s[sc.key][metric]
			if len(vs) == 0 {
				continue
			}
			cond := fmt.Sprintf("%s; %s; "+run, sc.what, info.what, slices.Min(vs), slices.Max(vs))
			if sc.limit != "" {
				cond += "; baseline: " + sc.limit + ", same run"
			}
			m := Measurement{Metric: fmt.Sprintf("datapath_%s_%s", metric, sc.key), Value: median(vs), Unit: info.unit, Conditions: cond}
			if lim := s[sc.limit][metric]; sc.limit != "" && len(lim) > 0 {
				m = m.WithBaseline(median(lim))
			}
			out = append(out, m)
		}
		for _, cmp := range dpComparisons {
			vs, bs := s[cmp.value][metric], s[cmp.baseline][metric]
			if len(vs) == 0 || len(bs) == 0 {
				continue
			}
			out = append(out, Measurement{
				Metric: fmt.Sprintf("datapath_%s_%s", metric, cmp.name), Value: median(vs), Unit: info.unit,
				Conditions: fmt.Sprintf("%s against %s, target ratio >= %.2f; %s; median of %d runs each",
					cmp.value, cmp.baseline, cmp.target, info.what, c.rounds),
			}.WithBaseline(median(bs)))
		}
	}
	return out
}
