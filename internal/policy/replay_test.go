package policy

import (
	"math/rand/v2"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// event is one update given to the calculator.
type event struct {
	name  string
	apply func(*Calculator)
}

// replayScenario returns chains of events: the events of a chain keep their order, chains
// interleave freely. Whatever the interleaving, the final inputs are the same.
func replayScenario() [][]event {
	var chains [][]event
	single := func(name string, f func(*Calculator)) { chains = append(chains, []event{{name, f}}) }

	for _, ns := range worldNamespaces() {
		if ns.Name == "y" {
			continue // in a chain below
		}
		single("namespace "+ns.Name, func(c *Calculator) { c.UpsertNamespace(ns) })
	}
	chains = append(chains, []event{
		{"namespace y as prod", func(c *Calculator) {
			c.UpsertNamespace(Namespace{Name: "y", Labels: map[string]string{"env": "prod"}})
		}},
		{"namespace y as dev", func(c *Calculator) { c.UpsertNamespace(worldNamespaces()[1]) }},
	})
	for _, n := range worldNodes() {
		single("node "+n.Name, func(c *Calculator) { c.UpsertNode(n) })
	}
	for _, e := range worldEndpoints() {
		if e.Namespace == "x" && e.Name == "b" {
			relabelled := e
			relabelled.Labels = map[string]string{"pod": "zz", "tier": "fe"}
			chains = append(chains, []event{
				{"x/b relabelled", func(c *Calculator) { c.UpsertEndpoint(relabelled) }},
				{"x/b", func(c *Calculator) { c.UpsertEndpoint(e) }},
			})
			continue
		}
		single("pod "+e.Namespace+"/"+e.Name, func(c *Calculator) { c.UpsertEndpoint(e) })
	}
	// A pod deleted late still claims z/a's address: the same one must win in every order.
	single("stale pod", func(c *Calculator) {
		c.UpsertEndpoint(Endpoint{Namespace: "z", Name: "old", Labels: map[string]string{"pod": "old"}, IPs: addrs("10.0.3.1")})
	})
	chains = append(chains, []event{
		{"delete unknown pod", func(c *Calculator) { c.DeleteEndpoint("z", "temp") }},
		{"temp pod", func(c *Calculator) {
			c.UpsertEndpoint(Endpoint{Namespace: "z", Name: "temp", Labels: map[string]string{"pod": "temp"}, IPs: addrs("10.0.3.77")})
		}},
		{"delete temp pod", func(c *Calculator) { c.DeleteEndpoint("z", "temp") }},
	})

	policies := []any{
		netpol("x", "a-from-dev", sel("pod", "a"), ingressFrom(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel("env", "dev")})),
		netpol("x", "egress-cidr", sel("pod", "c"), func(s *networkingv1.NetworkPolicySpec) {
			s.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.0.2.0/24"}}}}}}
		}),
		cnp("admin-deny-z", v1alpha2.AdminTier, 10, subjectNamespaces(nsName("x")),
			ingressRules(fromNamespaces(deny, nsName("z")))),
		cnp("baseline-deny", v1alpha2.BaselineTier, 50, subjectNamespaces(sel()),
			ingressRules(fromNamespaces(deny, sel()))),
	}
	for _, p := range policies {
		single("policy", func(c *Calculator) { upsertPolicy(c, p) })
	}
	chains = append(chains, []event{
		{"policy y/web v1", func(c *Calculator) { c.UpsertNetworkPolicy(netpol("y", "web", sel("tier", "fe"), nil)) }},
		{"policy y/web v2", func(c *Calculator) {
			c.UpsertNetworkPolicy(netpol("y", "web", sel("pod", "b"), ingressFrom(networkingv1.NetworkPolicyPeer{PodSelector: sel("pod", "a")})))
		}},
	}, []event{
		{"temp policy reading a new key", func(c *Calculator) {
			c.UpsertNetworkPolicy(netpol("z", "temp", sel("team", "red"), nil))
		}},
		{"delete temp policy", func(c *Calculator) { c.DeleteNetworkPolicy("z", "temp") }},
	}, []event{
		{"temp cluster policy", func(c *Calculator) {
			c.UpsertClusterNetworkPolicy(cnp("temp", v1alpha2.AdminTier, 1, subjectNamespaces(sel()),
				ingressRules(fromNamespaces(accept, sel()))))
		}},
		{"delete temp cluster policy", func(c *Calculator) { c.DeleteClusterNetworkPolicy("temp") }},
	})
	return chains
}

// interleave merges chains in a random order that keeps each chain's own order.
func interleave(chains [][]event, r *rand.Rand) []event {
	next := make([]int, len(chains))
	var out []event
	for {
		var open []int
		for i, ch := range chains {
			if next[i] < len(ch) {
				open = append(open, i)
			}
		}
		if len(open) == 0 {
			return out
		}
		i := open[r.IntN(len(open))]
		out = append(out, chains[i][next[i]])
		next[i]++
	}
}

func TestReplayInAnyOrderGivesTheSameState(t *testing.T) {
	chains := replayScenario()
	reference := NewCalculator()
	for _, ch := range chains {
		for _, e := range ch {
			e.apply(reference)
		}
	}
	refState := reference.State()
	want := refState.String()
	wantAudit := reference.Audit()

	for seed := range uint64(60) {
		c := NewCalculator()
		order := interleave(chains, rand.New(rand.NewPCG(seed, seed^0x5eed)))
		for _, e := range order {
			e.apply(c)
		}
		s := c.State()
		if got := s.String(); got != want {
			names := make([]string, len(order))
			for i, e := range order {
				names[i] = e.name
			}
			t.Fatalf("seed %d: state differs from the in-order replay\norder: %q\ngot:\n%s\nwant:\n%s", seed, names, got, want)
		}
		if len(s.Identities) != len(refState.Identities) {
			t.Fatalf("seed %d: %d identities, want %d", seed, len(s.Identities), len(refState.Identities))
		}
		if got := c.Audit(); !auditEqual(got, wantAudit) {
			t.Fatalf("seed %d: audit differs:\n%+v\nwant\n%+v", seed, got, wantAudit)
		}
	}
}
