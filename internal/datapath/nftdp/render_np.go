package nftdp

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/twill-net/twill/internal/datapath"
)

// The NetworkPolicy tier has no order (its rules only allow), so it is flattened: for every
// local pod the tier isolates, what its rules allow is written as elements of five verdict
// maps, looked up by
//
//	idport  local address . peer identity . protocol . port        (one port)
//	idrange local address . peer identity . protocol  -> the identity's port ranges
//	id      local address . peer identity                          (rules for every port)
//	netport local address . peer address range . protocol . port range
//	net     local address . peer address range                     (rules for every port)
//
// each element pointing to the allow chain of the earliest rule that allows it, which counts
// and returns; idrange's elements point to a chain of the peer's port ranges (rangeChain),
// which goes on to the rest of the tier when no range holds the port. Five lookups (and a
// few range tests) decide the tier whatever the number of pods or policies. The pieces of
// one identity's ports are disjoint, so a packet matches at most one of them. Maps keyed by
// identity are hash maps, where the kernel adds and deletes an element at a cost that does
// not depend on the map's size; only the maps of address ranges are interval maps (pipapo),
// where each change costs time that grows with the whole map. Keying by
// the local pod's address rather than its identity keeps the local identity out of a
// register (the ct mark holds the peer's) and resolves named ports of ingress rules per pod.
//
// Egress rules with a named port cannot be flattened that way (the port depends on the
// destination pod, which the peer identity does not fix, and expanding it would cost local
// pods x cluster pods elements): each gets its own rule, with a set of (local address . peer)
// pairs and the cluster-wide set of the named port. Those rules depend on the policies only.
func (b *builder) networkPolicyTier(d datapath.Direction, f family, rules *datapath.DirectionPolicy) {
	c := b.m.chain(tierChain(d, f, datapath.TierNetworkPolicy))
	c.rule(newRule().addrIn(f, localField(d), b.subjectSet(rules.Isolated, f), true).goTo(tierChain(d, f, datapath.TierBaseline)))

	local, peer := fieldSaddr, fieldDaddr
	if d == datapath.Ingress {
		local, peer = fieldDaddr, fieldSaddr
	}
	c.rule(newRule().concat(f, []keyField{local, fieldCtMark, fieldL4proto, fieldDport}, npMap(d, f, "idport"), true, false))
	c.rule(newRule().concat(f, []keyField{local, fieldCtMark, fieldL4proto}, npMap(d, f, "idrange"), true, false))
	c.rule(newRule().goTo(npRestChain(d, f)))
	// The rest of the tier: port ranges of peer identities (rangeChain) come back here.
	c = b.m.chain(npRestChain(d, f))
	c.rule(newRule().concat(f, []keyField{local, fieldCtMark}, npMap(d, f, "id"), true, false))
	c.rule(newRule().concat(f, []keyField{local, peer, fieldL4proto, fieldDport}, npMap(d, f, "netport"), true, true))
	c.rule(newRule().concat(f, []keyField{local, peer}, npMap(d, f, "net"), true, true))

	allow := make([]string, len(rules.NetworkPolicy))
	for i, r := range rules.NetworkPolicy {
		n := b.cache.ruleNames(r.Attribution)
		allow[i] = "goto " + n.allow
		if b.m.chains[n.allow] == nil { // shared by both families
			b.m.chains[n.allow] = n.allowChain
			b.m.counters[n.counter] = n.id
		}
		if d == datapath.Egress {
			b.egressNamedPortRules(c, f, r)
		}
	}
	c.rule(newRule().goTo(b.dropChain(defaultDenyCounter(d))))
	b.m.counters[defaultDenyCounter(d)] = datapath.DefaultDenyCounter(d)

	pods := map[netip.Addr]*podFlat{}
	isolated := b.members[rules.Isolated]
	// Rule indexes by local identity: needed when the rules changed (to tell which pods' rules
	// did), and otherwise made on the first pod whose elements must be computed.
	var bySubject map[datapath.Identity][]int
	if b.cache.rulesChanged[d] {
		bySubject = b.rulesBySubject(rules.NetworkPolicy)
	}
	for _, p := range b.local[f] {
		if !isolated[p.identity] {
			continue
		}
		key := flatKey{d: d, f: f.suffix, addr: p.addr}
		ports := b.namedPortsOf(p.addr)
		pf := b.cache.podFlat(key, p.identity, ports, rules.NetworkPolicy, bySubject[p.identity])
		if pf == nil {
			if bySubject == nil {
				bySubject = b.rulesBySubject(rules.NetworkPolicy)
			}
			pf = b.flattenPod(d, f, p, rules.NetworkPolicy, bySubject[p.identity], allow)
			pf.ports = ports
			b.cache.storeFlat(key, pf)
		}
		pods[p.addr] = pf
		for name, ch := range pf.chains {
			if b.m.chains[name] == nil {
				b.m.chains[name] = ch
			}
		}
	}
	for kind, set := range b.npMapsOf(d, f, pods) {
		b.m.sets[npMap(d, f, kind)] = set
	}
}

