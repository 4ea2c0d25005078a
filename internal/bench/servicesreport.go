package bench

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// The services suite's report: one row per figure, proxy and scale, named
// services_FIGURE_PROXY_SCALE; twill's rows carry kube-proxy nftables' figure as their
// baseline (the ratio column is twill's over kube-proxy's), and a second row,
// ..._vs_kube_proxy_iptables, the iptables mode's. The connect rate at the largest scale is
// also reported against the same proxy's rate at the smallest (services_crr_PROXY_LARGE_vs_SMALL).

// Targets of the acceptance criteria (twill's figures).
const (
	targetCRRRatio    = 0.95                  // connect rate at 50,000 over that at 1,000
	targetAddP99      = 10 * time.Millisecond // one service added at 50,000, p99
	targetResync      = 2 * time.Second       // full resync of 10,000 services
	targetAddScale    = 50000
	targetResyncScale = 10000
)

// svcConditions are what every figure was measured under.
type svcConditions struct {
	cores       int
	duration    time.Duration
	syncTimeout time.Duration
}

// svcFigure is one reported figure of a result.
type svcFigure struct {
	key, unit, what string
	value           func(svcResult) float64
	// target, when set, says whether a result meets its acceptance target ("": none applies).
	target func(r svcResult) string
}

func proxyKey(proxy string) string { return strings.ReplaceAll(proxy, "-", "_") }

// svcFigures lists the figures in report order.
func svcFigures(cond svcConditions) []svcFigure {
	return []svcFigure{
		{key: "resync", unit: "s", value: func(r svcResult) float64 { return r.resync.Seconds() },
			what: "full sync: the proxy started with the services present and none of its rules in the kernel (cleaned after the previous proxy), from its process start until eight sample ClusterIPs (first, last, six between) each accept a TCP connection from a pod; measured by connecting",
			target: func(r svcResult) string {
				if r.proxy != ProxyTwill || r.scale != targetResyncScale {
					return ""
				}
				return metOrMissed(r.resync <= targetResync, fmt.Sprintf("target at most %s", targetResync))
			}},
		{key: "add_programmed_p50", unit: "ms", value: func(r svcResult) float64 { return Millis(Percentile(r.adds, 50)) },
			what: "one Service written to the API (its EndpointSlice 1.5 s before), from just before the write until a connect from a pod to its ClusterIP succeeds (a new attempt every 1 ms); additions 2.5 s apart (at most 2 min of them); measured by connecting, the API write included"},
		{key: "add_programmed_p99", unit: "ms", value: func(r svcResult) float64 { return Millis(Percentile(r.adds, 99)) },
			what: "as add_programmed_p50, 99th percentile by nearest rank (below 100 additions: the slowest)",
			target: func(r svcResult) string {
				if r.proxy != ProxyTwill || r.scale != targetAddScale {
					return ""
				}
				return metOrMissed(Percentile(r.adds, 99) <= targetAddP99, fmt.Sprintf("target at most %s", targetAddP99))
			}},
		{key: "add_api_write_p50", unit: "ms", value: func(r svcResult) float64 { return Millis(Percentile(r.addWrites, 50)) },
			what: "the part of add_programmed that was the Service's API write (from the request until the apiserver answered; the proxy may have begun before), median: the same for every proxy but for the machine's noise"},
		{key: "add_own_metric_mean", unit: "ms", value: func(r svcResult) float64 { return Millis(r.ownProgramming) },
			what: "the proxy's own measure during the additions, mean: kube-proxy's kubeproxy_sync_proxy_rules_duration_seconds (one sync: computing and writing the rules), twill's twill_services_programming_seconds (from the agent receiving a change to the end of its apply, the 5 ms batching window included)"},
		{key: "crr", unit: "conn/s", value: func(r svcResult) float64 { return r.crr },
			what: fmt.Sprintf("new TCP connections per second (1-byte request and response each, `twill bench rr-client --connect-per-request`, one thread) from a pod to one ClusterIP whose two endpoints are pods on the same node, for %s", cond.duration)},
		{key: "connect_p50", unit: "us", value: func(r svcResult) float64 { return r.connectP50 },
			what: "time connect() took in the crr figure (the first packet's path through the service translation and back), median"},
		{key: "connect_p99", unit: "us", value: func(r svcResult) float64 { return r.connectP99 },
			what: "time connect() took in the crr figure, 99th percentile"},
		{key: "rss", unit: "MiB", value: func(r svcResult) float64 { return r.proxyRSS },
			what: "VmRSS of the service proxy after its measurements: kube-proxy's, or twill's agent's (with --services, pod networking included); twill's baseline is kube-proxy's plus the agent's beside it (without --services): what the node spends on pod networking and services either way"},
	}
}

