package policy

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
)

// The test world: namespaces x (env=prod), y (env=dev) and z (no labels), each with pods a, b
// and c labelled pod=<name>; x's pods on node n1, y's on n2, z's on n3. Pod x/a serves its
// "web" port on 80, x/b on 8080: a named port that differs per pod.
const external = "192.0.2.10"

func worldNamespaces() []Namespace {
	return []Namespace{
		{Name: "x", Labels: map[string]string{"env": "prod"}},
		{Name: "y", Labels: map[string]string{"env": "dev"}},
		{Name: "z"},
	}
}

func worldNodes() []Node {
	return []Node{
		{Name: "n1", Labels: map[string]string{"role": "worker"}, IPs: addrs("172.31.0.1")},
		{Name: "n2", Labels: map[string]string{"role": "worker"}, IPs: addrs("172.31.0.2")},
		{Name: "n3", Labels: map[string]string{"role": "infra"}, IPs: addrs("172.31.0.3", "fd00:31::3")},
	}
}

func worldEndpoints() []Endpoint {
	var eps []Endpoint
	for i, ns := range []string{"x", "y", "z"} {
		for j, pod := range []string{"a", "b", "c"} {
			ip := netip.AddrFrom4([4]byte{10, 0, byte(i + 1), byte(j + 1)})
			eps = append(eps, Endpoint{Namespace: ns, Name: pod, Labels: map[string]string{"pod": pod},
				IPs: []netip.Addr{ip}, Node: "n" + string(rune('1'+i))})
		}
	}
	eps[0].Ports = []ContainerPort{{Name: "web", Protocol: datapath.ProtocolTCP, Port: 80},
		{Name: "dns", Protocol: datapath.ProtocolUDP, Port: 53}}
	eps[1].Ports = []ContainerPort{{Name: "web", Protocol: datapath.ProtocolTCP, Port: 8080}}
	return eps
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// newWorld returns a calculator holding the test world and the given policies.
func newWorld(policies ...any) *Calculator {
	c := NewCalculator()
	for _, ns := range worldNamespaces() {
		c.UpsertNamespace(ns)
	}
	for _, n := range worldNodes() {
		c.UpsertNode(n)
	}
	for _, e := range worldEndpoints() {
		c.UpsertEndpoint(e)
	}
	for _, p := range policies {
		upsertPolicy(c, p)
	}
	return c
}

func upsertPolicy(c *Calculator, p any) {
	switch p := p.(type) {
	case *networkingv1.NetworkPolicy:
		c.UpsertNetworkPolicy(p)
	case *v1alpha2.ClusterNetworkPolicy:
		c.UpsertClusterNetworkPolicy(p)
	default:
		panic("not a policy")
	}
}

// probe is one connection and whether it should be allowed; by, when set, must appear in the
// verdict's decisions (as an attribution ID or "default deny").
type probe struct {
	src, dst string
	port     uint16
	proto    datapath.Protocol
	want     bool
	by       string
}

func tcp(src, dst string, port uint16, want bool) probe {
	return probe{src: src, dst: dst, port: port, proto: datapath.ProtocolTCP, want: want}
}

func (p probe) because(by string) probe { p.by = by; return p }

func checkProbes(t *testing.T, c *Calculator, probes []probe) {
	t.Helper()
	for _, p := range probes {
		src, err := ParseTarget(p.src)
		if err != nil {
			t.Fatal(err)
		}
		dst, err := ParseTarget(p.dst)
		if err != nil {
			t.Fatal(err)
		}
		ex, err := c.Explain(src, dst, p.port, p.proto)
		if err != nil {
			t.Fatalf("%s -> %s: %v", p.src, p.dst, err)
		}
		var why []string
		found := p.by == ""
		for _, d := range ex.Decisions {
			why = append(why, d.String())
			if (p.by == "default deny" && d.DefaultDeny) || (d.Policy.Name != "" && d.ID() == p.by) {
				found = true
			}
		}
		if ex.Allowed != p.want {
			t.Errorf("%s -> %s %d/%s: allowed=%v, want %v\n  %s", p.src, p.dst, p.port, p.proto, ex.Allowed, p.want,
				strings.Join(why, "\n  "))
		} else if !found {
			t.Errorf("%s -> %s %d/%s: no decision by %s\n  %s", p.src, p.dst, p.port, p.proto, p.by, strings.Join(why, "\n  "))
		}
	}
}

// Builders for policies, short enough to read a test as a table.

func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func netpol(ns, name string, podSelector *metav1.LabelSelector, edit func(*networkingv1.NetworkPolicySpec)) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *podSelector}}
	if edit != nil {
		edit(&np.Spec)
	}
	return np
}

func types(ts ...networkingv1.PolicyType) func(*networkingv1.NetworkPolicySpec) {
	return func(s *networkingv1.NetworkPolicySpec) { s.PolicyTypes = ts }
}

func npPort(proto corev1.Protocol, port intstr.IntOrString, endPort int32) networkingv1.NetworkPolicyPort {
	p := networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &port}
	if endPort != 0 {
		p.EndPort = &endPort
	}
	return p
}

func cnp(name string, tier v1alpha2.Tier, priority int32, subject v1alpha2.ClusterNetworkPolicySubject,
	edit func(*v1alpha2.ClusterNetworkPolicySpec)) *v1alpha2.ClusterNetworkPolicy {
	p := &v1alpha2.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha2.ClusterNetworkPolicySpec{Tier: tier, Priority: priority, Subject: subject}}
	if edit != nil {
		edit(&p.Spec)
	}
	return p
}

func subjectNamespaces(s *metav1.LabelSelector) v1alpha2.ClusterNetworkPolicySubject {
	return v1alpha2.ClusterNetworkPolicySubject{Namespaces: s}
}

func subjectPods(ns, pod *metav1.LabelSelector) v1alpha2.ClusterNetworkPolicySubject {
	return v1alpha2.ClusterNetworkPolicySubject{Pods: &v1alpha2.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pod}}
}

func fromNamespaces(action v1alpha2.ClusterNetworkPolicyRuleAction, s *metav1.LabelSelector) v1alpha2.ClusterNetworkPolicyIngressRule {
	return v1alpha2.ClusterNetworkPolicyIngressRule{Action: action,
		From: []v1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: s}}}
}

func fromPods(action v1alpha2.ClusterNetworkPolicyRuleAction, ns, pod *metav1.LabelSelector) v1alpha2.ClusterNetworkPolicyIngressRule {
	return v1alpha2.ClusterNetworkPolicyIngressRule{Action: action,
		From: []v1alpha2.ClusterNetworkPolicyIngressPeer{{Pods: &v1alpha2.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pod}}}}
}

const (
	accept = v1alpha2.ClusterNetworkPolicyRuleActionAccept
	deny   = v1alpha2.ClusterNetworkPolicyRuleActionDeny
	pass   = v1alpha2.ClusterNetworkPolicyRuleActionPass
)

func nsName(name string) *metav1.LabelSelector { return sel(NamespaceNameLabel, name) }