// rulesBySubject lists, for every identity, the indexes of the rules whose subject holds it,
// in order: a pod's rules are found without testing every rule.
func (b *builder) rulesBySubject(rules []datapath.Rule) map[datapath.Identity][]int {
	out := map[datapath.Identity][]int{}
	for i, r := range rules {
		for id := range b.members[r.Subject] {
			out[id] = append(out[id], i)
		}
	}
	return out
}

// flattenPod works out the elements of one isolated local pod: what the rules at indexes
// (those whose subject holds it) allow, each pointing to the allow verdict of the earliest.
func (b *builder) flattenPod(d datapath.Direction, f family, p localPod, rules []datapath.Rule, indexes []int, allow []string) *podFlat {
	pf := &podFlat{identity: p.identity}
	a := p.addr.String()
	add := func(kind, value string, key ...string) {
		pf.elems = append(pf.elems, flatElement{kind: kind, joined: strings.Join(key, " . "), e: element{key: key, value: value}})
	}
	var fl flattened
	for _, i := range indexes {
		r := rules[i]
		pf.rules = append(pf.rules, cloneRule(r))
		for _, peer := range r.Peers {
			pf.read = append(pf.read, peer.Identities, peer.CIDRs)
		}
		b.flatten(&fl, d, f, p.addr, r, i)
	}
	for _, k := range fl.idOrder {
		add("id", allow[fl.idAny[k]], a, identityValue(k))
	}
	rest := npRestChain(d, f)
	for _, k := range fl.idPortOrder {
		id := identityValue(k.id)
		var ranges []span
		for _, s := range partition(fl.idPort[k]) {
			if s.lo == s.hi {
				add("idport", allow[s.rank], a, id, protocolName(k.proto), formatPorts(s))
			} else {
				ranges = append(ranges, s)
			}
		}
		if len(ranges) > 0 {
			name, chain := b.rangeChain(ranges, allow, rest)
			if pf.chains == nil {
				pf.chains = map[string]*chainModel{}
			}
			pf.chains[name] = chain
			add("idrange", "goto "+name, a, id, protocolName(k.proto))
		}
	}
	for _, s := range partition(fl.net) {
		add("net", allow[s.rank], a, formatAddrs(s, f))
	}
	for _, proto := range fl.netPortOrder {
		for _, r := range partition2(fl.netPort[proto]) {
			add("netport", allow[r.port.rank], a, formatAddrs(r.addr, f), protocolName(proto), formatPorts(r.port))
		}
	}
	slices.Sort(pf.read)
	pf.read = slices.Compact(pf.read)
	return pf
}

// rangeChain returns the chain that sends a packet to the allow chain of the port range
// holding its destination port, or, when none does, on to the rest of the tier; it is named
// after its content, so every pod and peer with the same ranges shares it. (A map keyed by
// port ranges would be an interval concatenation, in which the kernel deletes an element at
// a cost that grows with the whole map: a pod's removal took tens of milliseconds.)
func (b *builder) rangeChain(ranges []span, allow []string, rest string) (string, *chainModel) {
	c := &chainModel{}
	var text strings.Builder
	for _, s := range ranges {
		r := newRule().dportRange(uint16(s.lo.lo), uint16(s.hi.lo)).goTo(strings.TrimPrefix(allow[s.rank], "goto "))
		c.rules = append(c.rules, r)
		text.WriteString(r.String())
		text.WriteByte('\n')
	}
	c.rules = append(c.rules, newRule().goTo(rest))
	text.WriteString(rest)
	return "ports-" + shortHash(text.String()), c
}

// flattened collects what one local pod's rules allow, with the index of the rule (its
// rank: the earliest wins where rules overlap).
type flattened struct {
	idAny        map[datapath.Identity]int
	idOrder      []datapath.Identity
	idPort       map[idProto][]span
	idPortOrder  []idProto
	net          []span
	netPort      map[datapath.Protocol][]rect
	netPortOrder []datapath.Protocol
}

type idProto struct {
	id    datapath.Identity
	proto datapath.Protocol
}

type portRange struct {
	proto       datapath.Protocol
	first, last uint16
}

