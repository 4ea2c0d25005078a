package nftdp

import (
	"net/netip"
	"slices"
	"strconv"

	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
)

// builder renders one PolicyState, as this node enforces it, into a model of twill's table.
type builder struct {
	s        *datapath.PolicyState
	nodeName string
	m        *model

	members map[datapath.SetName]map[datapath.Identity]bool
	// local holds this node's pod addresses and their identities, by family.
	local map[family][]localPod
	// namedPorts indexes the state's named ports by name and address.
	namedPorts     map[string]map[netip.Addr][]datapath.NamedPortEntry
	namedPortNames []string // sorted
	cache          *renderCache
}

type localPod struct {
	addr     netip.Addr
	identity datapath.Identity
}

// render builds the table that enforces s on the pods of node nodeName. cache holds what
// earlier renders worked out (nil: a cache for this render alone).
func render(s *datapath.PolicyState, nodeName string, cache *renderCache) *model {
	if cache == nil {
		cache = newRenderCache()
	}
	cache.begin(s)
	defer cache.end(s)
	b := &builder{s: s, nodeName: nodeName, m: newModel(), cache: cache,
		members:    make(map[datapath.SetName]map[datapath.Identity]bool, len(s.IdentitySets)),
		local:      map[family][]localPod{},
		namedPorts: map[string]map[netip.Addr][]datapath.NamedPortEntry{},
	}
	for name, set := range s.IdentitySets {
		m := make(map[datapath.Identity]bool, len(set.Members))
		for _, id := range set.Members {
			m[id] = true
		}
		b.members[name] = m
	}
	for addr, ep := range s.Endpoints {
		if ep.Node == nodeName {
			f := familyOf(addr)
			b.local[f] = append(b.local[f], localPod{addr: addr, identity: ep.Identity})
		}
	}
	for f := range b.local {
		slices.SortFunc(b.local[f], func(a, b localPod) int { return a.addr.Compare(b.addr) })
	}
	// Named ports are looked up for local pods only (ingress rules name the local pod's).
	isLocal := map[netip.Addr]bool{}
	for _, pods := range b.local {
		for _, p := range pods {
			isLocal[p.addr] = true
		}
	}
	for name, entries := range s.NamedPorts {
		byAddr := map[netip.Addr][]datapath.NamedPortEntry{}
		for _, e := range entries {
			if isLocal[e.Addr] {
				byAddr[e.Addr] = append(byAddr[e.Addr], e)
			}
		}
		b.namedPorts[name] = byAddr
		b.namedPortNames = append(b.namedPortNames, name)
	}
	slices.Sort(b.namedPortNames)

	b.m.counters[counterOwnNode] = datapath.CounterOwnNode
	b.m.counters[counterInvalid] = datapath.CounterInvalid
	b.baseChains()
	b.identityMaps()
	for _, f := range families {
		b.membership(f)
		b.podsChain(f)
		for _, d := range []datapath.Direction{datapath.Egress, datapath.Ingress} {
			b.direction(d, f)
		}
	}
	return b.m
}

// baseChains hook the forward path (pod traffic is routed by the node), input (a local pod
// to the node) and output (the node to a local pod). They are the same three rules: replies
// and related packets of a connection already allowed pass at once, IPv6 neighbour
// discovery passes (link-layer resolution, as ARP, which inet tables never see), and every
// other first packet goes to the family's pods chain.
func (b *builder) baseChains() {
	for _, hook := range []knftables.BaseChainHook{knftables.ForwardHook, knftables.InputHook, knftables.OutputHook} {
		c := b.m.baseChain(hook)
		c.rule(newRule().ctState("established,related", ctStateEstablished|ctStateRelated).accept())
		c.rule(newRule().icmpv6ND().accept())
		for _, f := range families {
			c.rule(newRule().nfproto(f).jump(podsChain(f)))
		}
	}
}

// Conntrack state bits, as the kernel keeps them (nf_conntrack_common.h).
const (
	ctStateInvalid     = 1
	ctStateEstablished = 2
	ctStateRelated     = 4
)

