package policy

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/twill-net/twill/internal/datapath"
)

func ingressFrom(peers ...networkingv1.NetworkPolicyPeer) func(*networkingv1.NetworkPolicySpec) {
	return func(s *networkingv1.NetworkPolicySpec) {
		s.Ingress = append(s.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers})
	}
}

func ingressPorts(ports ...networkingv1.NetworkPolicyPort) func(*networkingv1.NetworkPolicySpec) {
	return func(s *networkingv1.NetworkPolicySpec) {
		s.Ingress = append(s.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: ports})
	}
}

func TestNetworkPolicySemantics(t *testing.T) {
	ingress, egress := networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress
	udp := func(src, dst string, port uint16, want bool) probe {
		return probe{src: src, dst: dst, port: port, proto: datapath.ProtocolUDP, want: want}
	}
	sctp := func(src, dst string, port uint16, want bool) probe {
		return probe{src: src, dst: dst, port: port, proto: datapath.ProtocolSCTP, want: want}
	}
	tests := []struct {
		name     string
		policies []any
		probes   []probe
	}{
		{
			name: "no policy allows all",
			probes: []probe{tcp("x/a", "y/b", 80, true), tcp(external, "z/c", 443, true),
				udp("y/a", "x/a", 53, true), tcp("x/a", external, 80, true)},
		},
		{
			name:     "ingress isolation denies what no rule allows, egress stays open",
			policies: []any{netpol("x", "deny-a", sel("pod", "a"), nil)},
			probes: []probe{tcp("y/b", "x/a", 80, false).because("default deny"), tcp("x/b", "x/a", 80, false),
				tcp("x/a", "y/b", 80, true), tcp("y/b", "x/b", 80, true)},
		},
		{
			name:     "egress isolation",
			policies: []any{netpol("x", "deny-egress", sel("pod", "a"), types(egress))},
			probes: []probe{tcp("x/a", "y/b", 80, false).because("default deny"), tcp("x/a", external, 443, false),
				tcp("y/b", "x/a", 80, true), tcp("x/b", "y/b", 80, true)},
		},
		{
			name:     "empty podSelector isolates the whole namespace, and only it",
			policies: []any{netpol("x", "deny-all", sel(), types(ingress, egress))},
			probes:   []probe{tcp("x/a", "x/b", 80, false), tcp("y/a", "x/c", 80, false), tcp("y/a", "z/c", 80, true)},
		},
		{
			name: "namespaceSelector and podSelector in one peer: pods b of dev namespaces",
			policies: []any{netpol("x", "one-peer", sel("pod", "a"),
				ingressFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel("env", "dev"), PodSelector: sel("pod", "b")}))},
			probes: []probe{tcp("y/b", "x/a", 80, true).because("networkpolicy/x/one-peer/ingress/0"),
				tcp("y/a", "x/a", 80, false), tcp("x/b", "x/a", 80, false), tcp("z/b", "x/a", 80, false)},
		},
		{
			name: "namespaceSelector and podSelector in two peers: dev namespaces or pods b here",
			policies: []any{netpol("x", "two-peers", sel("pod", "a"), ingressFrom(
				networkingv1.NetworkPolicyPeer{NamespaceSelector: sel("env", "dev")},
				networkingv1.NetworkPolicyPeer{PodSelector: sel("pod", "b")}))},
			probes: []probe{tcp("y/a", "x/a", 80, true), tcp("y/b", "x/a", 80, true), tcp("x/b", "x/a", 80, true),
				tcp("x/c", "x/a", 80, false), tcp("z/b", "x/a", 80, false)},
		},
		{
			name: "empty namespaceSelector selects every pod but no outside address",
			policies: []any{netpol("x", "all-pods", sel("pod", "a"),
				ingressFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel()}))},
			probes: []probe{tcp("z/c", "x/a", 80, true), tcp(external, "x/a", 80, false)},
		},
		{
			name: "ipBlock with except, egress",
			policies: []any{netpol("x", "cidr", sel("pod", "a"), func(s *networkingv1.NetworkPolicySpec) {
				s.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
					{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/16", Except: []string{"10.0.2.0/24", "10.0.3.3/32"}}}}}}
			})},
			probes: []probe{tcp("x/a", "y/a", 80, false), tcp("x/a", "z/a", 80, true), tcp("x/a", "z/c", 80, false),
				tcp("x/a", "x/b", 80, true), tcp("x/a", external, 80, false)},
		},
		{
			name: "ipBlock ingress from outside",
			policies: []any{netpol("x", "from-outside", sel(),
				ingressFrom(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}}))},
			probes: []probe{tcp(external, "x/b", 80, true), tcp("203.0.113.1", "x/b", 80, false), tcp("y/a", "x/b", 80, false)},
		},
		{
			name: "named port resolves per destination pod",
			policies: []any{netpol("x", "web", sel(),
				ingressPorts(npPort(corev1.ProtocolTCP, intstr.FromString("web"), 0)))},
			probes: []probe{tcp("y/a", "x/a", 80, true), tcp("y/a", "x/a", 8080, false),
				tcp("y/a", "x/b", 8080, true), tcp("y/a", "x/b", 80, false), tcp("y/a", "x/c", 80, false)},
		},
		{
			name: "named port must match its protocol too",
			policies: []any{
				netpol("x", "dns-udp", sel("pod", "a"), ingressPorts(npPort(corev1.ProtocolUDP, intstr.FromString("dns"), 0))),
				netpol("x", "dns-tcp", sel("pod", "a"), ingressPorts(npPort(corev1.ProtocolTCP, intstr.FromString("dns"), 0))),
			},
			probes: []probe{udp("y/a", "x/a", 53, true).because("networkpolicy/x/dns-udp/ingress/0"), tcp("y/a", "x/a", 53, false)},
		},
		{
			name: "endPort range, by protocol",
			policies: []any{netpol("x", "range", sel("pod", "a"),
				ingressPorts(npPort(corev1.ProtocolTCP, intstr.FromInt32(8000), 8010)))},
			probes: []probe{tcp("y/a", "x/a", 8000, true), tcp("y/a", "x/a", 8010, true), tcp("y/a", "x/a", 7999, false),
				tcp("y/a", "x/a", 8011, false), udp("y/a", "x/a", 8005, false)},
		},
		{
			name: "SCTP port",
			policies: []any{netpol("x", "sctp", sel("pod", "a"),
				ingressPorts(npPort(corev1.ProtocolSCTP, intstr.FromInt32(5000), 0)))},
			probes: []probe{sctp("y/a", "x/a", 5000, true), tcp("y/a", "x/a", 5000, false), sctp("y/a", "x/a", 5001, false)},
		},
		{
			name: "policies add up",
			policies: []any{
				netpol("x", "from-y", sel("pod", "a"), ingressFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: nsName("y")})),
				netpol("x", "from-z", sel("pod", "a"), ingressFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: nsName("z")})),
			},
			probes: []probe{tcp("y/c", "x/a", 80, true), tcp("z/c", "x/a", 80, true), tcp("x/b", "x/a", 80, false)},
		},
		{
			name: "without policyTypes, egress rules make the policy isolate egress too",
			policies: []any{netpol("x", "both", sel("pod", "a"), func(s *networkingv1.NetworkPolicySpec) {
				s.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("pod", "b")}}}}
			})},
			probes: []probe{tcp("x/a", "x/b", 80, true), tcp("x/a", "x/c", 80, false), tcp("x/b", "x/a", 80, false)},
		},
		{
			name: "policyTypes Ingress ignores egress rules",
			policies: []any{netpol("x", "ingress-only", sel("pod", "a"), func(s *networkingv1.NetworkPolicySpec) {
				s.PolicyTypes = []networkingv1.PolicyType{ingress}
				s.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("pod", "b")}}}}
			})},
			probes: []probe{tcp("x/a", "x/c", 80, true), tcp("x/b", "x/a", 80, false)},
		},
		{
			name:     "an isolated pod still takes traffic from its own node",
			policies: []any{netpol("x", "deny-a", sel("pod", "a"), nil)},
			probes:   []probe{tcp("172.31.0.1", "x/a", 10250, true), tcp("172.31.0.2", "x/a", 10250, false)},
		},
		{
			name:     "a pod reaches itself whatever the policy",
			policies: []any{netpol("x", "deny-a", sel("pod", "a"), types(ingress, egress))},
			probes:   []probe{tcp("x/a", "x/a", 80, true)},
		},
		{
			name: "both ends must allow",
			policies: []any{
				netpol("x", "a-egress-to-y", sel("pod", "a"), func(s *networkingv1.NetworkPolicySpec) {
					s.PolicyTypes = []networkingv1.PolicyType{egress}
					s.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: nsName("y")}}}}
				}),
				netpol("y", "b-ingress-from-z", sel("pod", "b"), ingressFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: nsName("z")})),
			},
			probes: []probe{tcp("x/a", "y/a", 80, true), tcp("x/a", "y/b", 80, false), tcp("z/a", "y/b", 80, true)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkProbes(t, newWorld(tt.policies...), tt.probes)
		})
	}
}

// TestSCTPRendered checks the compiled rule itself: protocol 132 and the port, so a datapath
// renders SCTP rules even where the kernel has no SCTP sockets to probe them with.
func TestSCTPRendered(t *testing.T) {
	c := newWorld(netpol("x", "sctp", sel("pod", "a"), ingressPorts(npPort(corev1.ProtocolSCTP, intstr.FromInt32(5000), 5002))))
	s := c.State()
	if len(s.Ingress.NetworkPolicy) != 1 {
		t.Fatalf("rules: %+v", s.Ingress.NetworkPolicy)
	}
	want := []datapath.PortMatch{{Protocol: datapath.ProtocolSCTP, FirstPort: 5000, LastPort: 5002}}
	if got := s.Ingress.NetworkPolicy[0].Ports; len(got) != 1 || got[0] != want[0] {
		t.Errorf("ports = %+v, want %+v", got, want)
	}
}
