package policy

import (
	"reflect"
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
)

func auditEqual(a, b AuditReport) bool { return reflect.DeepEqual(a, b) }

func TestAudit(t *testing.T) {
	ingress, egress := datapath.Ingress, datapath.Egress
	c := newWorld(
		// x: default deny both ways, so no pod of x is open and x has its default deny.
		netpol("x", "default-deny", sel(), types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)),
		// y: only pod a is isolated, for ingress.
		netpol("y", "a-only", sel("pod", "a"), nil),
		// A typo: selects no pod.
		netpol("y", "typo", sel("pod", "aa"), nil),
		// z's pod c is covered for egress by a cluster policy.
		cnp("z-c-egress", v1alpha2.BaselineTier, 1, subjectPods(nsName("z"), sel("pod", "c")),
			egressRules(v1alpha2.ClusterNetworkPolicyEgressRule{Action: deny,
				To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{DomainNames: []v1alpha2.DomainName{"example.com"}}}})),
	)
	r := c.Audit()

	has := func(ns, pod string, d datapath.Direction) bool {
		return slices.Contains(r.Unselected, PodDirection{datapath.PodRef{Namespace: ns, Name: pod}, d})
	}
	for _, tc := range []struct {
		ns, pod string
		dir     datapath.Direction
		want    bool
	}{
		{"x", "a", ingress, false}, {"x", "b", egress, false},
		{"y", "a", ingress, false}, {"y", "a", egress, true}, {"y", "b", ingress, true},
		{"z", "c", egress, false}, {"z", "c", ingress, true}, {"z", "a", egress, true},
	} {
		if got := has(tc.ns, tc.pod, tc.dir); got != tc.want {
			t.Errorf("%s/%s %s listed as unselected = %v, want %v", tc.ns, tc.pod, tc.dir, got, tc.want)
		}
	}

	wantNS := []NamespaceDirection{{"y", ingress}, {"y", egress}, {"z", ingress}, {"z", egress}}
	if !reflect.DeepEqual(r.NamespacesWithoutDefaultDeny, wantNS) {
		t.Errorf("namespaces without default deny = %v, want %v", r.NamespacesWithoutDefaultDeny, wantNS)
	}
	wantNothing := []PolicyFinding{{Tier: datapath.TierNetworkPolicy, Policy: datapath.PolicyRef{Namespace: "y", Name: "typo"}}}
	if !reflect.DeepEqual(r.SelectingNothing, wantNothing) {
		t.Errorf("selecting nothing = %v, want %v", r.SelectingNothing, wantNothing)
	}
	// A Deny rule with domain names is invalid: it fails closed, and audit says so.
	if len(r.Problems) != 1 || r.Problems[0].Policy.Name != "z-c-egress" {
		t.Errorf("problems = %+v, want one for z-c-egress", r.Problems)
	}
}
