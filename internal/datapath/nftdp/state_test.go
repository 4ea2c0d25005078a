package nftdp

import (
	"net/netip"

	"github.com/twill-net/twill/internal/datapath"
)

// goldenState is a small hand-made state that uses every kind of rule: on node n1, pod x/a
// (dual-stack) serves its "web" port on 8080 and is isolated for ingress; x/b is isolated for
// egress; y/c lives on node n2. An admin policy passes x/b's traffic and denies SSH from y/c;
// x/a allows web from x/b and from an ipBlock with an except, and a port range from y/c; x/b
// may reach web on x/a (an egress named port) and DNS anywhere; a baseline policy denies the
// rest of x's egress to the outside.
func goldenState() *datapath.PolicyState {
	a4, a6 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")
	b4, c4 := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.1.3")
	xa := datapath.PolicyRef{Namespace: "x", Name: "allow-web"}
	xb := datapath.PolicyRef{Namespace: "x", Name: "b-egress"}
	np := func(ref datapath.PolicyRef, d datapath.Direction, i int) datapath.Attribution {
		return datapath.Attribution{Tier: datapath.TierNetworkPolicy, Policy: ref, Direction: d, Index: i, Action: datapath.ActionAccept}
	}
	cluster := func(tier datapath.Tier, name string, d datapath.Direction, i int, act datapath.Action) datapath.Attribution {
		return datapath.Attribution{Tier: tier, Policy: datapath.PolicyRef{Name: name}, Direction: d, Index: i, Action: act}
	}
	tcp := func(first, last uint16) datapath.PortMatch {
		return datapath.PortMatch{Protocol: datapath.ProtocolTCP, FirstPort: first, LastPort: last}
	}
	return &datapath.PolicyState{
		Identities: map[datapath.Identity]datapath.IdentityLabels{
			300: {Namespace: "x", PodLabels: map[string]string{"app": "a"}},
			301: {Namespace: "x", PodLabels: map[string]string{"app": "b"}},
			302: {Namespace: "y", PodLabels: map[string]string{"app": "c"}},
		},
		Endpoints: map[netip.Addr]datapath.EndpointEntry{
			a4: {Pod: datapath.PodRef{Namespace: "x", Name: "a"}, Node: "n1", Identity: 300},
			a6: {Pod: datapath.PodRef{Namespace: "x", Name: "a"}, Node: "n1", Identity: 300},
			b4: {Pod: datapath.PodRef{Namespace: "x", Name: "b"}, Node: "n1", Identity: 301},
			c4: {Pod: datapath.PodRef{Namespace: "y", Name: "c"}, Node: "n2", Identity: 302},
		},
		NodeAddresses: map[netip.Addr]string{
			netip.MustParseAddr("172.31.0.1"): "n1", netip.MustParseAddr("fd00:31::1"): "n1",
			netip.MustParseAddr("172.31.0.2"): "n2",
		},
		IdentitySets: map[datapath.SetName]datapath.IdentitySet{
			"id-a":             {Selector: "pods app=a in namespace x", Members: []datapath.Identity{300}},
			"id-b":             {Selector: "pods app=b in namespace x", Members: []datapath.Identity{301}},
			"id-c":             {Selector: "pods app=c in namespace y", Members: []datapath.Identity{302}},
			"id-x":             {Selector: "all pods in namespace x", Members: []datapath.Identity{300, 301}},
			"isolated-ingress": {Members: []datapath.Identity{300}},
			"isolated-egress":  {Members: []datapath.Identity{301}},
		},
		CIDRSets: map[datapath.SetName]datapath.CIDRSet{
			"ci-ext": {Source: "192.0.2.0/24 except 192.0.2.128/25", Prefixes: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/25")}},
			"ci-all": {Source: "0.0.0.0/0 ::/0", Prefixes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}},
		},
		NamedPorts: map[string][]datapath.NamedPortEntry{
			"web": {{Addr: a4, Protocol: datapath.ProtocolTCP, Port: 8080}, {Addr: a6, Protocol: datapath.ProtocolTCP, Port: 8080},
				{Addr: c4, Protocol: datapath.ProtocolTCP, Port: 80}},
		},
		Ingress: datapath.DirectionPolicy{
			Admin: []datapath.Rule{
				{Attribution: cluster(datapath.TierAdmin, "pass-b", datapath.Ingress, 0, datapath.ActionPass), Priority: 10,
					Subject: "id-x", Peers: []datapath.Peer{{Identities: "id-b"}}, AnyPort: true},
				{Attribution: cluster(datapath.TierAdmin, "no-ssh", datapath.Ingress, 0, datapath.ActionDeny), Priority: 20,
					Subject: "id-x", Peers: []datapath.Peer{{Identities: "id-c"}}, Ports: []datapath.PortMatch{tcp(22, 22)}},
			},
			Isolated:  "isolated-ingress",
			Isolation: []datapath.IsolationEntry{{Policy: xa, Subject: "id-a"}},
			NetworkPolicy: []datapath.Rule{
				{Attribution: np(xa, datapath.Ingress, 0), Subject: "id-a",
					Peers: []datapath.Peer{{Identities: "id-b"}, {CIDRs: "ci-ext"}},
					Ports: []datapath.PortMatch{{Protocol: datapath.ProtocolTCP, NamedPort: "web"}}},
				{Attribution: np(xa, datapath.Ingress, 1), Subject: "id-a",
					Peers: []datapath.Peer{{Identities: "id-c"}},
					Ports: []datapath.PortMatch{tcp(80, 90), tcp(85, 100), {Protocol: datapath.ProtocolUDP, FirstPort: 53, LastPort: 53}}},
			},
		},
		Egress: datapath.DirectionPolicy{
			Isolated:  "isolated-egress",
			Isolation: []datapath.IsolationEntry{{Policy: xb, Subject: "id-b"}},
			NetworkPolicy: []datapath.Rule{
				{Attribution: np(xb, datapath.Egress, 0), Subject: "id-b", Peers: []datapath.Peer{{Identities: "id-a"}},
					Ports: []datapath.PortMatch{{Protocol: datapath.ProtocolTCP, NamedPort: "web"}}},
				{Attribution: np(xb, datapath.Egress, 1), Subject: "id-b", AnyPeer: true,
					Ports: []datapath.PortMatch{{Protocol: datapath.ProtocolUDP, FirstPort: 53, LastPort: 53}}},
			},
			Baseline: []datapath.Rule{
				{Attribution: cluster(datapath.TierBaseline, "x-outside", datapath.Egress, 0, datapath.ActionDeny), Priority: 100,
					Subject: "id-x", Peers: []datapath.Peer{{CIDRs: "ci-all"}}, AnyPort: true},
			},
		},
	}
}
