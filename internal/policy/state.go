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
		s.IdentitySets[name] = datapath.IdentitySet{Selector: st.describe(), Members: st.sortedMembers()}
	}
	c.fillRules(&s)
	return s
}

// fillEndpoints copies the address map and named ports, which the calculator keeps up to
// date as endpoints change (addressIndex).
func (c *Calculator) fillEndpoints(s *datapath.PolicyState) {
	s.Endpoints = maps.Clone(c.addrs.entries)
	if s.Endpoints == nil {
		s.Endpoints = map[netip.Addr]datapath.EndpointEntry{}
	}
	for name, l := range c.addrs.ports {
		s.NamedPorts[name] = slices.Clone(l.sorted)
	}
}

// sortedTiers is every policy's rules gathered into the tiers, in evaluation order. It
// depends on the policies alone, so the calculator keeps it until a policy changes: a pod or
// label change does not sort thousands of rules again.
type sortedTiers struct {
	rules     map[datapath.Direction]*datapath.DirectionPolicy
	isolating map[datapath.Direction][]*compiledPolicy
	withSets  []*compiledPolicy // the policies with CIDR or node sets
}

func (c *Calculator) sortedTiers() *sortedTiers {
	if c.tiers != nil {
		return c.tiers
	}
	t := &sortedTiers{rules: map[datapath.Direction]*datapath.DirectionPolicy{datapath.Ingress: {}, datapath.Egress: {}},
		isolating: map[datapath.Direction][]*compiledPolicy{}}
	for _, p := range c.policies {
		if len(p.cidrSets) > 0 || len(p.nodeSets) > 0 {
			t.withSets = append(t.withSets, p)
		}
		for _, dir := range []datapath.Direction{datapath.Ingress, datapath.Egress} {
			dp := t.rules[dir]
			switch p.tier {
			case datapath.TierAdmin:
				dp.Admin = append(dp.Admin, p.rules[dir]...)
			case datapath.TierBaseline:
				dp.Baseline = append(dp.Baseline, p.rules[dir]...)
			case datapath.TierNetworkPolicy:
				dp.NetworkPolicy = append(dp.NetworkPolicy, p.rules[dir]...)
				if p.isolates[dir] {
					dp.Isolation = append(dp.Isolation, datapath.IsolationEntry{Policy: p.ref, Subject: p.subject})
					t.isolating[dir] = append(t.isolating[dir], p)
				}
			}
		}
	}
	for _, dp := range t.rules {
		slices.SortFunc(dp.Admin, compareRules)
		slices.SortFunc(dp.NetworkPolicy, compareRules)
		slices.SortFunc(dp.Baseline, compareRules)
		slices.SortFunc(dp.Isolation, func(a, b datapath.IsolationEntry) int { return comparePolicyRefs(a.Policy, b.Policy) })
	}
	c.tiers = t
	return t
}

// fillRules copies the tiers into the state with the sets they name.
func (c *Calculator) fillRules(s *datapath.PolicyState) {
	t := c.sortedTiers()
	for _, p := range t.withSets {
		for name, set := range p.cidrSets {
			s.CIDRSets[name] = datapath.CIDRSet{Source: set.Source, Prefixes: slices.Clone(set.Prefixes)}
		}
		for name, ns := range p.nodeSets {
			s.CIDRSets[name] = c.nodeSet(ns)
		}
	}
	for dir, name := range map[datapath.Direction]datapath.SetName{datapath.Ingress: IsolatedIngressSet, datapath.Egress: IsolatedEgressSet} {
		dp, src := s.Rules(dir), t.rules[dir]
		dp.Admin, dp.NetworkPolicy, dp.Baseline = cloneRules(src.Admin), cloneRules(src.NetworkPolicy), cloneRules(src.Baseline)
		dp.Isolation = slices.Clone(src.Isolation)
		dp.Isolated = name
		isolated := map[datapath.Identity]bool{}
		for _, p := range t.isolating[dir] {
			maps.Copy(isolated, c.selectors[p.subject].members)
		}
		s.IdentitySets[name] = datapath.IdentitySet{Selector: "pods a NetworkPolicy isolates for " + string(dir),
			Members: sortedIdentities(isolated)}
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
