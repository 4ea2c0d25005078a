package service

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/twill-net/twill/internal/datapath"
)

// The tests run as node "n1".
const thisNode = "n1"

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, addr(s))
	}
	return out
}

func key(name string) datapath.ServiceKey { return datapath.ServiceKey{Namespace: "ns", Name: name} }

// clusterIPService is a ClusterIP service with one TCP port named "http" (80 -> 8080) unless
// ports are given.
func clusterIPService(name string, clusterIPs []string, ports ...corev1.ServicePort) *corev1.Service {
	if len(ports) == 0 {
		ports = []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  clusterIPs[0],
			ClusterIPs: clusterIPs,
			Ports:      ports,
		},
	}
}

// ep is an endpoint of a slice: ready on node unless conditions say otherwise.
type ep struct {
	addr                        string
	node                        string
	ready, serving, terminating *bool
}

var (
	yes = ptr(true)
	no  = ptr(false)
)

func ptr[T any](v T) *T { return &v }

func readyEP(a, node string) ep {
	return ep{addr: a, node: node, ready: yes, serving: yes, terminating: no}
}
func notReadyEP(a, node string) ep {
	return ep{addr: a, node: node, ready: no, serving: no, terminating: no}
}
func terminatingEP(a, node string) ep {
	return ep{addr: a, node: node, ready: no, serving: yes, terminating: yes}
}

type slicePortSpec struct {
	name  string
	proto corev1.Protocol
	port  int32
}

// slice is an EndpointSlice of service svc with the given ports (default: "http" TCP 8080).
func slice(name, svc string, family discoveryv1.AddressType, ports []slicePortSpec, eps ...ep) *discoveryv1.EndpointSlice {
	if ports == nil {
		ports = []slicePortSpec{{"http", corev1.ProtocolTCP, 8080}}
	}
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name},
		AddressType: family,
	}
	if svc != "" {
		s.Labels = map[string]string{discoveryv1.LabelServiceName: svc}
	}
	for _, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr(p.name), Protocol: ptr(p.proto), Port: ptr(p.port)})
	}
	for _, e := range eps {
		x := discoveryv1.Endpoint{
			Addresses:  []string{e.addr},
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
		}
		if e.node != "" {
			x.NodeName = ptr(e.node)
		}
		s.Endpoints = append(s.Endpoints, x)
	}
	return s
}

func backend(a string, port uint16, node string) datapath.Backend {
	return datapath.Backend{Addr: addr(a), Port: port, Node: node}
}

// served runs a fresh calculator over the objects and returns the one service it serves under
// key (ok false when it serves none).
func served(t *testing.T, k datapath.ServiceKey, objs ...any) (datapath.Service, bool) {
	t.Helper()
	c := NewCalculator(thisNode)
	feed(c, objs...)
	ch := c.Flush()
	if !ch.Full {
		t.Fatalf("first flush is not Full: %+v", ch)
	}
	for _, s := range ch.Set {
		if s.Key == k {
			return s, true
		}
	}
	return datapath.Service{}, false
}

func feed(c *Calculator, objs ...any) {
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Service:
			c.UpsertService(o)
		case *discoveryv1.EndpointSlice:
			c.UpsertEndpointSlice(o)
		default:
			panic("feed: unknown object")
		}
	}
}
