package policy

import (
	"fmt"
	"math"
	"net/netip"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/twill-net/twill/internal/datapath"
)

// compiledPolicy is one policy translated into rules over named sets. It depends only on the
// policy object, never on pods or namespaces, so a pod or label change never recompiles it.
type compiledPolicy struct {
	ref      datapath.PolicyRef
	tier     datapath.Tier
	priority int32
	subject  datapath.SetName
	// wholeNamespace is true for a NetworkPolicy with an empty podSelector (audit's
	// "default deny" check).
	wholeNamespace bool
	// isolates holds the directions a NetworkPolicy isolates its pods in.
	isolates map[datapath.Direction]bool
	rules    map[datapath.Direction][]datapath.Rule

	identitySets map[datapath.SetName]identitySelector
	cidrSets     map[datapath.SetName]datapath.CIDRSet
	nodeSets     map[datapath.SetName]nodeSelector
	// problems are what the policy asks that cannot be enforced as written, for audit.
	problems []string
}

// nodeSelector picks nodes by label; its set holds their addresses.
type nodeSelector struct{ sel labelSelector }

func newCompiledPolicy(ref datapath.PolicyRef, tier datapath.Tier, priority int32) *compiledPolicy {
	return &compiledPolicy{
		ref: ref, tier: tier, priority: priority,
		isolates:     map[datapath.Direction]bool{},
		rules:        map[datapath.Direction][]datapath.Rule{},
		identitySets: map[datapath.SetName]identitySelector{},
		cidrSets:     map[datapath.SetName]datapath.CIDRSet{},
		nodeSets:     map[datapath.SetName]nodeSelector{},
	}
}

func (p *compiledPolicy) problem(format string, args ...any) {
	p.problems = append(p.problems, fmt.Sprintf(format, args...))
}

func (p *compiledPolicy) identities(s identitySelector) datapath.SetName {
	name := s.setName()
	p.identitySets[name] = s
	return name
}

func (p *compiledPolicy) nodes(s nodeSelector) datapath.SetName {
	name := hashName("nd-", "nodes "+s.sel.String())
	p.nodeSets[name] = s
	return name
}

// cidrs registers the set of addresses in bases minus excepts.
func (p *compiledPolicy) cidrs(bases, excepts []netip.Prefix) datapath.SetName {
	src := make([]string, 0, len(bases))
	for _, b := range bases {
		src = append(src, b.String())
	}
	source := strings.Join(src, " ")
	if len(excepts) > 0 {
		ex := make([]string, 0, len(excepts))
		for _, e := range excepts {
			ex = append(ex, e.String())
		}
		source += " except " + strings.Join(ex, " ")
	}
	var prefixes []netip.Prefix
	for _, b := range bases {
		prefixes = append(prefixes, subtractPrefixes(b, excepts)...)
	}
	name := hashName("ci-", source)
	p.cidrSets[name] = datapath.CIDRSet{Source: source, Prefixes: normalizePrefixes(prefixes)}
	return name
}

// selector parses a label selector, recording a problem when it is invalid.
func (p *compiledPolicy) selector(what string, ls *metav1.LabelSelector) labelSelector {
	s, err := parseSelector(ls)
	if err != nil {
		p.problem("%s: %v (selects nothing)", what, err)
	}
	return s
}

// compileNetworkPolicy translates a NetworkPolicy. Its rules only allow; which pods it
// isolates, and in which directions, is recorded for the default deny.
func compileNetworkPolicy(np *networkingv1.NetworkPolicy) *compiledPolicy {
	p := newCompiledPolicy(datapath.PolicyRef{Namespace: np.Namespace, Name: np.Name}, datapath.TierNetworkPolicy, 0)
	spec := &np.Spec
	p.subject = p.identities(identitySelector{namespace: np.Namespace, nsSel: everything,
		pod: p.selector("podSelector", &spec.PodSelector)})
	p.wholeNamespace = len(spec.PodSelector.MatchLabels) == 0 && len(spec.PodSelector.MatchExpressions) == 0

	ingress, egress := policyTypes(spec)
	if ingress {
		p.isolates[datapath.Ingress] = true
		for i, r := range spec.Ingress {
			p.addNetworkPolicyRule(datapath.Ingress, i, np.Namespace, r.From, r.Ports)
		}
	}
	if egress {
		p.isolates[datapath.Egress] = true
		for i, r := range spec.Egress {
			p.addNetworkPolicyRule(datapath.Egress, i, np.Namespace, r.To, r.Ports)
		}
	}
	return p
}

