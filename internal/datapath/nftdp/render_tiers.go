package nftdp

import (
	"fmt"
	"strings"

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
	c := b.m.chain(tierChain(d, f, tier), "")
	for _, r := range rules {
		counter := b.counter(r.Attribution)
		if (!r.AnyPeer && len(r.Peers) == 0) || (!r.AnyPort && len(r.Ports) == 0) {
			continue // matches nothing
		}
		subject := f.addr + " " + localField(d) + " @" + b.subjectSet(r.Subject, f)
		peers := []string{""}
		if !r.AnyPeer {
			peers = peers[:0]
			for _, p := range r.Peers {
				if p.Identities != "" {
					peers = append(peers, "ct mark @"+b.identitySet(p.Identities))
				} else {
					peers = append(peers, f.addr+" "+peerField(d)+" @"+b.cidrSet(p.CIDRs, f))
				}
			}
		}
		ports := []string{""}
		if !r.AnyPort {
			ports = b.portClauses(r.Ports, f)
		}
		var verdict string
		switch {
		case r.Action == datapath.ActionAccept:
			verdict = "counter name " + counter + " return"
		case r.Action == datapath.ActionDeny:
			verdict = b.dropVerdict(counter)
		case tier == datapath.TierAdmin: // Pass
			verdict = "counter name " + counter + " goto " + tierChain(d, f, datapath.TierNetworkPolicy)
		default: // Pass in Baseline: nothing after it denies
			verdict = "counter name " + counter + " return"
		}
		for _, peer := range peers {
			for _, port := range ports {
				c.rule(subject, peer, port, verdict)
			}
		}
	}
	if tier == datapath.TierAdmin {
		c.rule("goto", tierChain(d, f, datapath.TierNetworkPolicy))
	}
}

// portClauses matches a rule's ports: one anonymous set of (protocol . port range) for the
// numbered ports (ranges of one protocol merged, as nft refuses overlapping elements), and
// one clause per named port, which matches (destination address . protocol . port) in the
// name's set, so the name resolves per destination pod.
func (b *builder) portClauses(ports []datapath.PortMatch, f family) []string {
	var clauses []string
	byProto := map[datapath.Protocol][]span{}
	var protos []datapath.Protocol
	for _, pm := range ports {
		if pm.NamedPort != "" {
			clause := f.addr + " daddr . meta l4proto . th dport @" + b.namedPortSet(pm.NamedPort, f)
			if pm.Protocol != 0 {
				clause = "meta l4proto " + protocolName(pm.Protocol) + " " + clause
			}
			clauses = append(clauses, clause)
			continue
		}
		if byProto[pm.Protocol] == nil {
			protos = append(protos, pm.Protocol)
		}
		byProto[pm.Protocol] = append(byProto[pm.Protocol], portSpan(pm.FirstPort, pm.LastPort, 0))
	}
	if len(protos) > 0 {
		var elems []string
		for _, p := range protos {
			for _, s := range partition(byProto[p]) {
				elems = append(elems, protocolName(p)+" . "+formatPorts(s))
			}
		}
		clauses = append([]string{"meta l4proto . th dport { " + strings.Join(elems, ", ") + " }"}, clauses...)
	}
	return clauses
}

// dropVerdict sends a packet to the drop chain of its counter, which counts it, drops it and,
// within a rate, logs it to the nflog group DropLogGroup with the counter name as prefix: the
// agent's drop events (internal/flow) are attributed by that name. Every drop of the table is
// rendered here.
//
// The rate limit is in a chain of its own because limit is a match in nft: in the dropping
// rule, a packet over the rate would not match and would fall through to the next rule (and
// be allowed). In the drop chain, the logging rule stops matching over the rate and the next
// rule drops without logging, so the verdict is the same either way and the table's rules
// match each packet once. The limit is per counter: a flood of one kind of drop costs at
// most DropLogRate messages a second, and nflog never holds a packet back (a lagging reader
// loses messages, not packets).
func (b *builder) dropVerdict(counter string) string {
	chain := dropChain(counter)
	if b.m.chains[chain] == nil {
		c := b.m.chain(chain, "")
		c.rule(fmt.Sprintf("limit rate %d/second burst %d packets counter name %s log group %d snaplen %d prefix %q drop",
			DropLogRate, DropLogBurst, counter, DropLogGroup, dropLogSnaplen, DropLogPrefix(counter)))
		c.rule("counter name", counter, "drop")
	}
	return "goto " + chain
}
