package conformance

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/twill-net/twill/internal/netcheck"
)

// Probes run in batches: one exec per source pod (`twill netcheck probe`), which probes all
// of that pod's targets at once inside the pod and prints a line per target. An exec through
// the API server and the kubelet costs far more than a probe, and a probe that is dropped
// costs a whole timeout: one at a time, a step of ~300 probes took about a minute.

// inPodParallel bounds the probes one batch runs at once inside a pod: a step has about 36
// per pod (9 pods, 4 ports), so one round, and a timeout costs one ProbeTimeout per batch.
const inPodParallel = 64

// ProbeSpec is one probe: from pod NS/Pod to Addr (ip:port) over Protocol (TCP or UDP).
type ProbeSpec struct {
	NS, Pod  string
	Protocol corev1.Protocol
	Addr     string
}

// Probe connects from pod ns/name to addr over protocol (TCP or UDP) through the pod's
// kubelet. Refused and unreachable count as blocked (a policy may reject rather than drop);
// Detail keeps which it was.
func (c *Cluster) Probe(ctx context.Context, ns, pod string, protocol corev1.Protocol, addr string) ProbeResult {
	return c.ProbeMany(ctx, []ProbeSpec{{NS: ns, Pod: pod, Protocol: protocol, Addr: addr}})[0]
}

// ProbeMany runs every probe and returns the results in the probes' order, with the verdicts
// Probe gives: the probes are grouped by source pod, one exec each, at most c.Parallel execs
// at once.
func (c *Cluster) ProbeMany(ctx context.Context, probes []ProbeSpec) []ProbeResult {
	type group struct {
		ns, pod string
		index   []int // into probes
		targets []netcheck.Target
	}
	var groups []*group
	byPod := map[[2]string]*group{}
	for i, p := range probes {
		key := [2]string{p.NS, p.Pod}
		g := byPod[key]
		if g == nil {
			g = &group{ns: p.NS, pod: p.Pod}
			byPod[key] = g
			groups = append(groups, g)
		}
		g.index = append(g.index, i)
		g.targets = append(g.targets, netcheck.Target{Protocol: strings.ToLower(string(p.Protocol)), Addr: p.Addr})
	}
	results := make([]ProbeResult, len(probes))
	for i := range results {
		// Left so only when the context ends before the pod's turn.
		results[i] = ProbeResult{Failed, "not probed: the run was cancelled"}
	}
	forEach(ctx, c.Parallel, groups, func(ctx context.Context, g *group) {
		for k, r := range c.probeFrom(ctx, g.ns, g.pod, g.targets) {
			results[g.index[k]] = r
		}
	})
	return results
}

// probeFrom probes every target from pod ns/pod with one exec of `twill netcheck probe` and
// returns a result per target, in order.
func (c *Cluster) probeFrom(ctx context.Context, ns, pod string, targets []netcheck.Target) []ProbeResult {
	rounds := (len(targets) + inPodParallel - 1) / inPodParallel
	ctx, cancel := context.WithTimeout(ctx, time.Duration(rounds)*c.ProbeTimeout+30*time.Second)
	defer cancel()
	argv := []string{"/twill", "netcheck", "probe", "--timeout", c.ProbeTimeout.String(),
		"--parallel", strconv.Itoa(inPodParallel)}
	for _, t := range targets {
		argv = append(argv, t.String())
	}
	stdout, stderr, code, err := c.execInPod(ctx, ns, pod, argv)
	return batchResults(targets, stdout, stderr, code, err)
}

// batchResults maps a batch's output back to its targets: line i is target i's. Whatever
// cannot be read (the exec failed, a line is missing or names another target) fails the
// probes it concerns, never passes them.
func batchResults(targets []netcheck.Target, stdout, stderr string, code int, err error) []ProbeResult {
	out := make([]ProbeResult, len(targets))
	fail := func(detail string) []ProbeResult {
		for i := range out {
			out[i] = ProbeResult{Failed, detail}
		}
		return out
	}
	switch {
	case code == -1:
		return fail(err.Error())
	case code != 0:
		return fail(fmt.Sprintf("exit code %d: %s", code, strings.TrimSpace(stderr)))
	}
	lines, err := netcheck.ReadResults(strings.NewReader(stdout))
	for i, t := range targets {
		switch {
		case i < len(lines) && lines[i].Target != t:
			out[i] = ProbeResult{Failed, fmt.Sprintf("result line %d is for %s, not %s", i+1, lines[i].Target, t)}
		case i < len(lines):
			out[i] = verdictOf(lines[i])
		case err != nil:
			out[i] = ProbeResult{Failed, fmt.Sprintf("reading the results: %v", err)}
		default:
			out[i] = ProbeResult{Failed, fmt.Sprintf("no result line for %s: %s", t, strings.TrimSpace(stderr))}
		}
	}
	return out
}

// verdictOf is what a target's outcome means for policy: the server answered (allowed), or
// something stopped the packets, by dropping them (timeout) or by rejecting them (refused,
// unreachable): blocked. Anything else is a probe that failed to tell.
func verdictOf(r netcheck.Result) ProbeResult {
	switch r.Outcome {
	case netcheck.Connected:
		return ProbeResult{Allowed, "answered"}
	case netcheck.TimedOut:
		return ProbeResult{Blocked, "timed out"}
	case netcheck.Refused:
		return ProbeResult{Blocked, "refused"}
	case netcheck.Unreachable:
		return ProbeResult{Blocked, "unreachable"}
	}
	return ProbeResult{Failed, r.Detail}
}
