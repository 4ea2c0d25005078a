package datapath

import (
	"maps"
	"slices"
)

// Clone returns a deep copy of s: nothing in the copy is shared with s.
func (s *PolicyState) Clone() *PolicyState {
	if s == nil {
		return nil
	}
	c := &PolicyState{
		Identities:    make(map[Identity]IdentityLabels, len(s.Identities)),
		Endpoints:     maps.Clone(s.Endpoints),
		NodeAddresses: maps.Clone(s.NodeAddresses),
		IdentitySets:  make(map[SetName]IdentitySet, len(s.IdentitySets)),
		CIDRSets:      make(map[SetName]CIDRSet, len(s.CIDRSets)),
		NamedPorts:    make(map[string][]NamedPortEntry, len(s.NamedPorts)),
		Ingress:       s.Ingress.clone(),
		Egress:        s.Egress.clone(),
	}
	for id, l := range s.Identities {
		c.Identities[id] = IdentityLabels{Namespace: l.Namespace,
			NamespaceLabels: maps.Clone(l.NamespaceLabels), PodLabels: maps.Clone(l.PodLabels)}
	}
	for name, set := range s.IdentitySets {
		c.IdentitySets[name] = IdentitySet{Selector: set.Selector, Members: slices.Clone(set.Members)}
	}
	for name, set := range s.CIDRSets {
		c.CIDRSets[name] = CIDRSet{Source: set.Source, Prefixes: slices.Clone(set.Prefixes)}
	}
	for name, entries := range s.NamedPorts {
		c.NamedPorts[name] = slices.Clone(entries)
	}
	return c
}

func (d DirectionPolicy) clone() DirectionPolicy {
	return DirectionPolicy{
		Admin:         cloneRuleList(d.Admin),
		NetworkPolicy: cloneRuleList(d.NetworkPolicy),
		Isolated:      d.Isolated,
		Isolation:     slices.Clone(d.Isolation),
		Baseline:      cloneRuleList(d.Baseline),
	}
}

func cloneRuleList(rules []Rule) []Rule {
	out := slices.Clone(rules)
	for i := range out {
		out[i].Peers = slices.Clone(out[i].Peers)
		out[i].Ports = slices.Clone(out[i].Ports)
	}
	return out
}
