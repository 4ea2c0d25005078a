package datapath

import (
	"net/netip"
	"strings"
	"testing"
)

// A hand-built state, so the evaluator is checked without the calculator: pod a (identity
// 300) is isolated for ingress and allows web (named port) from b (identity 301); an admin rule
// denies ICMP-and-everything from the CIDR 192.0.2.0/24 to a, after an admin Pass for b.
func handState() *PolicyState {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	ref := PolicyRef{Namespace: "x", Name: "p"}
	return &PolicyState{
		Identities: map[Identity]IdentityLabels{300: {Namespace: "x", PodLabels: map[string]string{"app": "a"}},
			301: {Namespace: "x", PodLabels: map[string]string{"app": "b"}}},
		Endpoints:     map[netip.Addr]EndpointEntry{a: {Pod: PodRef{"x", "a"}, Node: "n1", Identity: 300}, b: {Pod: PodRef{"x", "b"}, Node: "n2", Identity: 301}},
		NodeAddresses: map[netip.Addr]string{netip.MustParseAddr("172.31.0.1"): "n1"},
		IdentitySets: map[SetName]IdentitySet{"A": {Members: []Identity{300}}, "B": {Members: []Identity{301}},
			"iso": {Members: []Identity{300}}},
		CIDRSets:   map[SetName]CIDRSet{"C": {Prefixes: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}},
		NamedPorts: map[string][]NamedPortEntry{"web": {{Addr: a, Protocol: ProtocolTCP, Port: 8080}}},
		Ingress: DirectionPolicy{
			Admin: []Rule{
				{Attribution: Attribution{Tier: TierAdmin, Policy: PolicyRef{Name: "pass-b"}, Action: ActionPass}, Subject: "A",
					Peers: []Peer{{Identities: "B"}}, AnyPort: true},
				{Attribution: Attribution{Tier: TierAdmin, Policy: PolicyRef{Name: "deny-c"}, Action: ActionDeny}, Subject: "A",
					Peers: []Peer{{CIDRs: "C"}}, AnyPort: true},
			},
			Isolated:  "iso",
			Isolation: []IsolationEntry{{Policy: ref, Subject: "A"}},
			NetworkPolicy: []Rule{{Attribution: Attribution{Tier: TierNetworkPolicy, Policy: ref, Action: ActionAccept}, Subject: "A",
				Peers: []Peer{{Identities: "B"}}, Ports: []PortMatch{{Protocol: ProtocolTCP, NamedPort: "web"}}}},
		},
	}
}

func TestPolicyEvaluator(t *testing.T) {
	ev := NewPolicyEvaluator(handState())
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for _, tc := range []struct {
		p    Packet
		want bool
		by   string
	}{
		{Packet{Src: b, Dst: a, Protocol: ProtocolTCP, Port: 8080}, true, "networkpolicy x/p"},
		{Packet{Src: b, Dst: a, Protocol: ProtocolTCP, Port: 80}, false, "default deny"},
		{Packet{Src: b, Dst: a, Protocol: ProtocolUDP, Port: 8080}, false, "default deny"},
		{Packet{Src: netip.MustParseAddr("192.0.2.9"), Dst: a, Protocol: 1}, false, "admin deny-c"},
		{Packet{Src: netip.MustParseAddr("172.31.0.1"), Dst: a, Protocol: ProtocolTCP, Port: 10250}, true, "own node"},
		{Packet{Src: a, Dst: b, Protocol: ProtocolTCP, Port: 80}, true, "allowed by default"},
	} {
		v := ev.Evaluate(tc.p)
		var text []string
		for _, d := range v.Decisions {
			text = append(text, d.String())
		}
		joined := strings.Join(text, "; ")
		if v.Allowed != tc.want || !strings.Contains(joined, tc.by) {
			t.Errorf("%s: allowed=%v (%s), want %v by %q", tc.p, v.Allowed, joined, tc.want, tc.by)
		}
	}
}
