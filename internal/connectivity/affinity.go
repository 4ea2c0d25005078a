package connectivity

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/twill-net/twill/internal/netcheck"
)

const (
	scenarioAffinity = "sessionAffinity ClientIP: one client's connections stay on one backend"
	scenarioSpread   = "no session affinity: one client's connections spread over backends"
)

// affinityScenarios put every server behind a Service with sessionAffinity ClientIP and make
// spreadProbes connections from the client: all must reach the backend the first one did. A
// control Service without affinity over the same servers must spread the same number of
// connections over more than one backend (which also shows that the first check was not
// passed by a proxy that always picks the same one). They need two backends: one per node.
func (r *run) affinityScenarios(ctx context.Context) {
	if len(r.servers) < 2 {
		r.skipAll([]string{scenarioAffinity, scenarioSpread}, "a single schedulable node (one server pod)")
		return
	}
	r.expectBackendChoice(ctx, scenarioAffinity, "affinity", corev1.ServiceAffinityClientIP, func(first string, results []probeResult) (bool, string) {
		return onlyFrom(results, first, "")
	})
	r.expectBackendChoice(ctx, scenarioSpread, "spread", corev1.ServiceAffinityNone, func(_ string, results []probeResult) (bool, string) {
		return spreadOver(results)
	})
}

// expectBackendChoice makes a Service (name, affinity) over every server, waits until its
// endpoints are all ready and it answers, then judges spreadProbes more connections from the
// client, given who answered the first.
func (r *run) expectBackendChoice(ctx context.Context, scenario, name string, affinity corev1.ServiceAffinity, judge func(first string, results []probeResult) (bool, string)) {
	start := time.Now()
	fail := func(err error) { r.failAll([]string{scenario}, start, err) }
	svc, err := r.createServiceWith(ctx, name, corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP,
		Selector: serversSelector(), SessionAffinity: affinity})
	if err != nil {
		fail(err)
		return
	}
	if err := r.waitReadyEndpoints(ctx, svc, len(r.servers)); err != nil {
		fail(err)
		return
	}
	addr := hostPortOf(svc.Spec.ClusterIP, servicePort)
	// The first connection alone: with affinity it records the client's backend, which
	// connections racing it could miss.
	first := r.probeUntil(ctx, func() probeResult { return r.probe(ctx, r.client, netcheck.TCP, addr) },
		func(res probeResult) bool { return res.code == 0 })
	if first.code != 0 {
		fail(fmt.Errorf("tcp from %s to Service %s (%s): %s", r.client.Name, svc.Name, addr, first.describe()))
		return
	}
	results := r.probeMany(ctx, r.client, netcheck.TCP, addr, spreadProbes)
	ok, detail := judge(first.reply.Pod, results)
	r.add(Result{Scenario: scenario, OK: ok, Took: time.Since(start),
		Detail: fmt.Sprintf("%s -> Service %s (%s), first to %s, then %s", r.client.Name, svc.Name, addr, first.reply.Pod, detail)})
}