// flatten adds rule r (index rank) as it applies to the local pod at addr.
func (b *builder) flatten(fl *flattened, d datapath.Direction, f family, addr netip.Addr, r datapath.Rule, rank int) {
	if (!r.AnyPeer && len(r.Peers) == 0) || (!r.AnyPort && len(r.Ports) == 0) {
		return
	}
	var ids []datapath.Identity
	var nets []span
	if r.AnyPeer {
		nets = append(nets, prefixSpan(f.all, rank))
	}
	for _, p := range r.Peers {
		if p.Identities != "" {
			ids = append(ids, b.s.IdentitySets[p.Identities].Members...)
			continue
		}
		for _, pfx := range b.s.CIDRSets[p.CIDRs].Prefixes {
			if familyOf(pfx.Addr()) == f {
				nets = append(nets, prefixSpan(pfx, rank))
			}
		}
	}
	if r.AnyPort {
		fl.net = append(fl.net, nets...)
		for _, id := range ids {
			if fl.idAny == nil {
				fl.idAny = map[datapath.Identity]int{}
			}
			if _, seen := fl.idAny[id]; !seen {
				fl.idAny[id] = rank
				fl.idOrder = append(fl.idOrder, id)
			}
		}
		return
	}
	for _, pr := range b.resolvePorts(d, addr, r.Ports) {
		ps := portSpan(pr.first, pr.last, rank)
		for _, id := range ids {
			k := idProto{id, pr.proto}
			if fl.idPort == nil {
				fl.idPort = map[idProto][]span{}
			}
			if fl.idPort[k] == nil {
				fl.idPortOrder = append(fl.idPortOrder, k)
			}
			fl.idPort[k] = append(fl.idPort[k], ps)
		}
		for _, n := range nets {
			if fl.netPort == nil {
				fl.netPort = map[datapath.Protocol][]rect{}
			}
			if fl.netPort[pr.proto] == nil {
				fl.netPortOrder = append(fl.netPortOrder, pr.proto)
			}
			fl.netPort[pr.proto] = append(fl.netPort[pr.proto], rect{addr: n, port: ps})
		}
	}
}

// resolvePorts turns a rule's ports into ranges. A named port of an ingress rule names a port
// of the local pod (the destination), looked up here; named ports of egress rules are left
// to egressNamedPortRules.
func (b *builder) resolvePorts(d datapath.Direction, local netip.Addr, ports []datapath.PortMatch) []portRange {
	var out []portRange
	for _, pm := range ports {
		if pm.NamedPort == "" {
			out = append(out, portRange{pm.Protocol, pm.FirstPort, pm.LastPort})
			continue
		}
		if d != datapath.Ingress {
			continue
		}
		for _, e := range b.namedPorts[pm.NamedPort][local] {
			if pm.Protocol == 0 || pm.Protocol == e.Protocol {
				out = append(out, portRange{e.Protocol, e.Port, e.Port})
			}
		}
	}
	return out
}

// egressNamedPortRules renders the named ports of an egress rule: a rule per named port and
// peer kind, matching (local address . peer) in a set of the rule's own and (destination .
// protocol . port) in the port name's set.
func (b *builder) egressNamedPortRules(c *chainModel, f family, r datapath.Rule) {
	var named []datapath.PortMatch
	for _, pm := range r.Ports {
		if pm.NamedPort != "" {
			named = append(named, pm)
		}
	}
	if len(named) == 0 || (!r.AnyPeer && len(r.Peers) == 0) {
		return
	}
	hasIDs, hasNets := false, r.AnyPeer
	for _, p := range r.Peers {
		hasIDs = hasIDs || p.Identities != ""
		hasNets = hasNets || p.CIDRs != ""
	}
	isolated := b.members[b.s.Egress.Isolated]
	var subjects []netip.Addr
	for _, p := range b.local[f] {
		if isolated[p.identity] && b.members[r.Subject][p.identity] {
			subjects = append(subjects, p.addr)
		}
	}
	var lookups []func(*rule)
	if hasIDs {
		name := namedRuleSet(r.Attribution, f, "id")
		set := b.m.set(name, f.addrType+" . mark", r.ID(), false)
		for _, a := range subjects {
			for _, p := range r.Peers {
				for _, id := range b.s.IdentitySets[p.Identities].Members {
					set.add("", a.String(), identityValue(id))
				}
			}
		}
		lookups = append(lookups, func(x *rule) { x.concat(f, []keyField{fieldSaddr, fieldCtMark}, name, false, false) })
	}
	if hasNets {
		name := namedRuleSet(r.Attribution, f, "net")
		set := b.m.set(name, f.addrType+" . "+f.addrType, r.ID(), true)
		var nets []span
		if r.AnyPeer {
			nets = append(nets, prefixSpan(f.all, 0))
		}
		for _, p := range r.Peers {
			if p.CIDRs == "" {
				continue
			}
			for _, pfx := range b.s.CIDRSets[p.CIDRs].Prefixes {
				if familyOf(pfx.Addr()) == f {
					nets = append(nets, prefixSpan(pfx, 0))
				}
			}
		}
		nets = partition(nets)
		for _, a := range subjects {
			for _, n := range nets {
				set.add("", a.String(), formatAddrs(n, f))
			}
		}
		lookups = append(lookups, func(x *rule) { x.concat(f, []keyField{fieldSaddr, fieldDaddr}, name, false, true) })
	}
	// The identities' rules first: "ip saddr . ct mark" sorts before "ip saddr . ip daddr".
	for _, lookup := range lookups {
		for _, pm := range named {
			x := newRule()
			lookup(x)
			if pm.Protocol != 0 {
				x.l4proto(protocolName(pm.Protocol))
			}
			x.concat(f, []keyField{fieldDaddr, fieldL4proto, fieldDport}, b.namedPortSet(pm.NamedPort, f), false, false)
			c.rule(x.goTo(b.cache.ruleNames(r.Attribution).allow))
		}
	}
}
