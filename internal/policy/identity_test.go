package policy

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/twill-net/twill/internal/datapath"
)

// identityOf returns the identity of a pod's first address in s.
func identityOf(t *testing.T, s *datapath.PolicyState, ep Endpoint) datapath.Identity {
	t.Helper()
	e, ok := s.Endpoints[ep.IPs[0]]
	if !ok {
		t.Fatalf("%s/%s has no endpoint entry", ep.Namespace, ep.Name)
	}
	return e.Identity
}

func replica(i int, labels map[string]string) Endpoint {
	return Endpoint{Namespace: "x", Name: fmt.Sprintf("web-%d", i), Labels: labels, Node: "n1",
		IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 9, byte(i + 1)})}}
}

func TestUnusedLabelsDoNotMultiplyIdentities(t *testing.T) {
	c := NewCalculator()
	c.UpsertNetworkPolicy(netpol("x", "web", sel("app", "web"), nil))
	for i := range 20 {
		// Every replica has its own pod-template-hash and name label, which no policy reads.
		c.UpsertEndpoint(replica(i, map[string]string{"app": "web", "pod-template-hash": fmt.Sprint(i),
			"statefulset.kubernetes.io/pod-name": fmt.Sprintf("web-%d", i)}))
	}
	c.UpsertEndpoint(replica(30, map[string]string{"app": "db", "pod-template-hash": "x"}))
	s := c.State()
	if len(s.Identities) != 2 {
		t.Errorf("identities = %d, want 2 (app=web and app=db in x):\n%s", len(s.Identities), s.String())
	}
	for id, l := range s.Identities {
		if _, ok := l.PodLabels["pod-template-hash"]; ok {
			t.Errorf("identity %d carries an unused label: %v", id, l)
		}
	}
}

func TestPodChurnChangesMembershipNotRules(t *testing.T) {
	c := newWorld(
		netpol("x", "web", sel("pod", "a"), ingressFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel("env", "dev")})),
		netpol("y", "deny", sel(), nil))
	before := c.State()

	// A second pod with labels already in use: only its address appears.
	twin := Endpoint{Namespace: "x", Name: "a2", Labels: map[string]string{"pod": "a"}, Node: "n1", IPs: addrs("10.0.1.99")}
	c.UpsertEndpoint(twin)
	after := c.State()
	if !reflect.DeepEqual(before.Ingress, after.Ingress) || !reflect.DeepEqual(before.Egress, after.Egress) {
		t.Error("a new pod changed rules")
	}
	if !reflect.DeepEqual(before.IdentitySets, after.IdentitySets) {
		t.Error("a pod with known labels changed identity sets")
	}
	if identityOf(t, &after, twin) != identityOf(t, &after, worldEndpoints()[0]) {
		t.Error("pods with the same labels have different identities")
	}

	// A pod with new labels adds one identity to the sets that select it; rules stay.
	fresh := Endpoint{Namespace: "y", Name: "d", Labels: map[string]string{"pod": "d"}, Node: "n2", IPs: addrs("10.0.2.99")}
	c.UpsertEndpoint(fresh)
	s := c.State()
	if !reflect.DeepEqual(before.Ingress, s.Ingress) || !reflect.DeepEqual(before.Egress, s.Egress) {
		t.Error("a pod with new labels changed rules")
	}
	ev := datapath.NewPolicyEvaluator(&s)
	v := ev.Evaluate(datapath.Packet{Src: fresh.IPs[0], Dst: netip.MustParseAddr("10.0.1.1"), Protocol: datapath.ProtocolTCP, Port: 80})
	if !v.Allowed {
		t.Errorf("new pod in a dev namespace is not allowed to x/a: %v", v.Decisions)
	}

	// Deleting both brings back the first state, identities included.
	c.DeleteEndpoint("x", "a2")
	c.DeleteEndpoint("y", "d")
	final := c.State()
	if !reflect.DeepEqual(before, final) {
		t.Errorf("state after churn differs:\n%s\nwant\n%s", final.String(), before.String())
	}
}

func TestIdentityKeepsItsNumber(t *testing.T) {
	c := newWorld(netpol("x", "web", sel("pod", "a"), nil))
	xa := worldEndpoints()[0]
	s := c.State()
	id := identityOf(t, &s, xa)

	// Other pods, namespaces and policies coming and going do not renumber x/a's identity.
	c.UpsertEndpoint(Endpoint{Namespace: "z", Name: "new", Labels: map[string]string{"pod": "new"}, IPs: addrs("10.0.3.50")})
	c.UpsertNetworkPolicy(netpol("y", "other", sel("pod", "b"), nil))
	c.DeleteEndpoint("y", "c")
	c.UpsertNamespace(Namespace{Name: "w"})
	s = c.State()
	if got := identityOf(t, &s, xa); got != id {
		t.Errorf("identity of x/a changed from %d to %d", id, got)
	}
}

func TestRelevantLabelKeysSplitAndMergeIdentities(t *testing.T) {
	c := NewCalculator()
	c.UpsertNetworkPolicy(netpol("x", "web", sel("app", "web"), nil))
	fe := replica(1, map[string]string{"app": "web", "tier": "fe"})
	be := replica(2, map[string]string{"app": "web", "tier": "be"})
	c.UpsertEndpoint(fe)
	c.UpsertEndpoint(be)
	s := c.State()
	if identityOf(t, &s, fe) != identityOf(t, &s, be) {
		t.Fatal("tier is read by no policy, yet it splits identities")
	}

	// A policy reading tier splits them, and a rule on tier=fe applies to fe only.
	c.UpsertNetworkPolicy(netpol("x", "fe", sel("tier", "fe"), types(networkingv1.PolicyTypeEgress)))
	s = c.State()
	if identityOf(t, &s, fe) == identityOf(t, &s, be) {
		t.Fatal("a policy reads tier but fe and be share an identity")
	}
	ev := datapath.NewPolicyEvaluator(&s)
	p := datapath.Packet{Src: fe.IPs[0], Dst: netip.MustParseAddr(external), Protocol: datapath.ProtocolTCP, Port: 443}
	if ev.Evaluate(p).Allowed {
		t.Error("fe egress is not isolated")
	}
	p.Src = be.IPs[0]
	if !ev.Evaluate(p).Allowed {
		t.Error("be egress is isolated")
	}

	// Dropping that policy merges them again.
	c.DeleteNetworkPolicy("x", "fe")
	s = c.State()
	if identityOf(t, &s, fe) != identityOf(t, &s, be) || len(s.Identities) != 1 {
		t.Errorf("identities did not merge after the policy reading tier went:\n%s", s.String())
	}
}

func TestNamespaceLabelsMovePods(t *testing.T) {
	np := netpol("x", "from-dev", sel(), ingressFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel("env", "dev")}))
	c := newWorld(np)
	za, xa := addrs("10.0.3.1")[0], addrs("10.0.1.1")[0]
	allowed := func() bool {
		s := c.State()
		return datapath.NewPolicyEvaluator(&s).Evaluate(datapath.Packet{Src: za, Dst: xa, Protocol: datapath.ProtocolTCP, Port: 80}).Allowed
	}
	if allowed() {
		t.Fatal("z is not dev, yet allowed")
	}
	c.UpsertNamespace(Namespace{Name: "z", Labels: map[string]string{"env": "dev"}})
	if !allowed() {
		t.Error("z labelled dev, still denied")
	}
	c.DeleteNamespace("z")
	if allowed() {
		t.Error("z's labels are gone, still allowed")
	}
}
