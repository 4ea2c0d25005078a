package bench

import (
	"fmt"
	"math"
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
	rounds      int
	syncTimeout time.Duration
	// load is the machine's load averages when the report was made (machineLoad).
	load string
	// creations are the steps that created the bulk services, one per scale.
	creations []svcCreation
}

// svcCreation is one step of creating bulk services through the API.
type svcCreation struct {
	from, to int
	took     time.Duration
	// cpu says what the lab's programs used meanwhile (cpuSample.describeSince).
	cpu string
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
		{key: "add_after_write_p50", unit: "ms", value: func(r svcResult) float64 { return Millis(Percentile(afterWrite(r), 50)) },
			what: "as add_programmed_p50, but from the apiserver's answer to the write (not from the request) until a connect to the new ClusterIP succeeds: the proxy's part without the apiserver's own time, which grows with the number of services (its ClusterIP allocator counts every allocated address on each allocation); a proxy may have begun before the answer, so this slightly understates its time"},
		{key: "add_after_write_p99", unit: "ms", value: func(r svcResult) float64 { return Millis(Percentile(afterWrite(r), 99)) },
			what: "as add_after_write_p50, 99th percentile by nearest rank (below 100 additions: the slowest)",
			target: func(r svcResult) string {
				if r.proxy != ProxyTwill || r.scale != targetAddScale {
					return ""
				}
				return metOrMissed(Percentile(afterWrite(r), 99) <= targetAddP99, fmt.Sprintf("target at most %s (from the API's answer)", targetAddP99))
			}},
		{key: "add_api_write_p50", unit: "ms", value: func(r svcResult) float64 { return Millis(Percentile(r.addWrites, 50)) },
			what: "the part of add_programmed that was the Service's API write (from the request until the apiserver answered; the proxy may have begun before), median: the same for every proxy but for the machine's noise"},
		{key: "add_own_metric_mean", unit: "ms", value: func(r svcResult) float64 { return Millis(r.ownProgramming) },
			what: "the proxy's own measure during the additions, mean: kube-proxy's kubeproxy_sync_proxy_rules_duration_seconds (one sync: computing and writing the rules), twill's twill_services_programming_seconds (from the agent receiving a change to the end of its apply, the 5 ms batching window included)"},
		{key: "add_own_metric_p99_bound", unit: "ms", value: func(r svcResult) float64 { return 1000 * r.ownP99Bound },
			what: "the proxy's own measure during the additions (as add_own_metric_mean), 99th percentile read from its histogram: the upper bound of the bucket that holds it (the buckets double from 1 ms), so the p99 is at most this"},
		{key: "crr", unit: "conn/s", value: func(r svcResult) float64 { return r.crr },
			what: fmt.Sprintf("new TCP connections per second (1-byte request and response each, `twill bench rr-client --connect-per-request`, one thread) from a pod to one ClusterIP whose two endpoints are pods on the same node, median of %d rounds of %s, each followed by a round to one of the pods directly (the machine's reference)", cond.rounds, cond.duration)},
		{key: "connect_p50", unit: "us", value: func(r svcResult) float64 { return r.connectP50 },
			what: "time connect() took in the crr figure (the first packet's path through the service translation and back), median (the median over the rounds of each round's)"},
		{key: "connect_p99", unit: "us", value: func(r svcResult) float64 { return r.connectP99 },
			what: "time connect() took in the crr figure, 99th percentile (the median over the rounds of each round's)"},
		{key: "rss", unit: "MiB", value: func(r svcResult) float64 { return r.proxyRSS },
			what: "VmRSS of the service proxy after its measurements: kube-proxy's, or twill's agent's (with --services, pod networking included); twill's baseline is kube-proxy's plus the agent's beside it (without --services): what the node spends on pod networking and services either way"},
	}
}

