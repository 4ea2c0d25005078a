package conformance

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// The documented semantics these cases follow (sigs.k8s.io/network-policy-api v1alpha2,
// ClusterNetworkPolicySpec.Tier and the rule actions):
//   - tiers are evaluated Admin, then NetworkPolicy, then Baseline; within a tier, lower
//     priority values first, and within a policy, rules in the order written;
//   - Accept and Deny are final: no later rule, tier or NetworkPolicy is consulted;
//   - Pass skips the rest of its tier and hands the connection to the next tier;
//   - NetworkPolicy always decides for the pods it selects (in that direction); only pods no
//     NetworkPolicy selects reach Baseline;
//   - a connection no tier decides is allowed (Kubernetes' default).
// A connection must pass both the source's egress and the destination's ingress evaluation.

// CNPCases are the ClusterNetworkPolicy cases.
func CNPCases() []CNPCase {
	admin := v1alpha2.AdminTier
	baseline := v1alpha2.BaselineTier
	accept := v1alpha2.ClusterNetworkPolicyRuleActionAccept
	deny := v1alpha2.ClusterNetworkPolicyRuleActionDeny
	pass := v1alpha2.ClusterNetworkPolicyRuleActionPass
	tcp := corev1.ProtocolTCP
	return []CNPCase{
		{
			Name: "Admin Deny from y over a NetworkPolicy allowing all ingress in x",
			CNPs: []*v1alpha2.ClusterNetworkPolicy{
				cnpIngress("deny-y-to-x", admin, 10, namespace("x"), ingressRule(deny, fromNamespace("y"))),
			},
			Policies: []*networkingv1.NetworkPolicy{allowAllIngress("x")},
			Expect: func(from, to PodRef, _ PortProto) Verdict {
				// Deny is final in the Admin tier: the NetworkPolicy is never consulted.
				return verdict(!(to.NS == "x" && from.NS == "y"))
			},
		},
		{
			Name: "Admin Accept from pods a over a default-deny NetworkPolicy in x",
			CNPs: []*v1alpha2.ClusterNetworkPolicy{
				cnpIngress("accept-a-to-x", admin, 10, namespace("x"), ingressRule(accept, fromPods(&metav1.LabelSelector{}, "a"))),
			},
			Policies: []*networkingv1.NetworkPolicy{denyAll("x", networkingv1.PolicyTypeIngress)},
			Expect: func(from, to PodRef, _ PortProto) Verdict {
				if to.NS != "x" {
					return Allowed
				}
				// Accept is final; what it does not match falls to the NetworkPolicy, which
				// isolates every pod of x with no rule allowing anything.
				return verdict(from.Name == "a")
			},
		},
		{
			Name: "Admin Pass to NetworkPolicy skips a lower-precedence Admin Deny",
			CNPs: []*v1alpha2.ClusterNetworkPolicy{
				cnpIngress("pass-y-to-x", admin, 10, namespace("x"), ingressRule(pass, fromNamespace("y"))),
				cnpIngress("deny-all-to-x", admin, 20, namespace("x"), ingressRule(deny, fromNamespace(""))),
			},
			Policies: []*networkingv1.NetworkPolicy{allowIngressFromPod("x", "y", "b")},
			Expect: func(from, to PodRef, _ PortProto) Verdict {
				if to.NS != "x" {
					return Allowed
				}
				if from.NS == "y" {
					// Passed (priority 10 before 20) to the NetworkPolicy, which allows y/b only.
					return verdict(from.Name == "b")
				}
				return Blocked // the Admin Deny at priority 20
			},
		},
		{
			Name: "Baseline Deny in y applies only to pods no NetworkPolicy selects",
			CNPs: []*v1alpha2.ClusterNetworkPolicy{
				cnpIngress("baseline-deny-y", baseline, 10, namespace("y"), ingressRule(deny, fromNamespace(""))),
			},
			Policies: []*networkingv1.NetworkPolicy{allowIngressToPodFromNamespace("y", "a", "z")},
			Expect: func(from, to PodRef, _ PortProto) Verdict {
				switch {
				case to.NS != "y":
					return Allowed
				case to.Name == "a":
					// Selected by the NetworkPolicy, which decides: from z only.
					return verdict(from.NS == "z")
				}
				return Blocked // y/b and y/c: no NetworkPolicy selects them, Baseline denies
			},
		},
		{
			Name: "Admin Pass without a NetworkPolicy reaches Baseline",
			CNPs: []*v1alpha2.ClusterNetworkPolicy{
				cnpIngress("pass-x-to-z", admin, 5, namespace("z"), ingressRule(pass, fromNamespace("x"))),
				cnpIngress("deny-x-to-z", admin, 6, namespace("z"), ingressRule(deny, fromNamespace("x"))),
				cnpIngress("baseline-deny-xa-to-z", baseline, 5, namespace("z"), ingressRule(deny, fromPods(namespace("x"), "a"))),
			},
			Expect: func(from, to PodRef, _ PortProto) Verdict {
				if to.NS != "z" || from.NS != "x" {
					return Allowed
				}
				// Pass skips the Admin Deny; no NetworkPolicy selects z's pods; Baseline
				// denies x/a and says nothing of x/b and x/c, which the default allows.
				return verdict(from.Name != "a")
			},
		},
		{
			Name:  "Admin Deny egress from x/c to z on 80/TCP only",
			Ports: AllPorts,
			CNPs: []*v1alpha2.ClusterNetworkPolicy{
				cnpEgress("deny-xc-to-z-80", admin, 10, &v1alpha2.ClusterNetworkPolicySubject{Pods: podsIn("x", "c")},
					v1alpha2.ClusterNetworkPolicyEgressRule{Action: deny,
						To:        []v1alpha2.ClusterNetworkPolicyEgressPeer{{Namespaces: namespace("z")}},
						Protocols: []v1alpha2.ClusterNetworkPolicyProtocol{{TCP: &v1alpha2.ClusterNetworkPolicyProtocolTCP{DestinationPort: &v1alpha2.Port{Number: 80}}}},
					}),
			},
			Expect: func(from, to PodRef, port PortProto) Verdict {
				return verdict(!(from == PodRef{"x", "c"} && to.NS == "z" && port.Port == 80 && port.Protocol == tcp))
			},
		},
		{
			Name: "Admin Accept egress from y to x over a default-deny egress NetworkPolicy in y",
			CNPs: []*v1alpha2.ClusterNetworkPolicy{
				cnpEgress("accept-y-to-x", admin, 10, &v1alpha2.ClusterNetworkPolicySubject{Namespaces: namespace("y")},
					v1alpha2.ClusterNetworkPolicyEgressRule{Action: accept,
						To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Namespaces: namespace("x")}}}),
			},
			Policies: []*networkingv1.NetworkPolicy{denyAll("y", networkingv1.PolicyTypeEgress)},
			Expect: func(from, to PodRef, _ PortProto) Verdict {
				if from.NS != "y" {
					return Allowed
				}
				return verdict(to.NS == "x") // elsewhere the NetworkPolicy's egress deny
			},
		},
	}
}

