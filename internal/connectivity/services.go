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

// servicePort is the port of each server's ClusterIP Service, unlike the pods' own so that a
// probe that passes went through the Service's translation.
const servicePort = 80

// serverLabel names the server pod a Service is in front of (one Service per server, so that
// the same-node and across-node paths are each checked).
const serverLabel = "twill-connectivity/server"

// defaultServiceWait bounds how long a new Service may take to work: kube-proxy (or whatever
// implements Services) programs it a moment after its endpoints appear.
const defaultServiceWait = 20 * time.Second

// createService makes a ClusterIP Service in front of server's TCP port.
func (r *run) createService(ctx context.Context, server *corev1.Pod) (*corev1.Service, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: server.Name, Namespace: r.cfg.Namespace},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: map[string]string{serverLabel: server.Name},
			Ports: []corev1.ServicePort{{Name: "tcp", Protocol: corev1.ProtocolTCP,
				Port: servicePort, TargetPort: intstr.FromInt32(podPort)}},
		},
	}
	created, err := r.cfg.Kube.CoreV1().Services(r.cfg.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Service %s: %w", svc.Name, err)
	}
	return created, nil
}

// expectClusterIP probes server's Service from the client by TCP: it passes when server answers
// and saw the client's own address (no masquerading from pod to Service). A new Service gets
// run.serviceWait (defaultServiceWait) to start working.
func (r *run) expectClusterIP(ctx context.Context, scenario string, server *corev1.Pod) {
	start := time.Now()
	out := Result{Scenario: scenario}
	svc, err := r.createService(ctx, server)
	if err == nil && svc.Spec.ClusterIP == "" {
		err = fmt.Errorf("Service %s got no ClusterIP", svc.Name)
	}
	if err != nil {
		out.Detail, out.Took = err.Error(), time.Since(start)
		r.add(out)
		return
	}
	r.services[server.Name] = svc
	addr := hostPortOf(svc.Spec.ClusterIP, servicePort)
	deadline := time.Now().Add(r.serviceWait)
	var res probeResult
	for {
		res = r.probe(ctx, r.client, netcheck.TCP, addr)
		if (res.code == 0 && res.reply.Pod == server.Name) || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(r.retryEvery)
	}
	out.Took = time.Since(start)
	switch {
	case res.code != 0:
		out.Detail = fmt.Sprintf("tcp from %s to Service %s (%s): %s", r.client.Name, svc.Name, addr, res.describe())
	case res.reply.Pod != server.Name:
		out.Detail = fmt.Sprintf("Service %s (%s) answered by %s, want %s", svc.Name, addr, res.reply.Pod, server.Name)
	case res.clientIP() != r.client.Status.PodIP:
		out.Detail = fmt.Sprintf("server saw client %s, want %s (source rewritten)", res.reply.Client, r.client.Status.PodIP)
	default:
		out.OK, out.Detail = true, fmt.Sprintf("%s -> Service %s (%s) -> %s", r.client.Name, svc.Name, addr, res.reply.Pod)
	}
	r.add(out)
}
