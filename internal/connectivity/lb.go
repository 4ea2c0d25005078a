package connectivity

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/internal/netcheck"
)

// Which addresses of Config.LoadBalancerRange the test uses (counted from the range's first
// address, which a network may reserve).
const (
	loadBalancerAddrIndex = 1
	externalIPAddrIndex   = 2
)

// rangeAddr is the index-th address after the first of p, if p holds it.
func rangeAddr(p netip.Prefix, index int) (netip.Addr, bool) {
	if !p.IsValid() {
		return netip.Addr{}, false
	}
	a := p.Masked().Addr()
	for range index {
		a = a.Next()
	}
	return a, a.IsValid() && p.Contains(a)
}

// loadBalancerScenarios put a LoadBalancer Service in front of the last server and reach it at
// its load balancer address, from the client pod and from the first node's network. The
// address is the one the cluster's load balancer controller assigns, or with
// Config.LoadBalancerRange one the test writes into the Service's status itself. The source is
// not checked: external traffic (policy Cluster) is masqueraded.
func (r *run) loadBalancerScenarios(ctx context.Context) {
	server := r.servers[len(r.servers)-1]
	fromPod := "LoadBalancer IP: pod to it (tcp)"
	fromNode := fmt.Sprintf("LoadBalancer IP: node to it, from %s (tcp)", r.hosts[0].Spec.NodeName)
	names := []string{fromPod, fromNode}
	start := time.Now()
	svc, err := r.createServiceWith(ctx, "lb-"+server.Name,
		corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: serverSelector(server)})
	if err != nil {
		r.failAll(names, start, err)
		return
	}
	ip, err := r.loadBalancerAddress(ctx, svc)
	var skip skipError
	if errors.As(err, &skip) {
		r.skipAll(names, skip.reason)
		return
	}
	if err != nil {
		r.failAll(names, start, err)
		return
	}
	addr := hostPortOf(ip, servicePort)
	r.expectServedBy(ctx, fromPod, r.client, netcheck.TCP, addr, server.Name)
	r.expectServedBy(ctx, fromNode, r.hosts[0], netcheck.TCP, addr, server.Name)
}

// skipError says a scenario cannot run on this cluster, and why.
type skipError struct{ reason string }

func (e skipError) Error() string { return e.reason }

// loadBalancerAddress gives svc its load balancer address from Config.LoadBalancerRange, as
// a load balancer controller would, or without a range waits (run.serviceWait) for the
// cluster's controller to assign one (a skipError when none comes).
func (r *run) loadBalancerAddress(ctx context.Context, svc *corev1.Service) (string, error) {
	services := r.cfg.Kube.CoreV1().Services(svc.Namespace)
	if r.cfg.LoadBalancerRange.IsValid() {
		a, ok := rangeAddr(r.cfg.LoadBalancerRange, loadBalancerAddrIndex)
		if !ok {
			return "", fmt.Errorf("load balancer range %s is too small", r.cfg.LoadBalancerRange)
		}
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: a.String()}}
		if _, err := services.UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
			return "", fmt.Errorf("writing the load balancer address %s of Service %s: %w", a, svc.Name, err)
		}
		return a.String(), nil
	}
	deadline := time.Now().Add(r.serviceWait)
	for {
		got, err := services.Get(ctx, svc.Name, metav1.GetOptions{})
		if err == nil {
			for _, ing := range got.Status.LoadBalancer.Ingress {
				if ing.IP != "" {
					return ing.IP, nil
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", skipError{fmt.Sprintf("no load balancer controller gave Service %s an address in %s (and no load balancer range was given)", svc.Name, r.serviceWait)}
		}
		select {
		case <-ctx.Done():
		case <-time.After(r.retryEvery):
		}
	}
}

// externalIPScenarios put the last server behind a Service with an external IP (from
// Config.LoadBalancerRange) and reach it there from the client pod and from the first node's
// network. Skipped without a range (the test knows no address that is free and routed to the
// nodes) and when the API refuses external IPs (the DenyServiceExternalIPs admission plugin).
func (r *run) externalIPScenarios(ctx context.Context) {
	server := r.servers[len(r.servers)-1]
	fromPod := "externalIPs: pod to it (tcp)"
	fromNode := fmt.Sprintf("externalIPs: node to it, from %s (tcp)", r.hosts[0].Spec.NodeName)
	names := []string{fromPod, fromNode}
	ip, ok := rangeAddr(r.cfg.LoadBalancerRange, externalIPAddrIndex)
	if !ok {
		r.skipAll(names, "no load balancer range given: no address known to be free and routed to the nodes")
		return
	}
	start := time.Now()
	_, err := r.createServiceWith(ctx, "external-"+server.Name,
		corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Selector: serverSelector(server), ExternalIPs: []string{ip.String()}})
	if apierrors.IsForbidden(err) {
		r.skipAll(names, "the API refuses externalIPs: "+err.Error())
		return
	}
	if err != nil {
		r.failAll(names, start, err)
		return
	}
	addr := hostPortOf(ip.String(), servicePort)
	r.expectServedBy(ctx, fromPod, r.client, netcheck.TCP, addr, server.Name)
	r.expectServedBy(ctx, fromNode, r.hosts[0], netcheck.TCP, addr, server.Name)
}