func metOrMissed(ok bool, target string) string {
	if ok {
		return target + ": met"
	}
	return target + ": missed"
}

// servicesMeasurements turns the results into the report.
func servicesMeasurements(results []svcResult, sc svcConditions) []Measurement {
	byKey := map[string]svcResult{}
	var scales []int
	var proxies []string
	for _, r := range results {
		byKey[fmt.Sprint(r.proxy, "/", r.scale)] = r
		if len(scales) == 0 || scales[len(scales)-1] != r.scale {
			scales = append(scales, r.scale)
		}
		if !slices.Contains(proxies, r.proxy) {
			proxies = append(proxies, r.proxy)
		}
	}
	find := func(proxy string, scale int) (svcResult, bool) {
		r, ok := byKey[fmt.Sprint(proxy, "/", scale)]
		return r, ok
	}
	lab := fmt.Sprintf("one lab node, pods wired by twill (native routing), kube-proxy and the control plane built from the pinned upstream version, %d cores, noisy machine (other labs running)", sc.cores)
	var out []Measurement
	for _, f := range svcFigures(sc) {
		for _, scale := range scales {
			for _, proxy := range proxies {
				r, ok := find(proxy, scale)
				if !ok {
					continue
				}
				if (r.syncTimedOut && f.key != "resync") || (f.key == "add_own_metric_mean" && r.ownCount < 0) {
					continue // not measured
				}
				base := fmt.Sprintf("services_%s_%s_%d", f.key, proxyKey(proxy), scale)
				cond := fmt.Sprintf("%s; %d services of two endpoints; %s; %s", proxy, scale, f.what, lab)
				if strings.HasPrefix(f.key, "add_") {
					cond = fmt.Sprintf("%d additions; %s", len(r.adds), cond)
				}
				if r.syncTimedOut {
					cond = fmt.Sprintf("NOT SYNCED within %s: the value is a lower bound, and no other figure of this proxy was taken at this scale; %s", sc.syncTimeout, cond)
				}
				if f.target != nil {
					if t := f.target(r); t != "" {
						cond = t + "; " + cond
					}
				}
				m := Measurement{Metric: base, Value: f.value(r), Unit: f.unit, Conditions: cond}
				if proxy != ProxyTwill {
					out = append(out, m)
					continue
				}
				// twill against each kube-proxy mode measured at this scale.
				first := true
				for _, kp := range []string{ProxyKubeProxyNFTables, ProxyKubeProxyIPTables} {
					kr, ok := find(kp, scale)
					if !ok || (kr.syncTimedOut && f.key != "resync") || (f.key == "add_own_metric_mean" && kr.ownCount < 0) {
						continue
					}
					b := f.value(kr)
					if f.key == "rss" {
						b = kr.proxyRSS + kr.agentRSS
					}
					row := m
					if !first {
						row.Metric = base + "_vs_" + proxyKey(kp)
					}
					row.Conditions = "baseline: " + kp + "; " + cond
					out = append(out, row.WithBaseline(b))
					first = false
				}
				if first {
					out = append(out, m)
				}
			}
		}
	}
	// The connect rate from the smallest scale to the largest, per proxy.
	if len(scales) > 1 {
		lo, hi := scales[0], scales[len(scales)-1]
		for _, proxy := range proxies {
			a, okA := find(proxy, lo)
			b, okB := find(proxy, hi)
			if !okA || !okB || a.syncTimedOut || b.syncTimedOut {
				continue
			}
			m := Measurement{Metric: fmt.Sprintf("services_crr_%s_%d_vs_%d", proxyKey(proxy), hi, lo), Value: b.crr, Unit: "conn/s",
				Conditions: fmt.Sprintf("%s; new connections per second to a ClusterIP with %d services, baseline the same with %d (ratio below 1: the rate drops as services grow); %s", proxy, hi, lo, lab)}
			if proxy == ProxyTwill && lo == DefaultServiceScales[0] && hi == DefaultServiceScales[len(DefaultServiceScales)-1] {
				m.Conditions = metOrMissed(a.crr > 0 && b.crr/a.crr >= targetCRRRatio, fmt.Sprintf("target ratio at least %.2f", targetCRRRatio)) + "; " + m.Conditions
			}
			out = append(out, m.WithBaseline(a.crr))
		}
	}
	return out
}