func verdict(allowed bool) Verdict {
	if allowed {
		return Allowed
	}
	return Blocked
}

func cnpIngress(name string, tier v1alpha2.Tier, priority int32, subject *metav1.LabelSelector, rules ...v1alpha2.ClusterNetworkPolicyIngressRule) *v1alpha2.ClusterNetworkPolicy {
	return &v1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha2.ClusterNetworkPolicySpec{Tier: tier, Priority: priority,
			Subject: v1alpha2.ClusterNetworkPolicySubject{Namespaces: subject}, Ingress: rules},
	}
}

func cnpEgress(name string, tier v1alpha2.Tier, priority int32, subject *v1alpha2.ClusterNetworkPolicySubject, rules ...v1alpha2.ClusterNetworkPolicyEgressRule) *v1alpha2.ClusterNetworkPolicy {
	return &v1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha2.ClusterNetworkPolicySpec{Tier: tier, Priority: priority, Subject: *subject, Egress: rules},
	}
}

func ingressRule(action v1alpha2.ClusterNetworkPolicyRuleAction, from ...v1alpha2.ClusterNetworkPolicyIngressPeer) v1alpha2.ClusterNetworkPolicyIngressRule {
	return v1alpha2.ClusterNetworkPolicyIngressRule{Name: string(action), Action: action, From: from}
}

// fromNamespace is a peer of every pod in namespace ns ("": every namespace).
func fromNamespace(ns string) v1alpha2.ClusterNetworkPolicyIngressPeer {
	if ns == "" {
		return v1alpha2.ClusterNetworkPolicyIngressPeer{Namespaces: &metav1.LabelSelector{}}
	}
	return v1alpha2.ClusterNetworkPolicyIngressPeer{Namespaces: namespace(ns)}
}

func fromPods(namespaces *metav1.LabelSelector, pod string) v1alpha2.ClusterNetworkPolicyIngressPeer {
	return v1alpha2.ClusterNetworkPolicyIngressPeer{Pods: &v1alpha2.NamespacedPod{
		NamespaceSelector: *namespaces,
		PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"pod": pod}},
	}}
}

func denyAll(ns string, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-all", Namespace: ns},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: types},
	}
}

func allowAllIngress(ns string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-all", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
		},
	}
}

// allowIngressFromPod isolates every pod of ns for ingress and lets in fromNS/fromPod only.
func allowIngressFromPod(ns, fromNS, fromPod string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "from-" + fromNS + "-" + fromPod, Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: namespace(fromNS),
				PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"pod": fromPod}},
			}}}},
		},
	}
}

// allowIngressToPodFromNamespace isolates ns/pod for ingress and lets in every pod of fromNS.
func allowIngressToPodFromNamespace(ns, pod, fromNS string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: pod + "-from-" + fromNS, Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": pod}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: namespace(fromNS),
			}}}},
		},
	}
}
