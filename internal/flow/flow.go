// Package flow is the agent's drop event pipeline: the policy datapath logs every packet it
// drops to an nflog group (nftdp.DropLogGroup, rate-limited, prefixed with the name of the
// counter that counted the drop); the Receiver reads those messages in the node's network
// namespace, decodes the packet's addresses and ports, attributes the drop to its tier,
// policy and rule (or default deny) and to the local pod it concerns, and publishes a
// DropEvent to a Hub. The Hub keeps a bounded ring of recent events, served on the agent's
// HTTP server (/v1/drops, read by `twill policy drops`), and hands live events to
// subscribers: the place where the flow observability to come plugs in.
package flow

import (
	"net/netip"
	"time"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/metrics"
)

// Reasons a packet was dropped, as DropEvent.Reason spells them.
const (
	ReasonDefaultDeny = "default deny"      // isolated by a NetworkPolicy, allowed by none
	ReasonPolicy      = "policy"            // an Admin or Baseline tier rule with action Deny
	ReasonInvalid     = "conntrack invalid" // conntrack found the packet part of no connection
	ReasonUnknown     = "unknown"           // a prefix the table in force no longer holds
)

// DropEvent is one packet the policy datapath dropped, with what decided it.
type DropEvent struct {
	Time time.Time `json:"time"`
	// Direction is the policy direction that dropped the packet (ingress: on its way into
	// Pod; egress: on its way out of Pod); empty for conntrack-invalid drops.
	Direction string `json:"direction,omitempty"`
	// Pod is the local pod the drop concerns, "namespace/name"; empty when no pod of this
	// node has the address (a pod just deleted).
	Pod string `json:"pod,omitempty"`
	// PodAddress is the pod's side of the packet, Peer the other side.
	PodAddress netip.Addr `json:"podAddress"`
	Peer       netip.Addr `json:"peer"`
	// Source and Destination are the packet's addresses; SrcPort and DstPort its ports (TCP,
	// UDP, SCTP; 0 otherwise).
	Source      netip.Addr `json:"source"`
	Destination netip.Addr `json:"destination"`
	Protocol    string     `json:"protocol"` // tcp, udp, sctp, icmp, icmpv6, or the number
	SrcPort     uint16     `json:"srcPort,omitempty"`
	DstPort     uint16     `json:"dstPort,omitempty"`
	// ICMPType and ICMPCode are set for ICMP and ICMPv6.
	ICMPType uint8 `json:"icmpType,omitempty"`
	ICMPCode uint8 `json:"icmpCode,omitempty"`
	// Tier, Policy and Rule name the rule that dropped the packet, as the verdict metrics
	// label them: Rule is the rule's index in its policy, "default-deny" or
	// "conntrack-invalid".
	Tier   string `json:"tier,omitempty"`
	Policy string `json:"policy,omitempty"`
	Rule   string `json:"rule"`
	Reason string `json:"reason"`
}

// Attributor turns a drop log prefix into the datapath's counter key (an Attribution ID,
// datapath.DefaultDenyCounter or datapath.CounterInvalid): nftdp.Reconciler.DropAttribution.
type Attributor func(prefix string) (key string, ok bool)

// PodResolver names the local pod that has an address.
type PodResolver func(netip.Addr) (pod datapath.PodRef, ok bool)

// attribution is what a counter key says about a drop.
type attribution struct {
	tier, policy, direction, rule, reason string
}

// attributionOf reads a counter key, with the same labels as the verdict metrics.
func attributionOf(key string) attribution {
	l := metrics.LabelsOf(key, nil)
	a := attribution{tier: l.Tier, policy: l.Policy, direction: l.Direction, rule: l.Rule, reason: ReasonPolicy}
	switch key {
	case datapath.CounterInvalid:
		a.reason = ReasonInvalid
	case datapath.DefaultDenyCounter(datapath.Ingress), datapath.DefaultDenyCounter(datapath.Egress):
		a.reason = ReasonDefaultDeny
	}
	return a
}
