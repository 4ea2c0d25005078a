package datapath

import (
	"fmt"
	"net/netip"
	"strings"
)

// PolicyEvaluator judges packets against a PolicyState exactly as DirectionPolicy documents
// the evaluation order. It is the reference the rendered datapaths are tested against and
// what `twill policy explain` answers from, so explain and the kernel read the same state.
type PolicyEvaluator struct {
	state *PolicyState
	sets  map[SetName]map[Identity]bool
	named map[string]map[NamedPortEntry]bool
}

// NewPolicyEvaluator indexes s for lookups. s must not change while the evaluator is used.
func NewPolicyEvaluator(s *PolicyState) *PolicyEvaluator {
	e := &PolicyEvaluator{
		state: s,
		sets:  make(map[SetName]map[Identity]bool, len(s.IdentitySets)),
		named: make(map[string]map[NamedPortEntry]bool, len(s.NamedPorts)),
	}
	for name, set := range s.IdentitySets {
		m := make(map[Identity]bool, len(set.Members))
		for _, id := range set.Members {
			m[id] = true
		}
		e.sets[name] = m
	}
	for name, entries := range s.NamedPorts {
		m := make(map[NamedPortEntry]bool, len(entries))
		for _, en := range entries {
			m[en] = true
		}
		e.named[name] = m
	}
	return e
}

// Packet is the first packet of a connection, as policy sees it.
type Packet struct {
	Src, Dst netip.Addr
	Protocol Protocol
	Port     uint16 // destination port; 0 for protocols without ports
}

func (p Packet) String() string {
	return fmt.Sprintf("%s -> %s %d/%s", p.Src, p.Dst, p.Port, p.Protocol)
}

// Verdict is the outcome for a packet and the decisions that led to it, egress (at the
// source pod) first, then ingress (at the destination pod).
type Verdict struct {
	Allowed   bool
	Decisions []Decision
}

// Decision is one step of the evaluation: a rule that matched, a default deny, or a reason
// no rule applied. Policy and Index are meaningful only when a rule matched.
type Decision struct {
	Attribution
	DefaultDeny bool // a NetworkPolicy isolated the pod and none of their rules allowed
	Why         string
}

func (d Decision) String() string {
	s := string(d.Direction) + ": "
	switch {
	case d.DefaultDeny:
		s += "default deny"
	case d.Policy.Name != "":
		s += fmt.Sprintf("%s %s rule %d", d.Tier, d.Policy, d.Index)
		if d.Name != "" {
			s += " (" + d.Name + ")"
		}
	default:
		s += "no rule"
	}
	s += " -> " + string(d.Action)
	if d.Why != "" {
		s += ": " + d.Why
	}
	return s
}

// Evaluate judges p: it is allowed when egress at its source (if a pod) and ingress at its
// destination (if a pod) both allow it.
func (e *PolicyEvaluator) Evaluate(p Packet) Verdict {
	src, srcIsPod := e.state.Endpoints[p.Src]
	dst, dstIsPod := e.state.Endpoints[p.Dst]
	v := Verdict{Allowed: true}
	if srcIsPod && dstIsPod && src.Pod == dst.Pod {
		// The packet never leaves the pod's network namespace, so no datapath sees it.
		v.Decisions = append(v.Decisions, Decision{Attribution: Attribution{Direction: Egress, Action: ActionAccept},
			Why: "a pod's traffic to itself stays inside the pod"})
		return v
	}
	if !srcIsPod && !dstIsPod {
		v.Decisions = append(v.Decisions, Decision{Attribution: Attribution{Action: ActionAccept},
			Why: "neither address is a pod's: no policy applies"})
		return v
	}
	if srcIsPod {
		ok, ds := e.evaluateDirection(Egress, src.Identity, p.Dst, p)
		v.Allowed = v.Allowed && ok
		v.Decisions = append(v.Decisions, ds...)
	}
	if dstIsPod {
		if node, ok := e.state.NodeAddresses[p.Src]; ok && node == dst.Node {
			v.Decisions = append(v.Decisions, Decision{Attribution: Attribution{Direction: Ingress, Action: ActionAccept},
				Why: "traffic from a pod's own node is always allowed (kubelet probes)"})
			return v
		}
		ok, ds := e.evaluateDirection(Ingress, dst.Identity, p.Src, p)
		v.Allowed = v.Allowed && ok
		v.Decisions = append(v.Decisions, ds...)
	}
	return v
}

