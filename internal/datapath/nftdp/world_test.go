package nftdp

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/policy"
)

// Builders of real policy objects, fed to policy.Calculator so the tests render states as the
// agent will.

func labels(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func sel(kv ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: labels(kv...)}
}

func netpol(ns, name string, podSelector *metav1.LabelSelector, spec func(*networkingv1.NetworkPolicySpec)) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *podSelector}}
	if spec != nil {
		spec(&np.Spec)
	}
	return np
}

func port(proto corev1.Protocol, p intstr.IntOrString) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

func cnp(name string, tier v1alpha2.Tier, priority int32, subject v1alpha2.ClusterNetworkPolicySubject,
	spec func(*v1alpha2.ClusterNetworkPolicySpec)) *v1alpha2.ClusterNetworkPolicy {
	p := &v1alpha2.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha2.ClusterNetworkPolicySpec{Tier: tier, Priority: priority, Subject: subject}}
	if spec != nil {
		spec(&p.Spec)
	}
	return p
}

func tcpPort(n int32) v1alpha2.ClusterNetworkPolicyProtocol {
	return v1alpha2.ClusterNetworkPolicyProtocol{TCP: &v1alpha2.ClusterNetworkPolicyProtocolTCP{
		DestinationPort: &v1alpha2.Port{Number: n}}}
}

func upsert(c *policy.Calculator, objs ...any) {
	for _, o := range objs {
		switch o := o.(type) {
		case *networkingv1.NetworkPolicy:
			c.UpsertNetworkPolicy(o)
		case *v1alpha2.ClusterNetworkPolicy:
			c.UpsertClusterNetworkPolicy(o)
		case policy.Endpoint:
			c.UpsertEndpoint(o)
		case policy.Namespace:
			c.UpsertNamespace(o)
		case policy.Node:
			c.UpsertNode(o)
		default:
			panic("unknown input")
		}
	}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func state(c *policy.Calculator) *datapath.PolicyState {
	s := c.State()
	return &s
}
