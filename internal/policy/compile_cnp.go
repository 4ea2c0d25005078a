package policy

import (
	"fmt"
	"math"
	"net/netip"

	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
)

// failClosedNote explains rules compiled from a field this version does not know.
const failClosedNote = "fail closed: a peer or protocol sets no field this version knows"

// compileClusterNetworkPolicy translates a ClusterNetworkPolicy of the Admin or Baseline
// tier. Rule order and priority are kept: the datapath evaluates these rules first-match.
func compileClusterNetworkPolicy(cnp *v1alpha2.ClusterNetworkPolicy) *compiledPolicy {
	var tier datapath.Tier
	switch cnp.Spec.Tier {
	case v1alpha2.AdminTier:
		tier = datapath.TierAdmin
	case v1alpha2.BaselineTier:
		tier = datapath.TierBaseline
	}
	p := newCompiledPolicy(datapath.PolicyRef{Name: cnp.Name}, tier, cnp.Spec.Priority)
	if tier == "" {
		p.problem("unknown tier %q: the policy is ignored", cnp.Spec.Tier)
		return p
	}
	p.subject = p.identities(p.clusterSubject(&cnp.Spec.Subject))

	for i, r := range cnp.Spec.Ingress {
		peers := make([]v1alpha2.ClusterNetworkPolicyEgressPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = v1alpha2.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods}
		}
		p.addClusterRule(datapath.Ingress, i, r.Name, r.Action, peers, r.Protocols)
	}
	for i, r := range cnp.Spec.Egress {
		p.addClusterRule(datapath.Egress, i, r.Name, r.Action, r.To, r.Protocols)
	}
	return p
}

func (p *compiledPolicy) clusterSubject(s *v1alpha2.ClusterNetworkPolicySubject) identitySelector {
	switch {
	case s.Namespaces != nil && s.Pods == nil:
		return identitySelector{nsSel: p.selector("subject namespaces", s.Namespaces), pod: everything}
	case s.Pods != nil && s.Namespaces == nil:
		return p.namespacedPod("subject pods", s.Pods)
	}
	p.problem("subject must set exactly one of namespaces and pods (selects nothing)")
	return identitySelector{nsSel: labelSelector{none: true}, pod: labelSelector{none: true}}
}

func (p *compiledPolicy) namespacedPod(what string, np *v1alpha2.NamespacedPod) identitySelector {
	return identitySelector{
		nsSel: p.selector(what+" namespaceSelector", &np.NamespaceSelector),
		pod:   p.selector(what+" podSelector", &np.PodSelector),
	}
}

func (p *compiledPolicy) addClusterRule(dir datapath.Direction, index int, name string, action v1alpha2.ClusterNetworkPolicyRuleAction,
	peers []v1alpha2.ClusterNetworkPolicyEgressPeer, protocols []v1alpha2.ClusterNetworkPolicyProtocol) {
	what := fmt.Sprintf("%s rule %d", dir, index)
	r := datapath.Rule{
		Attribution: datapath.Attribution{Tier: p.tier, Policy: p.ref, Direction: dir, Index: index, Name: name,
			Action: datapath.Action(action)},
		Priority: p.priority,
		Subject:  p.subject,
		AnyPort:  len(protocols) == 0,
	}
	switch r.Action {
	case datapath.ActionAccept, datapath.ActionDeny, datapath.ActionPass:
	default:
		p.problem("%s: unknown action %q (rule ignored)", what, action)
		return
	}
	unknown := false
	for i, peer := range peers {
		pe, ok, known := p.clusterPeer(fmt.Sprintf("%s peer %d", what, i), peer, r.Action)
		unknown = unknown || !known
		if ok {
			r.Peers = append(r.Peers, pe)
		}
	}
	for i, proto := range protocols {
		pm, ok, known := p.clusterProtocol(fmt.Sprintf("%s protocol %d", what, i), proto)
		unknown = unknown || !known
		if ok {
			r.Ports = append(r.Ports, pm)
		}
	}
	if unknown {
		// The API's rule for peers it cannot read: an Accept rule matches nothing, a Deny or
		// Pass rule becomes "deny all". The same is applied to unreadable protocols.
		p.problem("%s: %s", what, failClosedNote)
		r.Note = failClosedNote
		if r.Action == datapath.ActionAccept {
			r.Peers, r.Ports, r.AnyPeer, r.AnyPort = nil, nil, false, false
		} else {
			r.Action = datapath.ActionDeny
			r.Peers, r.Ports, r.AnyPeer, r.AnyPort = nil, nil, true, true
		}
	}
	p.rules[dir] = append(p.rules[dir], r)
}

