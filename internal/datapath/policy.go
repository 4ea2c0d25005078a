package datapath

import (
	"fmt"
	"net/netip"
)

// PolicyState is everything the policy calculator wants enforced, cluster-wide: each node's
// datapath enforces the rules whose subjects are its own endpoints (egress where a packet
// leaves a local pod, ingress where it enters one) and uses the rest for lookups.
//
// It is built in two layers so that a change touches a small part of it:
//
//   - membership: Endpoints (address -> identity), IdentitySets (selector -> identities),
//     CIDRSets and NamedPorts. A pod coming or going changes its own addresses here and,
//     only when it is the first or last pod with its labels, the identity sets it belongs to.
//   - rules: Ingress and Egress, which name sets and never addresses or pods; they change
//     only when a policy changes.
//
// A datapath renders sets as nftables sets/maps or eBPF maps, so lookups do not grow with
// the number of pods. Identity numbers are stable while an identity exists, but are not the
// same from run to run; String gives a rendering without them for comparisons.
type PolicyState struct {
	// Identities describes every identity in use.
	Identities map[Identity]IdentityLabels
	// Endpoints maps every pod address of the cluster to its pod and identity. An address not
	// here is not a pod's (it has no identity: only CIDR sets and "any peer" rules match it).
	Endpoints map[netip.Addr]EndpointEntry
	// NodeAddresses maps node addresses to node names. Ingress from a pod's own node is
	// always allowed (NetworkPolicy's rule, so that kubelet probes work).
	NodeAddresses map[netip.Addr]string
	// IdentitySets are the pods a selector picks, as identities, by set name.
	IdentitySets map[SetName]IdentitySet
	// CIDRSets are address ranges by set name (an ipBlock with its excepts already removed, a
	// ClusterNetworkPolicy's networks, the addresses of selected nodes).
	CIDRSets map[SetName]CIDRSet
	// NamedPorts maps a container port name to the (address, protocol, port) of every pod
	// that declares it. A rule with a named port matches a packet whose destination address,
	// protocol and port are an element of the name's set, so the name resolves per
	// destination pod.
	NamedPorts map[string][]NamedPortEntry
	Ingress    DirectionPolicy
	Egress     DirectionPolicy
}

// Identity is the number standing for a distinct set of policy-relevant labels (namespace
// and pod labels restricted to the keys some selector uses, plus the namespace name).
// 0 is no identity: an address outside every pod.
type Identity uint32

// IdentityLabels are the labels an identity stands for.
type IdentityLabels struct {
	Namespace       string
	NamespaceLabels map[string]string // only the keys some namespace selector uses
	PodLabels       map[string]string // only the keys some pod selector uses
}

// PodRef names a pod.
type PodRef struct {
	Namespace, Name string
}

func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// EndpointEntry is what the datapath knows about one pod address.
type EndpointEntry struct {
	Pod      PodRef
	Node     string
	Identity Identity
}

// SetName names a set. It is derived from the set's definition (a hash), so the same
// selector gets the same name in every run and in every order of events; it is short enough
// for nftables set names.
type SetName string

// IdentitySet is the identities a selector picks.
type IdentitySet struct {
	Selector string     // the selector, as a user reads it, for logs and explain
	Members  []Identity // sorted
}

// CIDRSet is a set of address ranges. Prefixes never overlap and are sorted, so an ipBlock's
// except entries need no separate treatment: they are already carved out.
type CIDRSet struct {
	Source   string // what it was made from, as a user reads it
	Prefixes []netip.Prefix
}

// NamedPortEntry is one pod's port of a given name.
type NamedPortEntry struct {
	Addr     netip.Addr
	Protocol Protocol
	Port     uint16
}

// DirectionPolicy holds one direction's rules in evaluation order. For a packet at a local
// endpoint whose identity is L (the destination for ingress, the source for egress) and the
// other side (the peer):
//
//  1. Admin: the first rule whose Subject holds L and that matches the peer and port decides:
//     Accept allows, Deny drops, Pass goes on to step 2.
//  2. NetworkPolicy: if L is in Isolated (some NetworkPolicy selects it for this direction),
//     the packet is allowed if any rule matches and dropped otherwise (default deny,
//     attributed to the policies in Isolation). Order does not matter: these rules only allow.
//  3. Baseline: as Admin; Pass goes on to step 4.
//  4. Allowed.
//
// Only the first packet of a connection is judged: replies and related packets of an allowed
// connection pass (conntrack established/related accept).
type DirectionPolicy struct {
	Admin         []Rule
	NetworkPolicy []Rule
	// Isolated is the identity set of every pod isolated in this direction.
	Isolated SetName
	// Isolation lists the NetworkPolicies that isolate pods, with their subjects, for default
	// deny attribution.
	Isolation []IsolationEntry
	Baseline  []Rule
}