// evaluateDirection runs the tiers for the local pod's identity and the peer address.
func (e *PolicyEvaluator) evaluateDirection(d Direction, local Identity, peer netip.Addr, p Packet) (bool, []Decision) {
	rules := e.state.Rules(d)
	var decisions []Decision

	decided, allowed, ds := e.firstMatch(rules.Admin, local, peer, p)
	decisions = append(decisions, ds...)
	if decided {
		return allowed, decisions
	}

	if e.sets[rules.Isolated][local] {
		var allowing []Decision
		for _, r := range rules.NetworkPolicy {
			if e.matches(&r, local, peer, p) {
				allowing = append(allowing, Decision{Attribution: r.Attribution, Why: r.Note})
			}
		}
		if len(allowing) > 0 {
			return true, append(decisions, allowing...)
		}
		return false, append(decisions, Decision{
			Attribution: Attribution{Tier: TierNetworkPolicy, Direction: d, Action: ActionDeny},
			DefaultDeny: true,
			Why:         "isolated by " + strings.Join(e.isolatingPolicies(rules, local), ", ") + "; no rule of theirs allows this",
		})
	}

	decided, allowed, ds = e.firstMatch(rules.Baseline, local, peer, p)
	decisions = append(decisions, ds...)
	if decided {
		return allowed, decisions
	}
	return true, append(decisions, Decision{Attribution: Attribution{Direction: d, Action: ActionAccept},
		Why: "no policy decided: allowed by default"})
}

// firstMatch walks an Admin or Baseline rule list in order. decided is false when no rule
// matched or a Pass rule sent evaluation to the next tier.
func (e *PolicyEvaluator) firstMatch(rules []Rule, local Identity, peer netip.Addr, p Packet) (decided, allowed bool, ds []Decision) {
	for i := range rules {
		r := &rules[i]
		if !e.matches(r, local, peer, p) {
			continue
		}
		ds = append(ds, Decision{Attribution: r.Attribution, Why: r.Note})
		switch r.Action {
		case ActionAccept:
			return true, true, ds
		case ActionDeny:
			return true, false, ds
		default: // Pass
			return false, false, ds
		}
	}
	return false, false, nil
}

func (e *PolicyEvaluator) isolatingPolicies(rules *DirectionPolicy, local Identity) []string {
	var names []string
	for _, iso := range rules.Isolation {
		if e.sets[iso.Subject][local] {
			names = append(names, iso.Policy.String())
		}
	}
	return names
}

// matches reports whether r applies to the local identity and matches the peer and port.
func (e *PolicyEvaluator) matches(r *Rule, local Identity, peer netip.Addr, p Packet) bool {
	if !e.sets[r.Subject][local] {
		return false
	}
	return (r.AnyPeer || e.peerMatches(r.Peers, peer)) && (r.AnyPort || e.portMatches(r.Ports, p))
}

func (e *PolicyEvaluator) peerMatches(peers []Peer, addr netip.Addr) bool {
	entry, isPod := e.state.Endpoints[addr]
	for _, pe := range peers {
		if pe.Identities != "" && isPod && e.sets[pe.Identities][entry.Identity] {
			return true
		}
		if pe.CIDRs != "" {
			for _, pfx := range e.state.CIDRSets[pe.CIDRs].Prefixes {
				if pfx.Contains(addr) {
					return true
				}
			}
		}
	}
	return false
}

func (e *PolicyEvaluator) portMatches(ports []PortMatch, p Packet) bool {
	for _, pm := range ports {
		if pm.NamedPort != "" {
			if (pm.Protocol == 0 || pm.Protocol == p.Protocol) &&
				e.named[pm.NamedPort][NamedPortEntry{Addr: p.Dst, Protocol: p.Protocol, Port: p.Port}] {
				return true
			}
			continue
		}
		if pm.Protocol == p.Protocol && pm.FirstPort <= p.Port && p.Port <= pm.LastPort {
			return true
		}
	}
	return false
}
