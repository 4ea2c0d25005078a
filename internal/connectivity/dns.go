package connectivity

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/internal/netcheck"
)

// The cluster DNS as kubeadm (and the lab) names it; its absence means the cluster has none.
const (
	dnsNamespace = "kube-system"
	dnsService   = "kube-dns"
	// apiServiceName is the API's own Service, which every cluster has.
	apiServiceName = "kubernetes.default.svc.cluster.local"
)

// DNS scenario names (also the names of their skipped results).
const (
	scenarioDNSAPI       = "DNS: kubernetes.default.svc.cluster.local"
	scenarioDNSService   = "DNS: the test's Service by short name"
	scenarioDNSConnectTo = "DNS: pod to Service by name (tcp)"
)

// dnsScenarios resolve, from the client pod, the API's Service by its full name and the test's
// own Service (in front of the last server) by its short name (so through the pod's search
// list), then connect to that Service by name. Without a kube-dns Service they are skipped:
// a cluster may run without DNS, and then these checks say nothing about the pod network.
func (r *run) dnsScenarios(ctx context.Context) {
	names := []string{scenarioDNSAPI, scenarioDNSService, scenarioDNSConnectTo}
	_, err := r.cfg.Kube.CoreV1().Services(dnsNamespace).Get(ctx, dnsService, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		for _, n := range names {
			r.add(Result{Scenario: n, Skipped: true, Detail: "the cluster has no DNS: no Service kube-dns in kube-system"})
		}
		return
	}
	if err != nil {
		for _, n := range names {
			r.add(Result{Scenario: n, Detail: "reading Service kube-system/kube-dns: " + err.Error()})
		}
		return
	}
	api, err := r.cfg.Kube.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		r.add(Result{Scenario: scenarioDNSAPI, Detail: "reading Service default/kubernetes: " + err.Error()})
	} else {
		r.expectResolves(ctx, scenarioDNSAPI, apiServiceName, api.Spec.ClusterIP)
	}
	server := r.servers[len(r.servers)-1]
	svc := r.services[server.Name]
	if svc == nil {
		for _, n := range names[1:] {
			r.add(Result{Scenario: n, Detail: fmt.Sprintf("no Service in front of %s (its ClusterIP scenario failed)", server.Name)})
		}
		return
	}
	r.expectResolves(ctx, scenarioDNSService, svc.Name, svc.Spec.ClusterIP)
	r.expectServedBy(ctx, scenarioDNSConnectTo, r.client, netcheck.TCP, hostPortOf(svc.Name, servicePort), server.Name)
}

// expectResolves resolves name in the client pod until it gives wantIP or run.serviceWait
// passes (a new Service's record appears a moment after the Service).
func (r *run) expectResolves(ctx context.Context, scenario, name, wantIP string) {
	start := time.Now()
	var addrs []string
	res := r.probeUntil(ctx, func() probeResult {
		var res probeResult
		addrs, res = r.resolve(ctx, r.client, name)
		return res
	}, func(res probeResult) bool { return res.code == 0 && slices.Contains(addrs, wantIP) })
	out := Result{Scenario: scenario, Took: time.Since(start)}
	switch {
	case res.code != 0:
		out.Detail = fmt.Sprintf("resolving %s in %s: %s", name, r.client.Name, res.describe())
	case !slices.Contains(addrs, wantIP):
		out.Detail = fmt.Sprintf("%s resolved to %v, want %s", name, addrs, wantIP)
	default:
		out.OK, out.Detail = true, fmt.Sprintf("%s -> %s", name, strings.Join(addrs, ", "))
	}
	r.add(out)
}

// resolve runs `twill netcheck resolve` in pod and returns the addresses it printed.
func (r *run) resolve(ctx context.Context, pod *corev1.Pod, name string) ([]string, probeResult) {
	argv := []string{"/twill", "netcheck", "resolve", name, "--timeout", r.cfg.Timeout.String()}
	stdout, stderr, code, err := r.exec(ctx, pod, argv)
	res := probeResult{code: code, stderr: stderr, err: err}
	if code != 0 {
		return nil, res
	}
	return strings.Fields(stdout), res
}
