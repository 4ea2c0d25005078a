package connectivity

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/twill-net/twill/internal/netcheck"
)

// roleLabel marks the server pods (value roleServer), so that a Service can have all of them,
// one per node, as its backends.
const (
	roleLabel  = "twill-connectivity/role"
	roleServer = "server"
)

// spreadProbes is how many connections a scenario about the choice of backend makes. The
// control without affinity fails by chance when all of them land on one backend: with two
// backends picked at random that is 2 × 2^-24 ≈ 1.2e-7 (fewer with more backends), under the
// 1e-6 a CI run can afford.
const spreadProbes = 24

// refusalTimeout bounds a probe that should not be answered: a rejection comes at once, so
// waiting longer only makes the catalogue slower.
const refusalTimeout = time.Second

// serversSelector selects every server pod.
func serversSelector() map[string]string { return map[string]string{roleLabel: roleServer} }

// serverSelector selects one server pod.
func serverSelector(server *corev1.Pod) map[string]string {
	return map[string]string{serverLabel: server.Name}
}

// createServiceWith makes the Service name from spec, by default with one TCP port
// (servicePort, to the pods' TCP port).
func (r *run) createServiceWith(ctx context.Context, name string, spec corev1.ServiceSpec) (*corev1.Service, error) {
	if spec.Ports == nil {
		spec.Ports = []corev1.ServicePort{{Name: "tcp", Protocol: corev1.ProtocolTCP,
			Port: servicePort, TargetPort: intstr.FromInt32(podPort)}}
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.cfg.Namespace}, Spec: spec}
	created, err := r.cfg.Kube.CoreV1().Services(r.cfg.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Service %s: %w", name, err)
	}
	return created, nil
}

// waitReadyEndpoints waits (up to run.serviceWait) until the Service's EndpointSlices list n
// ready endpoints, so that a scenario about the choice among backends does not start while
// the proxy knows only some of them.
func (r *run) waitReadyEndpoints(ctx context.Context, svc *corev1.Service, n int) error {
	selector := metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc.Name}
	deadline := time.Now().Add(r.serviceWait)
	ready := 0
	for {
		list, err := r.cfg.Kube.DiscoveryV1().EndpointSlices(svc.Namespace).List(ctx, selector)
		if err == nil {
			ready = readyEndpoints(list.Items)
			if ready >= n {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err != nil {
				return fmt.Errorf("reading the EndpointSlices of %s: %w", svc.Name, err)
			}
			return fmt.Errorf("Service %s has %d ready endpoints after %s, want %d", svc.Name, ready, r.serviceWait, n)
		}
		select {
		case <-ctx.Done():
		case <-time.After(r.retryEvery):
		}
	}
}

func readyEndpoints(list []discoveryv1.EndpointSlice) int {
	n := 0
	for _, s := range list {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				n += len(e.Addresses)
			}
		}
	}
	return n
}

// probeMany makes n connections to addr from pod in one run of the prober (--count): one exec
// into the pod however many connections there are. The first failure ends the series and is
// its last result.
func (r *run) probeMany(ctx context.Context, from *corev1.Pod, proto, addr string, n int) []probeResult {
	argv := append(connectArgv(proto, addr, r.cfg.Timeout), "--count", strconv.Itoa(n))
	stdout, stderr, code, err := r.exec(ctx, from, argv)
	var out []probeResult
	for _, line := range strings.Split(stdout, "\n") {
		if line = trimLine(line); line == "" {
			continue
		}
		reply, err := netcheck.ParseReply(line)
		if err != nil {
			out = append(out, probeResult{code: -1, err: err})
			continue
		}
		out = append(out, probeResult{reply: reply})
	}
	switch {
	case code != 0:
		out = append(out, probeResult{code: code, stderr: stderr, err: err})
	case len(out) < n:
		out = append(out, probeResult{code: -1, err: fmt.Errorf("%d replies to %d connections", len(out), n)})
	}
	return out
}

// spread is how a series of probes was answered.
type spread struct {
	byPod map[string]int
	// clients are the client addresses the servers saw.
	clients map[string]int
	// failed are the probes nobody answered.
	failed []probeResult
}

