package policy

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
)

func ingressRules(rules ...v1alpha2.ClusterNetworkPolicyIngressRule) func(*v1alpha2.ClusterNetworkPolicySpec) {
	return func(s *v1alpha2.ClusterNetworkPolicySpec) { s.Ingress = rules }
}

func egressRules(rules ...v1alpha2.ClusterNetworkPolicyEgressRule) func(*v1alpha2.ClusterNetworkPolicySpec) {
	return func(s *v1alpha2.ClusterNetworkPolicySpec) { s.Egress = rules }
}

func TestClusterNetworkPolicySemantics(t *testing.T) {
	admin, baseline := v1alpha2.AdminTier, v1alpha2.BaselineTier
	toX := subjectNamespaces(nsName("x"))
	allNamespaces := sel()
	isolateXA := netpol("x", "isolate-a", sel("pod", "a"), nil)
	xaFromY := netpol("x", "a-from-y", sel("pod", "a"),
		ingressFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: nsName("y")}))

	tests := []struct {
		name     string
		policies []any
		probes   []probe
	}{
		{
			name: "admin Pass at a better priority than Deny hands over to NetworkPolicy",
			policies: []any{
				cnp("pass-y", admin, 10, toX, ingressRules(fromNamespaces(pass, nsName("y")))),
				cnp("deny-all", admin, 20, toX, ingressRules(fromNamespaces(deny, allNamespaces))),
			},
			probes: []probe{
				tcp("y/a", "x/b", 80, true).because("admin/pass-y/ingress/0"),
				tcp("z/a", "x/b", 80, false).because("admin/deny-all/ingress/0"),
				tcp("y/a", "z/b", 80, true),
			},
		},
		{
			name: "admin Deny at a better priority than Pass wins",
			policies: []any{
				cnp("pass-y", admin, 30, toX, ingressRules(fromNamespaces(pass, nsName("y")))),
				cnp("deny-all", admin, 20, toX, ingressRules(fromNamespaces(deny, allNamespaces))),
			},
			probes: []probe{tcp("y/a", "x/b", 80, false).because("admin/deny-all/ingress/0")},
		},
		{
			name: "admin Pass goes to NetworkPolicy, which then decides",
			policies: []any{
				cnp("pass-y", admin, 10, toX, ingressRules(fromNamespaces(pass, nsName("y")))),
				isolateXA,
			},
			probes: []probe{tcp("y/a", "x/a", 80, false).because("default deny"), tcp("y/a", "x/b", 80, true)},
		},
		{
			name: "admin Accept overrides a NetworkPolicy default deny",
			policies: []any{
				cnp("accept-z", admin, 10, toX, ingressRules(fromNamespaces(accept, nsName("z")))),
				isolateXA,
			},
			probes: []probe{tcp("z/c", "x/a", 80, true).because("admin/accept-z/ingress/0"), tcp("y/c", "x/a", 80, false)},
		},
		{
			name: "admin Deny overrides a NetworkPolicy allow",
			policies: []any{
				cnp("deny-y", admin, 10, toX, ingressRules(fromNamespaces(deny, nsName("y")))),
				xaFromY,
			},
			probes: []probe{tcp("y/c", "x/a", 80, false).because("admin/deny-y/ingress/0")},
		},
		{
			name: "rules of one policy apply in the order written",
			policies: []any{cnp("ordered", admin, 10, subjectPods(nsName("x"), sel("pod", "a")), ingressRules(
				fromPods(accept, allNamespaces, sel("pod", "b")),
				fromNamespaces(deny, allNamespaces)))},
			probes: []probe{tcp("y/b", "x/a", 80, true).because("admin/ordered/ingress/0"),
				tcp("y/c", "x/a", 80, false).because("admin/ordered/ingress/1"), tcp("y/c", "x/b", 80, true)},
		},
		{
			name:     "baseline applies where no NetworkPolicy isolates",
			policies: []any{cnp("deny-all", baseline, 10, toX, ingressRules(fromNamespaces(deny, allNamespaces)))},
			probes: []probe{tcp("y/a", "x/a", 80, false).because("baseline/deny-all/ingress/0"),
				tcp(external, "x/a", 80, true)},
		},
		{
			name: "baseline comes after NetworkPolicy: an isolated pod is decided by NetworkPolicy",
			policies: []any{
				cnp("deny-all", baseline, 10, toX, ingressRules(fromNamespaces(deny, allNamespaces))),
				xaFromY,
			},
			probes: []probe{tcp("y/a", "x/a", 80, true).because("networkpolicy/x/a-from-y/ingress/0"),
				tcp("z/a", "x/a", 80, false).because("default deny"),
				tcp("y/a", "x/b", 80, false).because("baseline/deny-all/ingress/0")},
		},
		{
			name: "baseline Pass skips the rest of baseline: allowed",
			policies: []any{
				cnp("pass-y", baseline, 5, toX, ingressRules(fromNamespaces(pass, nsName("y")))),
				cnp("deny-all", baseline, 10, toX, ingressRules(fromNamespaces(deny, allNamespaces))),
			},
			probes: []probe{tcp("y/a", "x/a", 80, true).because("baseline/pass-y/ingress/0"), tcp("z/a", "x/a", 80, false)},
		},
		{
			name: "egress to nodes and networks, which include pods",
			policies: []any{cnp("egress", admin, 10, toX, egressRules(
				v1alpha2.ClusterNetworkPolicyEgressRule{Action: deny,
					To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Nodes: sel("role", "worker")}}},
				v1alpha2.ClusterNetworkPolicyEgressRule{Action: deny,
					To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Networks: []v1alpha2.CIDR{"192.0.2.0/24", "10.0.3.0/24"}}}},
			))},
			probes: []probe{tcp("x/a", "172.31.0.2", 80, false).because("admin/egress/egress/0"), tcp("x/a", "172.31.0.3", 80, true),
				tcp("x/a", external, 80, false).because("admin/egress/egress/1"), tcp("x/a", "z/b", 80, false), tcp("x/a", "y/b", 80, true)},
		},
		{
			name: "protocols: port numbers, ranges and named ports",
			policies: []any{cnp("ports", admin, 10, toX, ingressRules(v1alpha2.ClusterNetworkPolicyIngressRule{
				Action: deny, From: []v1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: allNamespaces}},
				Protocols: []v1alpha2.ClusterNetworkPolicyProtocol{
					{TCP: &v1alpha2.ClusterNetworkPolicyProtocolTCP{DestinationPort: &v1alpha2.Port{Number: 22}}},
					{UDP: &v1alpha2.ClusterNetworkPolicyProtocolUDP{DestinationPort: &v1alpha2.Port{Range: &v1alpha2.PortRange{Start: 1000, End: 2000}}}},
					{DestinationNamedPort: "web"},
				},
			}))},
			probes: []probe{tcp("y/a", "x/c", 22, false), tcp("y/a", "x/c", 23, true),
				{src: "y/a", dst: "x/c", port: 1500, proto: datapath.ProtocolUDP, want: false},
				{src: "y/a", dst: "x/c", port: 2001, proto: datapath.ProtocolUDP, want: true},
				tcp("y/a", "x/a", 80, false), tcp("y/a", "x/b", 80, true), tcp("y/a", "x/b", 8080, false)},
		},
		{
			name: "a Deny rule with a peer this version cannot read fails closed to deny all",
			policies: []any{cnp("unknown-peer", admin, 10, toX, ingressRules(v1alpha2.ClusterNetworkPolicyIngressRule{
				Action: deny, From: []v1alpha2.ClusterNetworkPolicyIngressPeer{{}}}))},
			probes: []probe{tcp("y/a", "x/a", 80, false).because("admin/unknown-peer/ingress/0"), tcp("y/a", "z/a", 80, true)},
		},
		{
			name: "an Accept rule with a peer this version cannot read matches nothing",
			policies: []any{
				cnp("unknown-peer", admin, 10, toX, ingressRules(v1alpha2.ClusterNetworkPolicyIngressRule{
					Action: accept, From: []v1alpha2.ClusterNetworkPolicyIngressPeer{{}, {Namespaces: allNamespaces}}})),
				isolateXA,
			},
			probes: []probe{tcp("y/a", "x/a", 80, false).because("default deny")},
		},
		{
			name: "subject by pods in namespaces",
			policies: []any{cnp("pods-a", admin, 10, subjectPods(sel("env", "dev"), sel("pod", "a")),
				ingressRules(fromNamespaces(deny, allNamespaces)))},
			probes: []probe{tcp("x/a", "y/a", 80, false), tcp("x/a", "y/b", 80, true), tcp("x/b", "x/a", 80, true)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkProbes(t, newWorld(tt.policies...), tt.probes)
		})
	}
}
