package connectivity

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/twill-net/twill/internal/netcheck"
)

// trafficPolicyScenarios check the Local traffic policies, which need servers on two nodes:
//
//   - externalTrafficPolicy Local, over every server: the first node's network reaches the
//     last node's node port, and every connection lands on that node's server, which sees the
//     first node's own address (the source is kept);
//   - externalTrafficPolicy Local, over the last node's server only: the last node's network
//     does not get through the first node's node port (no endpoint there; nothing may forward
//     to another node's);
//   - internalTrafficPolicy Local, over every server: the client pod reaches the cluster IP,
//     and only its own node's server answers.
func (r *run) trafficPolicyScenarios(ctx context.Context) {
	last := len(r.servers) - 1
	lastNode := r.servers[last].Spec.NodeName
	firstNode := r.servers[0].Spec.NodeName
	etpKept := fmt.Sprintf("externalTrafficPolicy Local: node to NodePort of %s, source kept, local endpoint only", lastNode)
	etpNone := fmt.Sprintf("externalTrafficPolicy Local: NodePort of %s without endpoint not forwarded", firstNode)
	itp := "internalTrafficPolicy Local: pod to ClusterIP reaches its node's endpoint only"
	if last == 0 {
		r.skipAll([]string{etpKept, etpNone, itp}, "a single schedulable node")
		return
	}
	local := corev1.ServiceExternalTrafficPolicyLocal
	r.expectLocalNodePort(ctx, etpKept, corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort,
		Selector: serversSelector(), ExternalTrafficPolicy: local})
	r.expectNodePortWithoutEndpoint(ctx, etpNone, corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort,
		Selector: serverSelector(r.servers[last]), ExternalTrafficPolicy: local})
	internalLocal := corev1.ServiceInternalTrafficPolicyLocal
	r.expectInternalLocal(ctx, itp, corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP,
		Selector: serversSelector(), InternalTrafficPolicy: &internalLocal})
}

// expectLocalNodePort reaches the last node's node port of a Service over every server from
// the first node's network: only the last node's server may answer, seeing the first node's
// address.
func (r *run) expectLocalNodePort(ctx context.Context, scenario string, spec corev1.ServiceSpec) {
	start := time.Now()
	last := len(r.servers) - 1
	svc, err := r.createServiceWith(ctx, "etp-local", spec)
	if err == nil {
		err = r.waitReadyEndpoints(ctx, svc, len(r.servers))
	}
	if err != nil {
		r.failAll([]string{scenario}, start, err)
		return
	}
	from := r.hosts[0]
	addr := hostPortOf(r.hosts[last].Status.HostIP, int(svc.Spec.Ports[0].NodePort))
	r.expectOnlyServedBy(ctx, scenario, start, from, addr, r.servers[last].Name, from.Status.HostIP)
}

// expectNodePortWithoutEndpoint reaches the first node's node port of a Service whose only
// server is on the last node, from the last node's network: nothing may answer. That the first
// node serves the Service at all is shown first: the client pod reaches its cluster IP.
func (r *run) expectNodePortWithoutEndpoint(ctx context.Context, scenario string, spec corev1.ServiceSpec) {
	start := time.Now()
	last := len(r.servers) - 1
	svc, err := r.createServiceWith(ctx, "etp-local-one", spec)
	if err != nil {
		r.failAll([]string{scenario}, start, err)
		return
	}
	clusterAddr := hostPortOf(svc.Spec.ClusterIP, servicePort)
	ready := r.probeUntil(ctx, func() probeResult { return r.probe(ctx, r.client, netcheck.TCP, clusterAddr) },
		func(res probeResult) bool { return res.code == 0 })
	if ready.code != 0 {
		r.failAll([]string{scenario}, start, fmt.Errorf("the Service does not work at all: tcp from %s to its cluster IP %s: %s",
			r.client.Name, clusterAddr, ready.describe()))
		return
	}
	from := r.hosts[last]
	addr := hostPortOf(r.hosts[0].Status.HostIP, int(svc.Spec.Ports[0].NodePort))
	res := r.probeFor(ctx, from, netcheck.TCP, addr, refusalTimeout)
	out := Result{Scenario: scenario, Took: time.Since(start), OK: unanswered(res),
		Detail: fmt.Sprintf("tcp from %s to %s: %s", from.Name, addr, describeAnswer(res))}
	if res.code == 0 {
		out.Detail += ", want no answer (forwarded to another node's endpoint)"
	}
	r.add(out)
}

// expectInternalLocal reaches the cluster IP of a Service over every server from the client
// pod: only the server on the client's node may answer, seeing the client's own address.
func (r *run) expectInternalLocal(ctx context.Context, scenario string, spec corev1.ServiceSpec) {
	start := time.Now()
	svc, err := r.createServiceWith(ctx, "itp-local", spec)
	if err == nil {
		err = r.waitReadyEndpoints(ctx, svc, len(r.servers))
	}
	if err != nil {
		r.failAll([]string{scenario}, start, err)
		return
	}
	addr := hostPortOf(svc.Spec.ClusterIP, servicePort)
	r.expectOnlyServedBy(ctx, scenario, start, r.client, addr, r.servers[0].Name, r.client.Status.PodIP)
}

// unanswered says the network gave no answer: timed out, refused or unreachable (not a failure
// of the probe itself).
func unanswered(res probeResult) bool {
	return res.code == exitTimeout || res.code == exitRefused || res.code == exitUnreachable
}