// clusterPeer translates one peer. known is false when the peer sets no field (or several) that
// this version reads, which makes the whole rule fail closed.
func (p *compiledPolicy) clusterPeer(what string, peer v1alpha2.ClusterNetworkPolicyEgressPeer, action datapath.Action) (pe datapath.Peer, ok, known bool) {
	set := 0
	for _, isSet := range []bool{peer.Namespaces != nil, peer.Pods != nil, peer.Nodes != nil,
		len(peer.Networks) > 0, len(peer.DomainNames) > 0} {
		if isSet {
			set++
		}
	}
	if set != 1 {
		return pe, false, false
	}
	switch {
	case peer.Namespaces != nil:
		s := identitySelector{nsSel: p.selector(what+" namespaces", peer.Namespaces), pod: everything}
		return datapath.Peer{Identities: p.identities(s)}, true, true
	case peer.Pods != nil:
		return datapath.Peer{Identities: p.identities(p.namespacedPod(what+" pods", peer.Pods))}, true, true
	case peer.Nodes != nil:
		return datapath.Peer{CIDRs: p.nodes(nodeSelector{sel: p.selector(what+" nodes", peer.Nodes)})}, true, true
	case len(peer.Networks) > 0:
		var nets []netip.Prefix
		for _, n := range peer.Networks {
			pfx, err := netip.ParsePrefix(string(n))
			if err != nil {
				p.problem("%s: network %q: %v (skipped)", what, n, err)
				continue
			}
			nets = append(nets, pfx.Masked())
		}
		if len(nets) == 0 {
			return pe, false, true
		}
		return datapath.Peer{CIDRs: p.cidrs(nets, nil)}, true, true
	}
	// DomainNames: valid only in Accept rules, where not enforcing them matches less than
	// written; elsewhere the API forbids them, so they fail closed like an unknown field.
	if action != datapath.ActionAccept {
		return pe, false, false
	}
	p.problem("%s: domainNames are not supported yet (this peer matches nothing)", what)
	return pe, false, true
}

// clusterProtocol translates one protocols entry; known is false when it sets no field (or
// several) this version reads.
func (p *compiledPolicy) clusterProtocol(what string, proto v1alpha2.ClusterNetworkPolicyProtocol) (pm datapath.PortMatch, ok, known bool) {
	type candidate struct {
		proto datapath.Protocol
		port  *v1alpha2.Port
	}
	var cands []candidate
	if proto.TCP != nil {
		cands = append(cands, candidate{datapath.ProtocolTCP, proto.TCP.DestinationPort})
	}
	if proto.UDP != nil {
		cands = append(cands, candidate{datapath.ProtocolUDP, proto.UDP.DestinationPort})
	}
	if proto.SCTP != nil {
		cands = append(cands, candidate{datapath.ProtocolSCTP, proto.SCTP.DestinationPort})
	}
	if proto.DestinationNamedPort != "" {
		if len(cands) > 0 {
			return pm, false, false
		}
		// The named port's own protocol applies: Protocol 0.
		return datapath.PortMatch{NamedPort: proto.DestinationNamedPort}, true, true
	}
	if len(cands) != 1 {
		return pm, false, false
	}
	c := cands[0]
	pm = datapath.PortMatch{Protocol: c.proto, FirstPort: 0, LastPort: math.MaxUint16}
	switch {
	case c.port == nil:
		// every port of the protocol
	case c.port.Range != nil:
		if !validPort(c.port.Range.Start) || !validPort(c.port.Range.End) || c.port.Range.End < c.port.Range.Start {
			p.problem("%s: port range %d-%d is invalid", what, c.port.Range.Start, c.port.Range.End)
			return pm, false, false
		}
		pm.FirstPort, pm.LastPort = uint16(c.port.Range.Start), uint16(c.port.Range.End)
	case validPort(c.port.Number):
		pm.FirstPort, pm.LastPort = uint16(c.port.Number), uint16(c.port.Number)
	default:
		p.problem("%s: port %d is invalid", what, c.port.Number)
		return pm, false, false
	}
	return pm, true, true
}

func validPort(n int32) bool { return n >= 1 && n <= math.MaxUint16 }