// afterWrite are the additions' times from the API's answer to the first connection.
func afterWrite(r svcResult) []time.Duration {
	out := make([]time.Duration, 0, len(r.adds))
	for i, d := range r.adds {
		if i < len(r.addWrites) {
			d -= r.addWrites[i]
		}
		out = append(out, d)
	}
	return out
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
	load := sc.load
	if load == "" {
		load = "load average unknown"
	}
	lab := fmt.Sprintf("one lab node, pods wired by twill (native routing), kube-proxy and the control plane built from the pinned upstream version, %d cores, noisy machine (other labs running), %s", sc.cores, load)
	var out []Measurement
	for _, f := range svcFigures(sc) {
		for _, scale := range scales {
			for _, proxy := range proxies {
				r, ok := find(proxy, scale)
				if !ok {
					continue
				}
				if !measured(r, f.key) {
					continue
				}
				base := fmt.Sprintf("services_%s_%s_%d", f.key, proxyKey(proxy), scale)
				cond := fmt.Sprintf("%s; %d services of two endpoints; %s; %s", proxy, scale, f.what, lab)
				if strings.HasPrefix(f.key, "add_") {
					cond = fmt.Sprintf("%d additions; %s", len(r.adds), cond)
				}
				if f.key == "crr" && len(r.rounds.service) > 0 {
					cond = fmt.Sprintf("%s; to the pod directly: %.0f, %s; %s when the rounds ended; %s", describeRounds(r.rounds.service), median(r.rounds.direct), describeRounds(r.rounds.direct), r.crrLoad, cond)
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
					if !ok || !measured(kr, f.key) {
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
	// How fast the services were created: what a run of this suite costs, and how the
	// apiserver copes.
	for _, c := range sc.creations {
		if c.to <= c.from || c.took <= 0 {
			continue
		}
		out = append(out, Measurement{Metric: fmt.Sprintf("services_api_create_rate_%d", c.to), Value: float64(c.to-c.from) / c.took.Seconds(), Unit: "services/s",
			Conditions: fmt.Sprintf("services %d to %d created through the API (a Service asking for its ClusterIP, then its EndpointSlice; %d parallel clients, protobuf) in %s; %s; %s", c.from+1, c.to, serviceWorkers, c.took.Round(time.Second), c.cpu, lab)})
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
				Conditions: fmt.Sprintf("%s; new connections per second to a ClusterIP with %d services, baseline the same with %d (ratio below 1: the rate drops as services grow), medians of rounds; %s%s", proxy, hi, lo, crrNoise(a, b), lab)}
			if proxy == ProxyTwill && lo == DefaultServiceScales[0] && hi == DefaultServiceScales[len(DefaultServiceScales)-1] {
				m.Conditions = metOrMissed(a.crr > 0 && b.crr/a.crr >= targetCRRRatio, fmt.Sprintf("target ratio at least %.2f", targetCRRRatio)) + "; " + m.Conditions
			}
			out = append(out, m.WithBaseline(a.crr))
			// The machine's drift between the two: the same rounds' connections to a pod
			// directly, no service address involved.
			if len(a.rounds.direct) > 0 && len(b.rounds.direct) > 0 {
				d := Measurement{Metric: fmt.Sprintf("services_crr_direct_%s_%d_vs_%d", proxyKey(proxy), hi, lo), Value: median(b.rounds.direct), Unit: "conn/s",
					Conditions: fmt.Sprintf("%s running; new connections per second from the client pod to a server pod's own address (no service), the reference rounds made beside the crr rounds at %d and at %d services: the machine's drift between the two times (kube-proxy's iptables mode also walks its nat chains on these); %s", proxy, hi, lo, lab)}
				out = append(out, d.WithBaseline(median(a.rounds.direct)))
			}
		}
	}
	return out
}

// measured says whether a result has the figure (a proxy that never synced has only its
// resync; a proxy without a metric of its own, none of those figures).
func measured(r svcResult, key string) bool {
	switch {
	case r.syncTimedOut:
		return key == "resync"
	case strings.HasPrefix(key, "add_own_metric"):
		return r.ownCount > 0 && (key != "add_own_metric_p99_bound" || !math.IsInf(r.ownP99Bound, 1))
	}
	return true
}

// crrNoise says, for the ratio of the connect rate at b's scale to that at a's, how far the
// rounds let it move and whether the difference stands above that noise.
func crrNoise(a, b svcResult) string {
	if len(a.rounds.service) == 0 || len(b.rounds.service) == 0 || a.crr == 0 {
		return ""
	}
	low, high := ratioRange(b.rounds.service, a.rounds.service)
	ratio := b.crr / a.crr
	verdict := "the difference is within the rounds' noise"
	if high < 1 {
		verdict = "a drop above the rounds' noise (every round at the larger scale is slower than every round at the smaller)"
	} else if low > 1 {
		verdict = "a rise above the rounds' noise"
	}
	s := fmt.Sprintf("ratio %.3f; round against round from %.3f to %.3f (spread ±%.1f%% at %d, ±%.1f%% at %d): %s",
		ratio, low, high, 100*spread(a.rounds.service), a.scale, 100*spread(b.rounds.service), b.scale, verdict)
	if da, db := median(a.rounds.direct), median(b.rounds.direct); da > 0 && db > 0 {
		s += fmt.Sprintf("; the direct-to-pod reference moved by %.3f meanwhile (ratio of the ratios %.3f)", db/da, ratio/(db/da))
	}
	return s + "; "
}
