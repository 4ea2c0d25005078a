package bench

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
)

// The services suite's new-connection rate, measured in rounds: on a shared 2-core machine one
// run of a few seconds varies by ±20% from one minute to the next, which would hide the 5%
// the target allows between 1,000 and 50,000 services. Each round to the ClusterIP is
// followed by one to a server pod directly (no service address: the same client, server and
// machine at nearly the same moment), so a reader can tell a proxy's cost from the machine's
// drift: the direct rate moves with the machine only (but for kube-proxy's iptables mode,
// whose nat chains every new connection walks, service or not).

// DefaultServiceRounds is how many rounds of each connect-rate figure are made.
const DefaultServiceRounds = 5

// crrFigures are the rounds of one proxy at one scale.
type crrFigures struct {
	// service and direct are the rates (connections/s) of the rounds to the ClusterIP and to
	// the pod, in the order made.
	service, direct []float64
	// p50s and p99s are each service round's connect() percentiles (µs).
	p50s, p99s []float64
}

// measureConnectRounds alternates rounds to the service and to the pod.
func measureConnectRounds(ctx context.Context, env *proxyEnv, service netip.AddrPort, opts ServicesOptions) (crrFigures, error) {
	var f crrFigures
	for range opts.Rounds {
		rr, err := runRRClientResult(ctx, env.twillBin, env.client.Sandbox, service, true, opts.Duration)
		if err != nil {
			return f, fmt.Errorf("connect rate to %s: %w", service, err)
		}
		f.service = append(f.service, rr.Rate())
		f.p50s, f.p99s = append(f.p50s, rr.ConnectP50Micros), append(f.p99s, rr.ConnectP99Micros)
		direct, err := runRRClientResult(ctx, env.twillBin, env.client.Sandbox, env.direct, true, opts.Duration)
		if err != nil {
			return f, fmt.Errorf("connect rate to the pod %s: %w", env.direct, err)
		}
		f.direct = append(f.direct, direct.Rate())
	}
	return f, nil
}

// spread is the half-range of the values relative to their median (0.1: ±10%).
func spread(v []float64) float64 {
	m := median(v)
	if m == 0 {
		return 0
	}
	return (slices.Max(v) - slices.Min(v)) / 2 / m
}

// ratioRange is the lowest and highest ratio of a round of hi to a round of lo: how far the
// rounds alone let the ratio of the medians move.
func ratioRange(hi, lo []float64) (low, high float64) {
	if len(hi) == 0 || len(lo) == 0 || slices.Min(lo) == 0 {
		return 0, 0
	}
	return slices.Min(hi) / slices.Max(lo), slices.Max(hi) / slices.Min(lo)
}

// describeRounds says how a rate's rounds spread, for a figure's conditions.
func describeRounds(v []float64) string {
	if len(v) == 0 {
		return "no rounds"
	}
	return fmt.Sprintf("median of %d rounds (min %.0f, max %.0f: ±%.1f%%)", len(v), slices.Min(v), slices.Max(v), 100*spread(v))
}