// policyTypes applies the API's defaulting: without policyTypes, every policy is about
// ingress, and about egress only when it has egress rules.
func policyTypes(spec *networkingv1.NetworkPolicySpec) (ingress, egress bool) {
	if len(spec.PolicyTypes) == 0 {
		return true, len(spec.Egress) > 0
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func (p *compiledPolicy) addNetworkPolicyRule(dir datapath.Direction, index int, namespace string,
	peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) {
	r := datapath.Rule{
		Attribution: datapath.Attribution{Tier: datapath.TierNetworkPolicy, Policy: p.ref, Direction: dir,
			Index: index, Action: datapath.ActionAccept},
		Subject: p.subject,
		// An empty list means every peer or every port; a list whose entries are all invalid
		// means none (below), so a mistake never opens more than written.
		AnyPeer: len(peers) == 0,
		AnyPort: len(ports) == 0,
	}
	what := fmt.Sprintf("%s rule %d", dir, index)
	for i, peer := range peers {
		if pe, ok := p.networkPolicyPeer(fmt.Sprintf("%s peer %d", what, i), namespace, peer); ok {
			r.Peers = append(r.Peers, pe)
		}
	}
	for i, port := range ports {
		if pm, ok := p.networkPolicyPort(fmt.Sprintf("%s port %d", what, i), port); ok {
			r.Ports = append(r.Ports, pm)
		}
	}
	p.rules[dir] = append(p.rules[dir], r)
}

func (p *compiledPolicy) networkPolicyPeer(what, namespace string, peer networkingv1.NetworkPolicyPeer) (datapath.Peer, bool) {
	if b := peer.IPBlock; b != nil {
		base, err := netip.ParsePrefix(b.CIDR)
		if err != nil {
			p.problem("%s: ipBlock cidr: %v (matches nothing)", what, err)
			return datapath.Peer{}, false
		}
		var excepts []netip.Prefix
		for _, e := range b.Except {
			ex, err := netip.ParsePrefix(e)
			if err != nil {
				p.problem("%s: ipBlock except: %v (peer matches nothing)", what, err)
				return datapath.Peer{}, false
			}
			excepts = append(excepts, ex.Masked())
		}
		return datapath.Peer{CIDRs: p.cidrs([]netip.Prefix{base.Masked()}, excepts)}, true
	}
	if peer.PodSelector == nil && peer.NamespaceSelector == nil {
		p.problem("%s: sets no field (matches nothing)", what)
		return datapath.Peer{}, false
	}
	s := identitySelector{namespace: namespace, nsSel: everything, pod: everything}
	if peer.NamespaceSelector != nil {
		// With a namespaceSelector the pod selector applies in the selected namespaces, not
		// in the policy's own.
		s.namespace = ""
		s.nsSel = p.selector(what+" namespaceSelector", peer.NamespaceSelector)
	}
	if peer.PodSelector != nil {
		s.pod = p.selector(what+" podSelector", peer.PodSelector)
	}
	return datapath.Peer{Identities: p.identities(s)}, true
}

func (p *compiledPolicy) networkPolicyPort(what string, port networkingv1.NetworkPolicyPort) (datapath.PortMatch, bool) {
	proto := datapath.ProtocolTCP
	if port.Protocol != nil {
		var err error
		if proto, err = datapath.ParseProtocol(string(*port.Protocol)); err != nil {
			p.problem("%s: %v (matches nothing)", what, err)
			return datapath.PortMatch{}, false
		}
	}
	pm := datapath.PortMatch{Protocol: proto, FirstPort: 0, LastPort: math.MaxUint16}
	switch {
	case port.Port == nil:
		// every port of the protocol
	case port.Port.Type == intstr.String: // a named port, resolved per destination pod
		pm = datapath.PortMatch{Protocol: proto, NamedPort: port.Port.StrVal}
	default:
		first := port.Port.IntVal
		last := first
		if port.EndPort != nil {
			last = *port.EndPort
		}
		if first < 1 || first > math.MaxUint16 || last < first || last > math.MaxUint16 {
			p.problem("%s: port range %d-%d is invalid (matches nothing)", what, first, last)
			return datapath.PortMatch{}, false
		}
		pm.FirstPort, pm.LastPort = uint16(first), uint16(last)
	}
	return pm, true
}
