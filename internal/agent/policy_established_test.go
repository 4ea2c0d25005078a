package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/twill-net/twill/internal/datapath"
)

func stateWith(ids map[string]datapath.Identity, node map[string]string, ruleSet string) *datapath.PolicyState {
	s := &datapath.PolicyState{Endpoints: map[netip.Addr]datapath.EndpointEntry{}}
	for a, id := range ids {
		s.Endpoints[netip.MustParseAddr(a)] = datapath.EndpointEntry{Identity: id, Node: node[a]}
	}
	if ruleSet != "" {
		s.CIDRSets = map[datapath.SetName]datapath.CIDRSet{datapath.SetName(ruleSet): {}}
	}
	return s
}

func sortedStrings(addrs []netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return out
}

// The addresses whose connections a reset cuts: none for the first state, every local pod
// when the rules change, only relabelled pods when identities change.
func TestConntrackResetterPicksAffectedAddresses(t *testing.T) {
	nodes := map[string]string{"10.0.0.1": "n1", "10.0.0.2": "n1", "10.0.1.1": "n2"}
	r := &conntrackResetter{nodeName: "n1"}
	base := map[string]datapath.Identity{"10.0.0.1": 1, "10.0.0.2": 2, "10.0.1.1": 1}

	if got := r.affected(stateWith(base, nodes, "")); len(got) != 0 {
		t.Fatalf("first state: want nothing reset, got %v", got)
	}
	if got := r.affected(stateWith(base, nodes, "")); len(got) != 0 {
		t.Fatalf("same state again: want nothing reset, got %v", got)
	}
	got := sortedStrings(r.affected(stateWith(base, nodes, "c-new")))
	if want := []string{"10.0.0.1", "10.0.0.2"}; !slices.Equal(got, want) {
		t.Fatalf("rules changed: want the local pods %v, got %v", want, got)
	}
	relabelled := map[string]datapath.Identity{"10.0.0.1": 1, "10.0.0.2": 2, "10.0.1.1": 3}
	got = sortedStrings(r.affected(stateWith(relabelled, nodes, "c-new")))
	if want := []string{"10.0.1.1"}; !slices.Equal(got, want) {
		t.Fatalf("a remote pod relabelled: want only it %v, got %v", want, got)
	}
}

func TestPolicyEstablishedValidated(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeName = "n1"
	if err := cfg.validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	cfg.PolicyEstablished = "drop"
	if err := cfg.validate(); err == nil {
		t.Fatal(`policy-established "drop" was accepted`)
	}
}
