package conformance

import (
	"fmt"
	"testing"

	"github.com/mattfenwick/cyclonus/pkg/connectivity/probe"
	"github.com/mattfenwick/cyclonus/pkg/generator"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// shapeModel is the oracle's model of the shape with made-up addresses (no cluster needed).
func shapeModel() *probe.Resources {
	res := &probe.Resources{Namespaces: map[string]map[string]string{}}
	var containers []*probe.Container
	for _, port := range servedPorts {
		for _, proto := range servedProtocols {
			containers = append(containers, probe.NewDefaultContainer(port, proto, false, ""))
		}
	}
	for i, ns := range Namespaces {
		res.Namespaces[ns] = map[string]string{"ns": ns, "kubernetes.io/metadata.name": ns}
		for j, pod := range Pods {
			res.Pods = append(res.Pods, probe.NewPod(ns, pod, map[string]string{"pod": pod}, fmt.Sprintf("10.0.%d.%d", i, j+1), containers))
		}
	}
	return res
}

func findCheck(t *testing.T, checks []*check, from, to string, port int, proto corev1.Protocol) *check {
	t.Helper()
	for _, c := range checks {
		if c.job.FromKey == from && c.job.ToKey == to && c.job.ResolvedPort == port && c.job.Protocol == proto {
			return c
		}
	}
	t.Fatalf("no probe %s -> %s %d/%s", from, to, port, proto)
	return nil
}

// The oracle wiring: every pair of the 9 pods on the 4 served ports is probed, verdicts come
// from cyclonus's matcher, and a pod reaching itself is expected allowed whatever the oracle.
func TestExpectationsFollowTheOracle(t *testing.T) {
	egressDenyXA := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny", Namespace: "x"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		},
	}
	checks, unprobed, loopback := expectations(shapeModel(), []*networkingv1.NetworkPolicy{egressDenyXA}, generator.ProbeAllAvailable)
	if len(checks) != 9*9*4 || unprobed != 0 {
		t.Errorf("%d probes, %d unprobed: want 324 and 0", len(checks), unprobed)
	}
	if loopback != 4 {
		t.Errorf("loopback overrides %d, want 4 (x/a to itself on each port)", loopback)
	}
	for _, tc := range []struct {
		from, to string
		port     int
		proto    corev1.Protocol
		want     Verdict
	}{
		{"x/a", "y/b", 80, corev1.ProtocolTCP, Blocked},
		{"x/a", "x/b", 81, corev1.ProtocolUDP, Blocked},
		{"x/a", "x/a", 80, corev1.ProtocolTCP, Allowed},
		{"y/b", "x/a", 80, corev1.ProtocolTCP, Allowed},
		{"x/b", "z/c", 81, corev1.ProtocolUDP, Allowed},
	} {
		if got := findCheck(t, checks, tc.from, tc.to, tc.port, tc.proto).want; got != tc.want {
			t.Errorf("%s -> %s %d/%s: expected %s, want %s", tc.from, tc.to, tc.port, tc.proto, got, tc.want)
		}
	}

	// A named port resolves on the destination pod; a probe to a port no pod has is listed by
	// cyclonus but not run.
	udp := corev1.ProtocolUDP
	named := intstr.FromString("serve-81-udp")
	ingressNamed := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "named", Namespace: "x"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &named}}}},
		},
	}
	checks, _, _ = expectations(shapeModel(), []*networkingv1.NetworkPolicy{ingressNamed}, generator.ProbeAllAvailable)
	if got := findCheck(t, checks, "x/c", "x/b", 81, udp).want; got != Allowed {
		t.Errorf("x/c -> x/b 81/UDP under an ingress rule for serve-81-udp: %s, want allowed", got)
	}
	if got := findCheck(t, checks, "y/a", "x/b", 80, udp).want; got != Blocked {
		t.Errorf("y/a -> x/b 80/UDP under an ingress rule for serve-81-udp: %s, want blocked", got)
	}
	sctp := generator.NewProbeConfig(intstr.FromString("serve-80-sctp"), corev1.ProtocolSCTP, generator.ProbeModePodIP)
	if checks, unprobed, _ := expectations(shapeModel(), nil, sctp); len(checks) != 0 || unprobed != 81 {
		t.Errorf("probing serve-80-sctp: %d probes, %d unprobed; want 0 and 81", len(checks), unprobed)
	}
}

// cyclonus's pinned generator still has the cases the CI subset names (a guard against a
// version change moving them), and every case's expectations can be computed.
func TestCIcasesExistAndTheOracleAnswersEveryCase(t *testing.T) {
	res := shapeModel()
	zc, _ := res.GetPod("z", "c")
	all := generator.NewTestCaseGenerator(false, zc.IP, Namespaces, nil, nil).GenerateTestCases()
	if len(all) != 230 {
		t.Errorf("cyclonus v0.5.6 generates %d cases, want 230", len(all))
	}
	for i, want := range ciCases {
		if i >= len(all) || all[i].Description != want {
			t.Errorf("cyclonus case %d is not %q", i, want)
		}
	}
	for _, tc := range all {
		var policies []*networkingv1.NetworkPolicy
		for _, step := range tc.Steps {
			for _, a := range step.Actions {
				if a.CreatePolicy != nil {
					policies = append(policies, a.CreatePolicy.Policy)
				}
			}
			if checks, unprobed, _ := expectations(res, policies, step.Probe); len(checks)+unprobed == 0 {
				t.Errorf("case %q: a step with no probe", tc.Description)
			}
		}
	}
}