func tally(results []probeResult) spread {
	s := spread{byPod: map[string]int{}, clients: map[string]int{}}
	for _, res := range results {
		if res.code != 0 {
			s.failed = append(s.failed, res)
			continue
		}
		s.byPod[res.reply.Pod]++
		s.clients[res.clientIP()]++
	}
	return s
}

// pods are the pods that answered, sorted.
func (s spread) pods() []string { return slices.Sorted(maps.Keys(s.byPod)) }

// String reads as "server-0 ×12, server-1 ×12", then the failures.
func (s spread) String() string {
	var parts []string
	for _, p := range s.pods() {
		parts = append(parts, fmt.Sprintf("%s ×%d", p, s.byPod[p]))
	}
	if len(s.failed) > 0 {
		parts = append(parts, fmt.Sprintf("%d failed (first: %s)", len(s.failed), s.failed[0].describe()))
	}
	return strings.Join(parts, ", ")
}

// onlyFrom judges probes that must all be answered by wantPod and, when wantClientIP is set,
// must all have been seen coming from that address.
func onlyFrom(results []probeResult, wantPod, wantClientIP string) (ok bool, detail string) {
	s := tally(results)
	switch {
	case len(s.failed) > 0:
		return false, fmt.Sprintf("%d connections: %s", len(results), s)
	case len(s.byPod) != 1 || s.byPod[wantPod] == 0:
		return false, fmt.Sprintf("%d connections: %s, want all on %s", len(results), s, wantPod)
	case wantClientIP != "" && (len(s.clients) != 1 || s.clients[wantClientIP] == 0):
		return false, fmt.Sprintf("servers saw clients %v, want %s (source rewritten)", slices.Sorted(maps.Keys(s.clients)), wantClientIP)
	}
	detail = fmt.Sprintf("%d connections: %s", len(results), s)
	if wantClientIP != "" {
		detail += ", client seen as " + wantClientIP
	}
	return true, detail
}

// spreadOver judges probes that must all be answered, by more than one pod.
func spreadOver(results []probeResult) (ok bool, detail string) {
	s := tally(results)
	detail = fmt.Sprintf("%d connections: %s", len(results), s)
	if len(s.failed) > 0 || len(s.byPod) < 2 {
		return false, detail + ", want answers from several backends"
	}
	return true, detail
}

// expectOnlyServedBy probes addr from pod until wantPod answers (the Service is in place),
// then spreadProbes more times: it passes when wantPod answered every one and, when
// wantClientIP is set, saw that client address.
func (r *run) expectOnlyServedBy(ctx context.Context, scenario string, start time.Time, from *corev1.Pod, addr, wantPod, wantClientIP string) {
	first := r.probeUntil(ctx, func() probeResult { return r.probe(ctx, from, netcheck.TCP, addr) },
		func(res probeResult) bool { return res.code == 0 && res.reply.Pod == wantPod })
	out := Result{Scenario: scenario}
	if first.code != 0 || first.reply.Pod != wantPod {
		out.Took = time.Since(start)
		out.Detail = fmt.Sprintf("tcp from %s to %s: %s, want an answer from %s", from.Name, addr, describeAnswer(first), wantPod)
		r.add(out)
		return
	}
	results := r.probeMany(ctx, from, netcheck.TCP, addr, spreadProbes)
	out.Took = time.Since(start)
	ok, detail := onlyFrom(results, wantPod, wantClientIP)
	out.OK, out.Detail = ok, fmt.Sprintf("%s -> %s: %s", from.Name, addr, detail)
	r.add(out)
}

// describeAnswer says what a probe met: the pod that answered, or why none did.
func describeAnswer(res probeResult) string {
	if res.code == 0 {
		return "answered by " + res.reply.Pod
	}
	return res.describe()
}

// failAll reports each scenario as failed for the same reason.
func (r *run) failAll(names []string, start time.Time, err error) {
	for _, n := range names {
		r.add(Result{Scenario: n, Detail: err.Error(), Took: time.Since(start)})
	}
}

// skipAll reports each scenario as skipped for the same reason.
func (r *run) skipAll(names []string, reason string) {
	for _, n := range names {
		r.add(Result{Scenario: n, Skipped: true, Detail: reason})
	}
}