// IsolationEntry records that a NetworkPolicy isolates the pods of Subject.
type IsolationEntry struct {
	Policy  PolicyRef
	Subject SetName
}

// Rule is one compiled policy rule.
type Rule struct {
	Attribution
	// Priority orders Admin and Baseline policies (lower first); 0 for NetworkPolicy.
	Priority int32
	// Subject is the identity set of the local pods the rule applies to.
	Subject SetName
	// AnyPeer makes the rule match every peer address; otherwise it matches a peer in any of
	// Peers (and none when Peers is empty).
	AnyPeer bool
	Peers   []Peer
	// AnyPort makes the rule match every protocol and port; otherwise it matches any of Ports
	// (and none when Ports is empty).
	AnyPort bool
	Ports   []PortMatch
	// Note explains a non-obvious compilation (e.g. a fail-closed rule), for explain.
	Note string
}

// Peer is one peer a rule matches: exactly one of the fields is set.
type Peer struct {
	Identities SetName // the peer address is a pod whose identity is in this set
	CIDRs      SetName // the peer address is in this CIDR set (pod or not)
}

// PortMatch matches the destination protocol and port. Exactly one of a port range and a
// named port is used: a range FirstPort..LastPort (inclusive; 0..65535 means every port of
// Protocol), or NamedPort, which matches when (destination address, protocol, port) is in
// NamedPorts[NamedPort]. Protocol 0 (only with a named port) means the named port's own.
type PortMatch struct {
	Protocol  Protocol
	FirstPort uint16
	LastPort  uint16
	NamedPort string
}

// Protocol is an IP protocol number, as nftables' meta l4proto and eBPF see it.
type Protocol uint8

// The protocols policies name.
const (
	ProtocolTCP  Protocol = 6
	ProtocolUDP  Protocol = 17
	ProtocolSCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case ProtocolTCP:
		return "TCP"
	case ProtocolUDP:
		return "UDP"
	case ProtocolSCTP:
		return "SCTP"
	case 0:
		return "any"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// ParseProtocol reads TCP, UDP or SCTP (as Kubernetes spells them).
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "TCP", "tcp":
		return ProtocolTCP, nil
	case "UDP", "udp":
		return ProtocolUDP, nil
	case "SCTP", "sctp":
		return ProtocolSCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q: want TCP, UDP or SCTP", s)
}

// Direction is the side of a local endpoint a rule guards.
type Direction string

// The two directions.
const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// Tier is where a rule sits in the evaluation order.
type Tier string

// The tiers, in evaluation order.
const (
	TierAdmin         Tier = "admin"
	TierNetworkPolicy Tier = "networkpolicy"
	TierBaseline      Tier = "baseline"
)

// Action is what a matching rule does. NetworkPolicy rules are all Accept.
type Action string

// The actions.
const (
	ActionAccept Action = "Accept"
	ActionDeny   Action = "Deny"
	ActionPass   Action = "Pass"
)

// PolicyRef names a policy: a NetworkPolicy has a namespace, a ClusterNetworkPolicy none.
type PolicyRef struct {
	Namespace, Name string
}

func (p PolicyRef) String() string {
	if p.Namespace == "" {
		return p.Name
	}
	return p.Namespace + "/" + p.Name
}

// Attribution says which policy rule a verdict comes from; a datapath counts and reports
// drops and accepts by it.
type Attribution struct {
	Tier      Tier
	Policy    PolicyRef
	Direction Direction
	Index     int    // the rule's position in the policy's ingress or egress list
	Name      string // the rule's name (ClusterNetworkPolicy rules may have one)
	Action    Action
}

// ID is a stable text key for counters and logs, e.g. "admin/deny-all/ingress/0".
func (a Attribution) ID() string {
	return fmt.Sprintf("%s/%s/%s/%d", a.Tier, a.Policy, a.Direction, a.Index)
}

// Rules returns the rules of one direction.
func (s *PolicyState) Rules(d Direction) *DirectionPolicy {
	if d == Egress {
		return &s.Egress
	}
	return &s.Ingress
}
