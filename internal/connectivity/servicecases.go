package connectivity

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/internal/netcheck"
)

const (
	scenarioHairpin     = "hairpin: pod to itself through its Service's ClusterIP (tcp)"
	scenarioNoEndpoints = "Service without endpoints: connection refused at once (tcp)"
	scenarioHeadlessDNS = "headless Service: name resolves to the pod's address"
	scenarioHeadlessTo  = "headless Service: pod to it by name (tcp)"
)

// hairpinScenario has the first server reach its own ClusterIP Service (made by the ClusterIP
// scenario): the proxy sends the connection back to the pod it came from, which must answer
// itself. The source it sees is not checked (proxies masquerade hairpin connections).
func (r *run) hairpinScenario(ctx context.Context) {
	server := r.servers[0]
	svc := r.services[server.Name]
	if svc == nil {
		r.add(Result{Scenario: scenarioHairpin, Detail: fmt.Sprintf("no Service in front of %s (its ClusterIP scenario failed)", server.Name)})
		return
	}
	r.expectServedBy(ctx, scenarioHairpin, server, netcheck.TCP, hostPortOf(svc.Spec.ClusterIP, servicePort), server.Name)
}

// noEndpointsScenario makes a Service whose selector matches no pod and connects to it from
// the client: the connection must be refused (TCP reset), not left to time out. Until the
// proxy serves the new Service its address leads nowhere (it may time out or be unreachable),
// so the probe is repeated, with a short timeout, until refused or run.serviceWait passes.
func (r *run) noEndpointsScenario(ctx context.Context) {
	start := time.Now()
	svc, err := r.createServiceWith(ctx, "no-endpoints", corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP,
		Selector: map[string]string{serverLabel: "no-such-pod"}})
	if err != nil {
		r.failAll([]string{scenarioNoEndpoints}, start, err)
		return
	}
	addr := hostPortOf(svc.Spec.ClusterIP, servicePort)
	var took time.Duration
	res := r.probeUntil(ctx, func() probeResult {
		probeStart := time.Now()
		res := r.probeFor(ctx, r.client, netcheck.TCP, addr, refusalTimeout)
		took = time.Since(probeStart)
		return res
	}, func(res probeResult) bool { return res.code == exitRefused })
	r.add(Result{Scenario: scenarioNoEndpoints, Took: time.Since(start), OK: res.code == exitRefused,
		Detail: fmt.Sprintf("tcp from %s to Service %s (%s): %s in %s (exec included)", r.client.Name, svc.Name, addr,
			describeAnswer(res), took.Round(time.Millisecond))})
}

// headlessScenarios make a headless Service (clusterIP None) over the last server, which no
// proxy touches: the cluster DNS answers its name with the pod's own address, and the client
// reaches the pod through that name. Skipped without cluster DNS.
func (r *run) headlessScenarios(ctx context.Context) {
	names := []string{scenarioHeadlessDNS, scenarioHeadlessTo}
	_, err := r.cfg.Kube.CoreV1().Services(dnsNamespace).Get(ctx, dnsService, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		r.skipAll(names, "the cluster has no DNS: no Service kube-dns in kube-system")
		return
	}
	start := time.Now()
	if err != nil {
		r.failAll(names, start, fmt.Errorf("reading Service kube-system/kube-dns: %w", err))
		return
	}
	server := r.servers[len(r.servers)-1]
	svc, err := r.createServiceWith(ctx, "headless", corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone,
		Selector: serverSelector(server)})
	if err != nil {
		r.failAll(names, start, err)
		return
	}
	r.expectResolves(ctx, scenarioHeadlessDNS, svc.Name, server.Status.PodIP)
	r.expectServedBy(ctx, scenarioHeadlessTo, r.client, netcheck.TCP, hostPortOf(svc.Name, podPort), server.Name)
}
