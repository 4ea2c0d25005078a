package service

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/twill-net/twill/internal/datapath"
)

// version is one event of an object's history: its new state, or its deletion (nil).
type version struct {
	svc   *corev1.Service
	slice *discoveryv1.EndpointSlice
}

type history struct {
	name    string
	isSlice bool
	events  []version // nil svc and slice: deleted
}

func randomService(r *rand.Rand, name string) *corev1.Service {
	n := r.IntN(200)
	ips := []string{fmt.Sprintf("10.96.0.%d", n)}
	if r.IntN(3) == 0 {
		ips = append(ips, fmt.Sprintf("fd00:96::%x", n))
	}
	var ports []corev1.ServicePort
	if r.IntN(4) > 0 {
		ports = append(ports, corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80})
	}
	if r.IntN(2) == 0 {
		ports = append(ports, corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53})
	}
	s := clusterIPService(name, ips, ports...)
	if len(ports) == 0 {
		s.Spec.Ports = nil
	}
	switch r.IntN(6) {
	case 0:
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"}
	case 1:
		s.Spec.Type, s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ServiceTypeExternalName, "", nil
	case 2:
		s.Spec.Type = corev1.ServiceTypeNodePort
		for i := range s.Spec.Ports {
			s.Spec.Ports[i].NodePort = int32(30000 + r.IntN(100))
		}
		if r.IntN(2) == 0 {
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}
	}
	if r.IntN(3) == 0 {
		s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
	}
	if r.IntN(3) == 0 {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	}
	if r.IntN(4) == 0 {
		s.Spec.ExternalIPs = []string{fmt.Sprintf("198.51.100.%d", r.IntN(4))}
	}
	return s
}

func randomSlice(r *rand.Rand, name string, services []string) *discoveryv1.EndpointSlice {
	owner := services[r.IntN(len(services))]
	if r.IntN(8) == 0 {
		owner = "" // no service-name label
	}
	family := v4
	if r.IntN(3) == 0 {
		family = v6
	}
	var ports []slicePortSpec
	if r.IntN(4) > 0 {
		ports = append(ports, slicePortSpec{"http", corev1.ProtocolTCP, int32(8080 + r.IntN(2))})
	}
	if r.IntN(2) == 0 {
		ports = append(ports, slicePortSpec{"dns", corev1.ProtocolUDP, 5353})
	}
	if ports == nil {
		ports = []slicePortSpec{}
	}
	var eps []ep
	for range r.IntN(4) {
		a := fmt.Sprintf("10.244.%d.%d", r.IntN(2), r.IntN(4))
		if family == v6 {
			a = fmt.Sprintf("fd00:244::%d", r.IntN(4))
		}
		node := []string{"n1", "n2", ""}[r.IntN(3)]
		b := func() *bool { return []*bool{yes, no, nil}[r.IntN(3)] }
		eps = append(eps, ep{addr: a, node: node, ready: b(), serving: b(), terminating: b()})
	}
	return slice(name, owner, family, ports, eps...)
}

func randomHistories(r *rand.Rand) []history {
	services := []string{"s0", "s1", "s2", "s3"}
	var hs []history
	for _, name := range services {
		h := history{name: name}
		for range 1 + r.IntN(4) {
			if r.IntN(5) == 0 {
				h.events = append(h.events, version{})
			} else {
				h.events = append(h.events, version{svc: randomService(r, name)})
			}
		}
		hs = append(hs, h)
	}
	for i := range 6 {
		h := history{name: fmt.Sprintf("slice-%d", i), isSlice: true}
		for range 1 + r.IntN(4) {
			if r.IntN(5) == 0 {
				h.events = append(h.events, version{})
			} else {
				h.events = append(h.events, version{slice: randomSlice(r, h.name, services)})
			}
		}
		hs = append(hs, h)
	}
	return hs
}

func apply(c *Calculator, h history, v version) {
	switch {
	case v.svc != nil:
		c.UpsertService(v.svc)
	case v.slice != nil:
		c.UpsertEndpointSlice(v.slice)
	case h.isSlice:
		c.DeleteEndpointSlice("ns", h.name)
	default:
		c.DeleteService("ns", h.name)
	}
}

// replay interleaves the histories at random (each object's own events keep their order, as
// an informer delivers them), flushing at random moments into a fake datapath, and returns
// what the datapath serves at the end.
func replay(t *testing.T, hs []history, r *rand.Rand) map[datapath.ServiceKey]datapath.Service {
	t.Helper()
	c := NewCalculator(thisNode)
	dp := &datapath.FakeServices{}
	next := make([]int, len(hs))
	left := 0
	for _, h := range hs {
		left += len(h.events)
	}
	for ; left > 0; left-- {
		i := r.IntN(len(hs))
		for next[i] == len(hs[i].events) {
			i = (i + 1) % len(hs)
		}
		apply(c, hs[i], hs[i].events[next[i]])
		next[i]++
		if r.IntN(4) == 0 {
			if err := dp.ApplyServices(context.Background(), c.Flush()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := dp.ApplyServices(context.Background(), c.Flush()); err != nil {
		t.Fatal(err)
	}
	got := dp.Served()
	if ss := c.Services(); len(ss) != len(got) {
		t.Errorf("calculator has %d services, datapath serves %d", len(ss), len(got))
	}
	return got
}

// TestReplayInAnyOrder: whatever the interleaving of events and flushes, the datapath ends up
// serving what a calculator fed only the final objects computes.
func TestReplayInAnyOrder(t *testing.T) {
	for seed := range uint64(300) {
		hs := randomHistories(rand.New(rand.NewPCG(seed, 1)))

		ref := NewCalculator(thisNode)
		for _, h := range hs {
			apply(ref, h, h.events[len(h.events)-1])
		}
		want := map[datapath.ServiceKey]datapath.Service{}
		for _, s := range ref.Flush().Set {
			want[s.Key] = s
		}

		for order := range uint64(5) {
			got := replay(t, hs, rand.New(rand.NewPCG(seed, 100+order)))
			if len(got) != len(want) {
				t.Fatalf("seed %d order %d: serves %d services, want %d\ngot  %+v\nwant %+v", seed, order, len(got), len(want), got, want)
			}
			for k, w := range want {
				if g, ok := got[k]; !ok || !equalServices(g, w) {
					t.Fatalf("seed %d order %d: %s\ngot  %+v\nwant %+v", seed, order, k, g, w)
				}
			}
		}
	}
}
