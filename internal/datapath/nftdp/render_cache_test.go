package nftdp

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/policy"
)

// TestCachedRenderEqualsFreshRender replays changes of every kind (labels that make new
// identities, pods coming and going, named ports, policies added, edited and deleted) and,
// after each, checks that the reconciler that kept its render cache through all of them
// leaves the same table as a new reconciler rendering the state from nothing.
func TestCachedRenderEqualsFreshRender(t *testing.T) {
	c := newWorld()
	cachedFake, cached := applied(t, c)
	web := func(name, ip string, port uint16, lbl ...string) policy.Endpoint {
		return policy.Endpoint{Namespace: "x", Name: name, Labels: labels(lbl...), Node: "n1", IPs: addrs(ip),
			Ports: []policy.ContainerPort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: port}}}
	}
	steps := []struct {
		what   string
		change func()
	}{
		{"local pod with a new identity", func() { upsert(c, web("a2", "10.0.1.5", 8080, "app", "web", "track", "canary")) }},
		{"policy selecting the new label", func() {
			upsert(c, netpol("x", "canary", sel("app", "web"), func(s *networkingv1.NetworkPolicySpec) {
				s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: sel("track", "canary")}},
					Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, intstr.FromInt32(9000))}}}
			}))
		}},
		{"remote client joins the canary selector", func() {
			upsert(c, policy.Endpoint{Namespace: "x", Name: "r1", Labels: labels("track", "canary"), Node: "n2", IPs: addrs("10.0.2.20")})
		}},
		{"named port moves", func() { upsert(c, web("a2", "10.0.1.5", 8081, "app", "web", "track", "canary")) }},
		{"label flips back", func() { upsert(c, web("a2", "10.0.1.5", 8081, "app", "web")) }},
		{"remote pod leaves", func() { c.DeleteEndpoint("x", "r1") }},
		{"policy edited", func() {
			upsert(c, netpol("x", "canary", sel("app", "web"), func(s *networkingv1.NetworkPolicySpec) {
				s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("env", "dev")}}}}
			}))
		}},
		{"namespace relabelled", func() { upsert(c, policy.Namespace{Name: "y", Labels: labels("env", "prod")}) }},
		{"policy deleted", func() { c.DeleteNetworkPolicy("x", "canary") }},
		{"local pod leaves", func() { c.DeleteEndpoint("x", "a2") }},
	}
	for i, step := range steps {
		step.change()
		s := state(c)
		if err := cached.ApplyPolicy(context.Background(), s); err != nil {
			t.Fatalf("step %d (%s): %v", i, step.what, err)
		}
		freshFake := knftables.NewFake(TableFamily, TableName)
		if err := New(freshFake, "n1", nil).ApplyPolicy(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		// The fake dumps elements in the order they came, so the tables are compared as
		// sets of lines.
		if d := diffLines(cachedFake.Dump(), freshFake.Dump()); d != "" {
			t.Fatalf("step %d (%s): the cached rendering differs from a fresh one:\n%s", i, step.what, d)
		}
	}
	if st := cached.Stats(); st.Rebuilds != 1 || st.Failures != 0 {
		t.Errorf("stats %+v: want one rebuild (the first apply) and updates after", st)
	}
}

// diffLines lists the lines only one of two dumps has.
func diffLines(got, want string) string {
	count := map[string]int{}
	for _, l := range splitLines(want) {
		count[l]++
	}
	for _, l := range splitLines(got) {
		count[l]--
	}
	out := ""
	for l, n := range count {
		switch {
		case n > 0:
			out += fmt.Sprintf("missing: %s\n", l)
		case n < 0:
			out += fmt.Sprintf("extra:   %s\n", l)
		}
	}
	return out
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range len(s) {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
