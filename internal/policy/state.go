package policy

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/twill-net/twill/internal/datapath"
)

// Names of the synthetic sets holding every pod a NetworkPolicy isolates, per direction.
const (
	IsolatedIngressSet datapath.SetName = "isolated-ingress"
	IsolatedEgressSet  datapath.SetName = "isolated-egress"
)

// State returns the desired policy state for the current inputs. The result is the caller's
// own (nothing in it is shared with the calculator).
func (c *Calculator) State() datapath.PolicyState {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := datapath.PolicyState{
		Identities:    make(map[datapath.Identity]datapath.IdentityLabels, len(c.byID)),
		NodeAddresses: map[netip.Addr]string{},
		IdentitySets:  make(map[datapath.SetName]datapath.IdentitySet, len(c.selectors)+2),
		CIDRSets:      map[datapath.SetName]datapath.CIDRSet{},
		NamedPorts:    map[string][]datapath.NamedPortEntry{},
	}
	for id, ident := range c.byID {
		s.Identities[id] = datapath.IdentityLabels{Namespace: ident.labels.Namespace,
			NamespaceLabels: maps.Clone(ident.labels.NamespaceLabels), PodLabels: maps.Clone(ident.labels.PodLabels)}
	}
	c.fillEndpoints(&s)
	for name, n := range c.nodes {
		for _, a := range n.IPs {
			s.NodeAddresses[a] = name
		}
	}
	for name, st := range c.selectors {
		s.IdentitySets[name] = datapath.IdentitySet{Selector: st.sel.describe(), Members: sortedIdentities(st.members)}
	}
	c.fillRules(&s)
	return s
}

// fillEndpoints writes the address map and named ports. Should two pods claim one address (a
// pod deleted late), the first by namespace/name wins, so the result does not depend on order.
func (c *Calculator) fillEndpoints(s *datapath.PolicyState) {
	s.Endpoints = make(map[netip.Addr]datapath.EndpointEntry, len(c.endpoints))
	for ref, es := range c.endpoints {
		for _, a := range es.ep.IPs {
			if prev, taken := s.Endpoints[a]; taken && comparePodRefs(prev.Pod, ref) < 0 {
				continue
			}
			s.Endpoints[a] = datapath.EndpointEntry{Pod: ref, Node: es.ep.Node, Identity: es.identity.id}
		}
	}
	for ref, es := range c.endpoints {
		for _, p := range es.ep.Ports {
			for _, a := range es.ep.IPs {
				if s.Endpoints[a].Pod == ref {
					s.NamedPorts[p.Name] = append(s.NamedPorts[p.Name], datapath.NamedPortEntry{Addr: a, Protocol: p.Protocol, Port: p.Port})
				}
			}
		}
	}
	for name, entries := range s.NamedPorts {
		slices.SortFunc(entries, func(a, b datapath.NamedPortEntry) int {
			return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
		})
		s.NamedPorts[name] = slices.Compact(entries)
	}
}

// fillRules gathers every policy's rules and sets into the tiers, in evaluation order.
func (c *Calculator) fillRules(s *datapath.PolicyState) {
	isolated := map[datapath.Direction]map[datapath.Identity]bool{datapath.Ingress: {}, datapath.Egress: {}}
	for _, p := range c.policies {
		for name, set := range p.cidrSets {
			s.CIDRSets[name] = datapath.CIDRSet{Source: set.Source, Prefixes: slices.Clone(set.Prefixes)}
		}
		for name, ns := range p.nodeSets {
			s.CIDRSets[name] = c.nodeSet(ns)
		}
		for _, dir := range []datapath.Direction{datapath.Ingress, datapath.Egress} {
			dp := s.Rules(dir)
			rules := cloneRules(p.rules[dir])
			switch p.tier {
			case datapath.TierAdmin:
				dp.Admin = append(dp.Admin, rules...)
			case datapath.TierBaseline:
				dp.Baseline = append(dp.Baseline, rules...)
			case datapath.TierNetworkPolicy:
				dp.NetworkPolicy = append(dp.NetworkPolicy, rules...)
				if p.isolates[dir] {
					dp.Isolation = append(dp.Isolation, datapath.IsolationEntry{Policy: p.ref, Subject: p.subject})
					maps.Copy(isolated[dir], c.selectors[p.subject].members)
				}
			}
		}
	}
	for dir, name := range map[datapath.Direction]datapath.SetName{datapath.Ingress: IsolatedIngressSet, datapath.Egress: IsolatedEgressSet} {
		dp := s.Rules(dir)
		dp.Isolated = name
		s.IdentitySets[name] = datapath.IdentitySet{Selector: "pods a NetworkPolicy isolates for " + string(dir),
			Members: sortedIdentities(isolated[dir])}
		slices.SortFunc(dp.Admin, compareRules)
		slices.SortFunc(dp.NetworkPolicy, compareRules)
		slices.SortFunc(dp.Baseline, compareRules)
		slices.SortFunc(dp.Isolation, func(a, b datapath.IsolationEntry) int { return comparePolicyRefs(a.Policy, b.Policy) })
	}
}

// nodeSet is the addresses of the nodes a selector picks, each a single-address prefix.
func (c *Calculator) nodeSet(ns nodeSelector) datapath.CIDRSet {
	var prefixes []netip.Prefix
	for _, n := range c.nodes {
		if ns.sel.matches(n.Labels) {
			for _, a := range n.IPs {
				prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	return datapath.CIDRSet{Source: "nodes " + ns.sel.String(), Prefixes: normalizePrefixes(prefixes)}
}

// compareRules orders rules for first-match evaluation: by priority, then (for equal
// priorities, which the API leaves to the implementation) by policy name, then as written.
func compareRules(a, b datapath.Rule) int {
	return cmp.Or(cmp.Compare(a.Priority, b.Priority), comparePolicyRefs(a.Policy, b.Policy), cmp.Compare(a.Index, b.Index))
}

func comparePolicyRefs(a, b datapath.PolicyRef) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

func sortedIdentities(m map[datapath.Identity]bool) []datapath.Identity {
	return slices.Sorted(maps.Keys(m))
}

// cloneRules copies rules deeply: compiled policies are shared, the state is the caller's.
func cloneRules(rules []datapath.Rule) []datapath.Rule {
	out := slices.Clone(rules)
	for i := range out {
		out[i].Peers = slices.Clone(out[i].Peers)
		out[i].Ports = slices.Clone(out[i].Ports)
	}
	return out
}
