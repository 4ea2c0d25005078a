package nftdp

import (
	"github.com/twill-net/twill/internal/datapath"
)

// orderedTier renders the Admin or Baseline tier of one direction as a first-match list in
// the state's order: each rule becomes one nft rule per (peer, port group) it names, all
// counting into the rule's counter. Accept returns (the direction allows), Deny drops, Pass
// goes to the NetworkPolicy tier (Admin) or allows (Baseline). A packet no rule matches goes
// on to the next tier (Admin) or is allowed (Baseline: the chain's end returns).
//
// Rules name sets, never addresses, so which nft rules exist depends on the policies alone:
// pods and nodes coming and going change set elements only.
func (b *builder) orderedTier(d datapath.Direction, f family, tier datapath.Tier, rules []datapath.Rule) {
	c := b.m.chain(tierChain(d, f, tier))
	for _, r := range rules {
		counter := b.counter(r.Attribution)
		if (!r.AnyPeer && len(r.Peers) == 0) || (!r.AnyPort && len(r.Ports) == 0) {
			continue // matches nothing
		}
		subject := b.subjectSet(r.Subject, f)
		peers := []func(*rule){func(*rule) {}}
		if !r.AnyPeer {
			peers = peers[:0]
			for _, p := range r.Peers {
				if p.Identities != "" {
					set := b.identitySet(p.Identities)
					peers = append(peers, func(x *rule) { x.ctMarkIn(set) })
				} else {
					set := b.cidrSet(p.CIDRs, f)
					peers = append(peers, func(x *rule) { x.addrIn(f, peerField(d), set, false) })
				}
			}
		}
		ports := []func(*rule){func(*rule) {}}
		if !r.AnyPort {
			ports = b.portClauses(r.Ports, f)
		}
		verdict := func(x *rule) { x.counter(counter).ret() }
		switch {
		case r.Action == datapath.ActionDeny:
			drop := b.dropChain(counter)
			verdict = func(x *rule) { x.goTo(drop) }
		case r.Action == datapath.ActionPass && tier == datapath.TierAdmin:
			verdict = func(x *rule) { x.counter(counter).goTo(tierChain(d, f, datapath.TierNetworkPolicy)) }
		}
		// Accept returns, and so does Pass in Baseline: nothing after it denies.
		for _, peer := range peers {
			for _, port := range ports {
				x := newRule().addrIn(f, localField(d), subject, false)
				peer(x)
				port(x)
				verdict(x)
				c.rule(x)
			}
		}
	}
	if tier == datapath.TierAdmin {
		c.rule(newRule().goTo(tierChain(d, f, datapath.TierNetworkPolicy)))
	}
}

// portClauses matches a rule's ports: one anonymous set of (protocol . port range) for the
// numbered ports (ranges of one protocol merged, as nft refuses overlapping elements), and
// one clause per named port, which matches (destination address . protocol . port) in the
// name's set, so the name resolves per destination pod.
func (b *builder) portClauses(ports []datapath.PortMatch, f family) []func(*rule) {
	var clauses []func(*rule)
	byProto := map[datapath.Protocol][]span{}
	var protos []datapath.Protocol
	for _, pm := range ports {
		if pm.NamedPort != "" {
			set := b.namedPortSet(pm.NamedPort, f)
			proto := pm.Protocol
			clauses = append(clauses, func(x *rule) {
				if proto != 0 {
					x.l4proto(protocolName(proto))
				}
				x.concat(f, []keyField{fieldDaddr, fieldL4proto, fieldDport}, set, false, false)
			})
			continue
		}
		if byProto[pm.Protocol] == nil {
			protos = append(protos, pm.Protocol)
		}
		byProto[pm.Protocol] = append(byProto[pm.Protocol], portSpan(pm.FirstPort, pm.LastPort, 0))
	}
	if len(protos) > 0 {
		var elems []protoPort
		for _, p := range protos {
			for _, s := range partition(byProto[p]) {
				elems = append(elems, protoPort{proto: protocolName(p), first: uint16(s.lo.lo), last: uint16(s.hi.lo)})
			}
		}
		clauses = append([]func(*rule){func(x *rule) { x.protoPorts(elems) }}, clauses...)
	}
	return clauses
}

// dropChain returns the chain a rule goes to to drop a packet: the drop chain of its counter,
// which counts it, drops it and, within a rate, logs it to the nflog group DropLogGroup with
// the counter name as prefix: the agent's drop events (internal/flow) are attributed by that
// name. Every drop of the table is rendered here.
//
// The rate limit is in a chain of its own because limit is a match in nft: in the dropping
// rule, a packet over the rate would not match and would fall through to the next rule (and
// be allowed). In the drop chain, the logging rule stops matching over the rate and the next
// rule drops without logging, so the verdict is the same either way and the table's rules
// match each packet once. The limit is per counter: a flood of one kind of drop costs at
// most DropLogRate messages a second, and nflog never holds a packet back (a lagging reader
// loses messages, not packets).
func (b *builder) dropChain(counter string) string {
	chain := dropChain(counter)
	if b.m.chains[chain] == nil {
		c := b.m.chain(chain)
		c.rule(newRule().dropLog(counter).drop())
		c.rule(newRule().counter(counter).drop())
	}
	return chain
}