// membership renders the sets every state has: this node's pods and this node's own
// addresses (identityMaps renders the identity of every pod address in the cluster).
func (b *builder) membership(f family) {
	local := b.m.set(localSet(f), f.addrType, "pods on this node", false)
	for _, p := range b.local[f] {
		local.add("", p.addr.String())
	}
	own := b.m.set(ownNodeSet(f), f.addrType, "this node's addresses: its pods accept them always", false)
	for addr, node := range b.s.NodeAddresses {
		if node == b.nodeName && familyOf(addr) == f {
			own.add("", addr.String())
		}
	}
}

// podsChain sends a first packet to the egress chain when it leaves a local pod and to the
// ingress chain when it enters one (both, in that order, between two local pods). Each
// returns when its direction allows the packet and drops it otherwise.
func (b *builder) podsChain(f family) {
	c := b.m.chain(podsChain(f))
	c.rule(newRule().addrIn(f, "saddr", localSet(f), true).addrIn(f, "daddr", localSet(f), true).ret())
	c.rule(newRule().ctState("invalid", ctStateInvalid).goTo(b.dropChain(counterInvalid)))
	c.rule(newRule().addrIn(f, "saddr", localSet(f), false).jump(directionChain(datapath.Egress, f)))
	c.rule(newRule().addrIn(f, "daddr", localSet(f), false).jump(directionChain(datapath.Ingress, f)))
}

// direction renders one direction's chains. The peer's identity is looked up once and kept
// in the connection's mark (0 for an address that is no pod's), so that every later lookup
// by identity is a set or map lookup: twill owns the conntrack mark of pod connections.
// The tiers are chained with goto, so a rule's "return" leaves the direction allowing the
// packet, "drop" ends it, and Pass moves on to the next tier.
func (b *builder) direction(d datapath.Direction, f family) {
	c := b.m.chain(directionChain(d, f))
	if d == datapath.Ingress {
		c.rule(newRule().addrIn(f, "saddr", ownNodeSet(f), false).counter(counterOwnNode).ret())
	}
	c.rule(newRule().ctMarkSetZero())
	c.rule(newRule().ctMarkSetMap(f, peerField(d), identityMap(f)))
	c.rule(newRule().goTo(tierChain(d, f, datapath.TierAdmin)))

	rules := b.s.Rules(d)
	b.orderedTier(d, f, datapath.TierAdmin, rules.Admin)
	b.networkPolicyTier(d, f, rules)
	b.orderedTier(d, f, datapath.TierBaseline, rules.Baseline)
}

// counter registers the counter of a rule's verdicts.
func (b *builder) counter(a datapath.Attribution) string {
	n := b.cache.ruleNames(a)
	b.m.counters[n.counter] = n.id
	return n.counter
}

// subjectSet renders the local pods whose identity is in the named set.
func (b *builder) subjectSet(n datapath.SetName, f family) string {
	name := subjectSet(n, f)
	if b.m.sets[name] != nil {
		return name
	}
	set := b.m.set(name, f.addrType, "pods on this node in "+string(n), false)
	for _, p := range b.local[f] {
		if b.members[n][p.identity] {
			set.add("", p.addr.String())
		}
	}
	return name
}

// identitySet renders an identity set, matched against the peer identity in the ct mark.
func (b *builder) identitySet(n datapath.SetName) string {
	name := identitySet(n)
	if b.m.sets[name] != nil {
		return name
	}
	set := b.m.set(name, "mark", b.s.IdentitySets[n].Selector, false)
	for _, id := range b.s.IdentitySets[n].Members {
		set.add("", identityValue(id))
	}
	return name
}

// cidrSet renders the prefixes of one family of a CIDR set (already disjoint).
func (b *builder) cidrSet(n datapath.SetName, f family) string {
	name := cidrSet(n, f)
	if b.m.sets[name] != nil {
		return name
	}
	set := b.m.set(name, f.addrType, b.s.CIDRSets[n].Source, true)
	for _, p := range b.s.CIDRSets[n].Prefixes {
		if familyOf(p.Addr()) == f {
			set.add("", formatAddrs(prefixSpan(p, 0), f))
		}
	}
	return name
}

func identityValue(id datapath.Identity) string { return strconv.FormatUint(uint64(id), 10) }

// protocolName spells a protocol as nft's inet_proto type reads it.
func protocolName(p datapath.Protocol) string {
	switch p {
	case datapath.ProtocolTCP:
		return "tcp"
	case datapath.ProtocolUDP:
		return "udp"
	case datapath.ProtocolSCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}
