package policy

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/twill-net/twill/internal/datapath"
)

// TestAddressIndexFollowsEvents replays random pod events (addresses shared by two pods,
// ports that change, labels that change identity) and checks after each that the state's
// address map and named ports are those worked out from the current pods alone: the first
// pod by namespace/name owns a shared address, and only its ports count.
func TestAddressIndexFollowsEvents(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	c := NewCalculator()
	c.UpsertNetworkPolicy(netpol("a", "p", sel("app", "x"), nil)) // so that "app" makes identities
	pods := map[datapath.PodRef]Endpoint{}
	for step := range 400 {
		ref := datapath.PodRef{Namespace: []string{"a", "b"}[rng.IntN(2)], Name: fmt.Sprintf("p%d", rng.IntN(12))}
		if rng.IntN(4) == 0 {
			c.DeleteEndpoint(ref.Namespace, ref.Name)
			delete(pods, ref)
		} else {
			e := Endpoint{Namespace: ref.Namespace, Name: ref.Name, Node: fmt.Sprintf("n%d", rng.IntN(2)),
				Labels: map[string]string{"app": []string{"x", "y", "z"}[rng.IntN(3)]}}
			for range 1 + rng.IntN(2) {
				e.IPs = append(e.IPs, netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(10))}))
			}
			for range rng.IntN(3) {
				e.Ports = append(e.Ports, ContainerPort{Name: []string{"http", "dns"}[rng.IntN(2)],
					Protocol: datapath.ProtocolTCP, Port: uint16(80 + rng.IntN(2))})
			}
			c.UpsertEndpoint(e)
			pods[ref] = e
		}
		s := c.State()
		wantEndpoints, wantPorts := expectedAddresses(pods, s)
		if !maps.Equal(s.Endpoints, wantEndpoints) {
			t.Fatalf("step %d: endpoints\n%v\nwant\n%v", step, s.Endpoints, wantEndpoints)
		}
		for a, e := range s.Endpoints {
			l := s.Identities[e.Identity]
			if pod := pods[e.Pod]; l.Namespace != pod.Namespace || l.PodLabels["app"] != pod.Labels["app"] {
				t.Fatalf("step %d: %s has identity %d (%+v), not that of pod %s with labels %v", step, a, e.Identity, l, e.Pod, pod.Labels)
			}
		}
		if !reflect.DeepEqual(s.NamedPorts, wantPorts) {
			t.Fatalf("step %d: named ports\n%v\nwant\n%v", step, s.NamedPorts, wantPorts)
		}
	}
}

// expectedAddresses works the address map and named ports out from the pods, taking each
// pod's identity from the state (identities are tested elsewhere).
func expectedAddresses(pods map[datapath.PodRef]Endpoint, s datapath.PolicyState) (map[netip.Addr]datapath.EndpointEntry, map[string][]datapath.NamedPortEntry) {
	owner := map[netip.Addr]datapath.PodRef{}
	for ref, e := range pods {
		for _, a := range e.IPs {
			if prev, ok := owner[a]; !ok || comparePodRefs(ref, prev) < 0 {
				owner[a] = ref
			}
		}
	}
	endpoints := map[netip.Addr]datapath.EndpointEntry{}
	ports := map[string][]datapath.NamedPortEntry{}
	for a, ref := range owner {
		e := pods[ref]
		endpoints[a] = datapath.EndpointEntry{Pod: ref, Node: e.Node, Identity: s.Endpoints[a].Identity}
		for _, p := range e.Ports {
			ports[p.Name] = append(ports[p.Name], datapath.NamedPortEntry{Addr: a, Protocol: p.Protocol, Port: p.Port})
		}
	}
	for name, l := range ports {
		slices.SortFunc(l, func(a, b datapath.NamedPortEntry) int {
			return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
		})
		ports[name] = slices.Compact(l)
	}
	return endpoints, ports
}
