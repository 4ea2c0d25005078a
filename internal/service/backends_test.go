package service

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/twill-net/twill/internal/datapath"
)

const v4, v6 = discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6

// TestBackends checks, rule by rule, which endpoints a service port sends to, cluster-wide
// and on this node.
func TestBackends(t *testing.T) {
	v4Only := clusterIPService("web", []string{"10.96.0.10"})
	dual := clusterIPService("web", []string{"10.96.0.10", "fd00:96::10"})
	twoPorts := clusterIPService("web", []string{"10.96.0.10"},
		corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")},
		corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5353)})
	tests := []struct {
		name        string
		objs        []any
		port        string // the service port looked at
		want, local []datapath.Backend
	}{{
		name: "ready endpoints, sorted, with the slice's port number (a named target port resolved)",
		objs: []any{v4Only, slice("web-a", "web", v4, []slicePortSpec{{"http", corev1.ProtocolTCP, 8443}},
			readyEP("10.244.2.9", "n2"), readyEP("10.244.1.3", "n1"))},
		port:  "http",
		want:  []datapath.Backend{backend("10.244.1.3", 8443, "n1"), backend("10.244.2.9", 8443, "n2")},
		local: []datapath.Backend{backend("10.244.1.3", 8443, "n1")},
	}, {
		name: "service ports match slice ports by name (and protocol)",
		objs: []any{twoPorts, slice("web-a", "web", v4, []slicePortSpec{
			{"http", corev1.ProtocolTCP, 8080}, {"dns", corev1.ProtocolUDP, 5353}, {"dns", corev1.ProtocolTCP, 5354},
		}, readyEP("10.244.1.3", "n1"))},
		port:  "dns",
		want:  []datapath.Backend{backend("10.244.1.3", 5353, "n1")},
		local: []datapath.Backend{backend("10.244.1.3", 5353, "n1")},
	}, {
		name: "endpoints of every slice of the service, not of another service's",
		objs: []any{v4Only,
			slice("web-a", "web", v4, nil, readyEP("10.244.1.3", "n1")),
			slice("web-b", "web", v4, nil, readyEP("10.244.2.4", "n2")),
			slice("other-a", "other", v4, nil, readyEP("10.244.3.5", "n3")),
			slice("orphan", "", v4, nil, readyEP("10.244.3.6", "n3"))},
		port:  "http",
		want:  []datapath.Backend{backend("10.244.1.3", 8080, "n1"), backend("10.244.2.4", 8080, "n2")},
		local: []datapath.Backend{backend("10.244.1.3", 8080, "n1")},
	}, {
		name: "an endpoint in two slices counts once, the ready entry standing",
		objs: []any{v4Only,
			slice("web-a", "web", v4, nil, notReadyEP("10.244.1.3", "n1")),
			slice("web-b", "web", v4, nil, readyEP("10.244.1.3", "n1"), readyEP("10.244.2.4", "n2"))},
		port:  "http",
		want:  []datapath.Backend{backend("10.244.1.3", 8080, "n1"), backend("10.244.2.4", 8080, "n2")},
		local: []datapath.Backend{backend("10.244.1.3", 8080, "n1")},
	}, {
		name: "an address in two slices: the non-terminating entry stands (a new pod given a terminating one's address)",
		objs: []any{v4Only,
			slice("web-a", "web", v4, nil, terminatingEP("10.244.1.3", "n1")),
			slice("web-b", "web", v4, nil, notReadyEP("10.244.1.3", "n1"), readyEP("10.244.2.4", "n2"))},
		port: "http",
		want: []datapath.Backend{backend("10.244.2.4", 8080, "n2")},
		// Were the terminating entry to stand, it would be n1's Local fallback.
	}, {
		name: "not-ready and terminating endpoints are left out while one is ready",
		objs: []any{v4Only, slice("web-a", "web", v4, nil,
			readyEP("10.244.2.4", "n2"), notReadyEP("10.244.1.3", "n1"), terminatingEP("10.244.1.4", "n1"))},
		port: "http",
		want: []datapath.Backend{backend("10.244.2.4", 8080, "n2")},
		// None is ready on n1: Local traffic goes to the local terminating one.
		local: []datapath.Backend{backend("10.244.1.4", 8080, "n1")},
	}, {
		name: "none ready anywhere: serving terminating ones (not the not-serving)",
		objs: []any{v4Only, slice("web-a", "web", v4, nil,
			terminatingEP("10.244.2.4", "n2"), notReadyEP("10.244.1.3", "n1"),
			ep{addr: "10.244.1.9", node: "n1", ready: no, serving: no, terminating: yes})},
		port: "http",
		want: []datapath.Backend{backend("10.244.2.4", 8080, "n2")},
	}, {
		name: "a ready local endpoint hides local terminating ones, a remote ready one does not",
		objs: []any{v4Only, slice("web-a", "web", v4, nil,
			readyEP("10.244.1.3", "n1"), terminatingEP("10.244.1.4", "n1"), readyEP("10.244.2.4", "n2"))},
		port:  "http",
		want:  []datapath.Backend{backend("10.244.1.3", 8080, "n1"), backend("10.244.2.4", 8080, "n2")},
		local: []datapath.Backend{backend("10.244.1.3", 8080, "n1")},
	}, {
		name: "unset conditions: ready and serving, not terminating",
		objs: []any{v4Only, slice("web-a", "web", v4, nil, ep{addr: "10.244.1.3", node: "n1"})},
		port: "http", want: []datapath.Backend{backend("10.244.1.3", 8080, "n1")},
		local: []datapath.Backend{backend("10.244.1.3", 8080, "n1")},
	}, {
		name: "an endpoint without a node name is never local",
		objs: []any{v4Only, slice("web-a", "web", v4, nil, readyEP("10.244.1.3", ""))},
		port: "http", want: []datapath.Backend{backend("10.244.1.3", 8080, "")},
	}, {
		name: "address family from the slice's addressType: a mismatched address and FQDN slices are skipped",
		objs: []any{v4Only,
			slice("web-a", "web", v4, nil, readyEP("10.244.1.3", "n1"), readyEP("fd00:244::3", "n1")),
			slice("web-f", "web", discoveryv1.AddressTypeFQDN, nil, readyEP("db.example.com", "n1"))},
		port: "http", want: []datapath.Backend{backend("10.244.1.3", 8080, "n1")},
		local: []datapath.Backend{backend("10.244.1.3", 8080, "n1")},
	}, {
		name: "a single-stack IPv4 service ignores its IPv6 slices",
		objs: []any{v4Only,
			slice("web-a", "web", v4, nil, readyEP("10.244.1.3", "n2")),
			slice("web-6", "web", v6, nil, readyEP("fd00:244::3", "n2"))},
		port: "http", want: []datapath.Backend{backend("10.244.1.3", 8080, "n2")},
	}, {
		name: "dual-stack: backends of both families",
		objs: []any{dual,
			slice("web-a", "web", v4, nil, readyEP("10.244.1.3", "n2")),
			slice("web-6", "web", v6, nil, readyEP("fd00:244::3", "n2"))},
		port: "http", want: []datapath.Backend{backend("10.244.1.3", 8080, "n2"), backend("fd00:244::3", 8080, "n2")},
	}, {
		name: "slice without the port: no backends (the port rejects)",
		objs: []any{v4Only, slice("web-a", "web", v4, []slicePortSpec{{"https", corev1.ProtocolTCP, 8443}}, readyEP("10.244.1.3", "n1"))},
		port: "http",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Any order of the objects gives the same answer.
			for _, objs := range [][]any{tt.objs, reversed(tt.objs)} {
				s, ok := served(t, key("web"), objs...)
				if !ok {
					t.Fatal("service not served")
				}
				i := slices.IndexFunc(s.Ports, func(p datapath.ServicePort) bool { return p.Name == tt.port })
				if i < 0 {
					t.Fatalf("no port %q in %+v", tt.port, s.Ports)
				}
				p := s.Ports[i]
				if !slices.Equal(p.Backends, tt.want) {
					t.Errorf("Backends = %v, want %v", p.Backends, tt.want)
				}
				if !slices.Equal(p.LocalBackends, tt.local) {
					t.Errorf("LocalBackends = %v, want %v", p.LocalBackends, tt.local)
				}
			}
		})
	}
}

func reversed(objs []any) []any {
	out := slices.Clone(objs)
	slices.Reverse(out)
	return out
}

// TestEndpointInTwoSlicesAnyOrder: which duplicate entry stands depends on the entries, not on
// which slice was read first.
func TestEndpointInTwoSlicesAnyOrder(t *testing.T) {
	svc := clusterIPService("web", []string{"10.96.0.10"})
	a := slice("web-a", "web", v4, nil, terminatingEP("10.244.1.3", "n1"))
	b := slice("web-b", "web", v4, nil, terminatingEP("10.244.1.3", "n2"))
	var first []datapath.Backend
	for i := range 20 {
		objs := []any{svc, a, b}
		if i%2 == 1 {
			objs = []any{b, svc, a}
		}
		s, _ := served(t, key("web"), objs...)
		if i == 0 {
			first = s.Ports[0].Backends
			if len(first) != 1 {
				t.Fatalf("Backends = %v, want one", first)
			}
			continue
		}
		if !slices.Equal(s.Ports[0].Backends, first) {
			t.Fatalf("Backends = %v, earlier %v", s.Ports[0].Backends, first)
		}
	}
}
