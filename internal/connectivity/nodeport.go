package connectivity

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/twill-net/twill/internal/netcheck"
)

// createNodePort makes a NodePort Service in front of server's TCP and UDP ports; the cluster
// picks the node ports.
func (r *run) createNodePort(ctx context.Context, server *corev1.Pod) (*corev1.Service, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "nodeport-" + server.Name, Namespace: r.cfg.Namespace},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: map[string]string{serverLabel: server.Name},
			Ports: []corev1.ServicePort{
				{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: servicePort, TargetPort: intstr.FromInt32(podPort)},
				{Name: "udp", Protocol: corev1.ProtocolUDP, Port: servicePort + 1, TargetPort: intstr.FromInt32(podPort + 1)},
			},
		},
	}
	created, err := r.cfg.Kube.CoreV1().Services(r.cfg.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Service %s: %w", svc.Name, err)
	}
	return created, nil
}

// nodePortScenarios put a NodePort Service in front of the last server (on another node than
// the client's when there are several) and reach it at its node's address: from a pod on the
// first node, and from that node's own network (a hostNetwork pod). The server's address is
// not checked: traffic arriving at a node port is masqueraded (externalTrafficPolicy Cluster).
func (r *run) nodePortScenarios(ctx context.Context) {
	i := len(r.servers) - 1
	server, node := r.servers[i], r.servers[i].Spec.NodeName
	nodeIP := r.hosts[i].Status.HostIP
	start := time.Now()
	svc, err := r.createNodePort(ctx, server)
	if err != nil {
		r.add(Result{Scenario: fmt.Sprintf("pod to NodePort of %s", node), Detail: err.Error(), Took: time.Since(start)})
		return
	}
	for _, port := range svc.Spec.Ports {
		proto := netcheck.TCP
		if port.Protocol == corev1.ProtocolUDP {
			proto = netcheck.UDP
		}
		if port.NodePort == 0 {
			r.add(Result{Scenario: fmt.Sprintf("pod to NodePort of %s (%s)", node, proto),
				Detail: fmt.Sprintf("Service %s got no node port for %s", svc.Name, port.Name)})
			continue
		}
		addr := hostPortOf(nodeIP, int(port.NodePort))
		r.expectServedBy(ctx, fmt.Sprintf("pod to NodePort of %s (%s)", node, proto), r.client, proto, addr, server.Name)
		if i == 0 {
			r.add(Result{Scenario: fmt.Sprintf("node to NodePort of another node (%s)", proto), Skipped: true, Detail: "a single schedulable node"})
			continue
		}
		r.expectServedBy(ctx, fmt.Sprintf("node to NodePort of %s, from %s (%s)", node, r.hosts[0].Spec.NodeName, proto),
			r.hosts[0], proto, addr, server.Name)
	}
}

// expectServedBy probes addr from pod until wantPod answers or run.serviceWait passes (a new
// Service, or a new DNS record, takes a moment to work), and passes when wantPod answered.
func (r *run) expectServedBy(ctx context.Context, scenario string, from *corev1.Pod, proto, addr, wantPod string) {
	start := time.Now()
	res := r.probeUntil(ctx, func() probeResult { return r.probe(ctx, from, proto, addr) },
		func(res probeResult) bool { return res.code == 0 && res.reply.Pod == wantPod })
	out := Result{Scenario: scenario, Took: time.Since(start)}
	switch {
	case res.code != 0:
		out.Detail = fmt.Sprintf("%s from %s to %s: %s", proto, from.Name, addr, res.describe())
	case res.reply.Pod != wantPod:
		out.Detail = fmt.Sprintf("%s answered by %s, want %s", addr, res.reply.Pod, wantPod)
	default:
		out.OK, out.Detail = true, fmt.Sprintf("%s -> %s -> %s", from.Name, addr, res.reply.Pod)
	}
	r.add(out)
}

// probeUntil repeats probe every run.retryEvery until done says so or run.serviceWait passes,
// and returns the last result.
func (r *run) probeUntil(ctx context.Context, probe func() probeResult, done func(probeResult) bool) probeResult {
	deadline := time.Now().Add(r.serviceWait)
	for {
		res := probe()
		if done(res) || time.Now().After(deadline) || ctx.Err() != nil {
			return res
		}
		select {
		case <-ctx.Done():
			return res
		case <-time.After(r.retryEvery):
		}
	}
}
