package datapath

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// String renders the state one entry a line, sorted, with identities written as their labels
// instead of their numbers: two states computed from the same inputs print the same whatever
// order the inputs came in, which is what replay and golden tests compare.
func (s *PolicyState) String() string {
	var b strings.Builder
	label := func(id Identity) string { return s.Identities[id].String() }

	ids := make([]string, 0, len(s.Identities))
	for id := range s.Identities {
		ids = append(ids, label(id))
	}
	slices.Sort(ids)
	b.WriteString("identities:\n")
	for _, l := range ids {
		b.WriteString("  " + l + "\n")
	}

	b.WriteString("endpoints:\n")
	for _, a := range sortedAddrs(s.Endpoints) {
		e := s.Endpoints[a]
		fmt.Fprintf(&b, "  %s %s node=%s %s\n", a, e.Pod, e.Node, label(e.Identity))
	}
	if len(s.NodeAddresses) > 0 {
		b.WriteString("node addresses:\n")
		for _, a := range sortedAddrs(s.NodeAddresses) {
			fmt.Fprintf(&b, "  %s %s\n", a, s.NodeAddresses[a])
		}
	}

	b.WriteString("identity sets:\n")
	for _, name := range slices.Sorted(maps.Keys(s.IdentitySets)) {
		set := s.IdentitySets[name]
		members := make([]string, len(set.Members))
		for i, id := range set.Members {
			members[i] = label(id)
		}
		slices.Sort(members)
		fmt.Fprintf(&b, "  %s %q: %s\n", name, set.Selector, strings.Join(members, " "))
	}
	if len(s.CIDRSets) > 0 {
		b.WriteString("cidr sets:\n")
		for _, name := range slices.Sorted(maps.Keys(s.CIDRSets)) {
			set := s.CIDRSets[name]
			pfx := make([]string, len(set.Prefixes))
			for i, p := range set.Prefixes {
				pfx[i] = p.String()
			}
			fmt.Fprintf(&b, "  %s %q: %s\n", name, set.Source, strings.Join(pfx, " "))
		}
	}
	if len(s.NamedPorts) > 0 {
		b.WriteString("named ports:\n")
		for _, name := range slices.Sorted(maps.Keys(s.NamedPorts)) {
			var es []string
			for _, e := range s.NamedPorts[name] {
				es = append(es, fmt.Sprintf("%s:%s/%d", e.Addr, e.Protocol, e.Port))
			}
			fmt.Fprintf(&b, "  %s: %s\n", name, strings.Join(es, " "))
		}
	}
	s.Ingress.format(&b, Ingress)
	s.Egress.format(&b, Egress)
	return b.String()
}

func (d *DirectionPolicy) format(b *strings.Builder, dir Direction) {
	fmt.Fprintf(b, "%s:\n", dir)
	for _, r := range d.Admin {
		b.WriteString("  " + r.String() + "\n")
	}
	fmt.Fprintf(b, "  isolated %s:", d.Isolated)
	for _, iso := range d.Isolation {
		fmt.Fprintf(b, " %s(%s)", iso.Policy, iso.Subject)
	}
	b.WriteByte('\n')
	for _, r := range d.NetworkPolicy {
		b.WriteString("  " + r.String() + "\n")
	}
	for _, r := range d.Baseline {
		b.WriteString("  " + r.String() + "\n")
	}
}

func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(r.ID())
	if r.Tier != TierNetworkPolicy {
		fmt.Fprintf(&b, " prio=%d", r.Priority)
	}
	if r.Name != "" {
		fmt.Fprintf(&b, " name=%q", r.Name)
	}
	fmt.Fprintf(&b, " %s subject=%s", r.Action, r.Subject)
	if r.AnyPeer {
		b.WriteString(" peers=any")
	} else {
		peers := make([]string, len(r.Peers))
		for i, p := range r.Peers {
			peers[i] = string(p.Identities) + string(p.CIDRs)
		}
		b.WriteString(" peers=[" + strings.Join(peers, " ") + "]")
	}
	if r.AnyPort {
		b.WriteString(" ports=any")
	} else {
		ports := make([]string, len(r.Ports))
		for i, p := range r.Ports {
			ports[i] = p.String()
		}
		b.WriteString(" ports=[" + strings.Join(ports, " ") + "]")
	}
	if r.Note != "" {
		fmt.Fprintf(&b, " note=%q", r.Note)
	}
	return b.String()
}

func (p PortMatch) String() string {
	switch {
	case p.NamedPort != "":
		return fmt.Sprintf("%s/%s", p.NamedPort, p.Protocol)
	case p.FirstPort == 0 && p.LastPort == 65535:
		return "*/" + p.Protocol.String()
	case p.FirstPort == p.LastPort:
		return fmt.Sprintf("%d/%s", p.FirstPort, p.Protocol)
	}
	return fmt.Sprintf("%d-%d/%s", p.FirstPort, p.LastPort, p.Protocol)
}

// String writes an identity as namespace[namespace labels]{pod labels}, sorted.
func (l IdentityLabels) String() string {
	s := l.Namespace
	if len(l.NamespaceLabels) > 0 {
		s += "[" + joinLabels(l.NamespaceLabels) + "]"
	}
	return s + "{" + joinLabels(l.PodLabels) + "}"
}

func joinLabels(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	return slices.SortedFunc(maps.Keys(m), netip.Addr.Compare)
}
