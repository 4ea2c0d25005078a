package flow

import (
	"net/netip"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/datapath"
)

// testReceiver attributes prefixes as the policy datapath would for a table holding a default
// deny of each direction, conntrack-invalid and one admin Deny rule, and knows pod x/a.
func testReceiver(t *testing.T) *Receiver {
	t.Helper()
	keys := map[string]string{
		"default-deny-ingress": datapath.DefaultDenyCounter(datapath.Ingress),
		"default-deny-egress":  datapath.DefaultDenyCounter(datapath.Egress),
		"ct-invalid":           datapath.CounterInvalid,
		"r-dfc8b4852a87":       "admin/no-ssh/ingress/0",
		"r-0000000000aa":       "networkpolicy/x/deny-ish/egress/2",
	}
	pods := map[netip.Addr]datapath.PodRef{
		addr("10.0.0.1"): {Namespace: "x", Name: "a"},
		addr("fd00::1"):  {Namespace: "x", Name: "a"},
	}
	r, err := NewReceiver(ReceiverConfig{
		Attribute: func(p string) (string, bool) { k, ok := keys[p]; return k, ok },
		Pods:      func(a netip.Addr) (datapath.PodRef, bool) { p, ok := pods[a]; return p, ok },
		Hub:       NewHub(8),
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestEventsNameThePodThePolicyAndTheRule(t *testing.T) {
	r := testReceiver(t)
	now := time.Unix(1700000000, 0)
	in4 := packet{src: addr("10.0.1.3"), dst: addr("10.0.0.1"), proto: protoTCP, srcPort: 40000, dstPort: 22}
	out4 := packet{src: addr("10.0.0.1"), dst: addr("192.0.2.9"), proto: protoUDP, srcPort: 5353, dstPort: 53}
	in6 := packet{src: addr("fd00::9"), dst: addr("fd00::1"), proto: protoICMPv6, icmpType: 128}
	for _, tc := range []struct {
		name, prefix string
		p            packet
		want         DropEvent
	}{
		{"admin deny of ingress", "r-dfc8b4852a87", in4, DropEvent{Direction: "ingress", Pod: "x/a",
			PodAddress: in4.dst, Peer: in4.src, Protocol: "tcp", SrcPort: 40000, DstPort: 22,
			Tier: "admin", Policy: "no-ssh", Rule: "0", Reason: ReasonPolicy}},
		{"default deny of egress", "default-deny-egress", out4, DropEvent{Direction: "egress", Pod: "x/a",
			PodAddress: out4.src, Peer: out4.dst, Protocol: "udp", SrcPort: 5353, DstPort: 53,
			Tier: "networkpolicy", Rule: "default-deny", Reason: ReasonDefaultDeny}},
		{"default deny of ingress, IPv6", "default-deny-ingress", in6, DropEvent{Direction: "ingress", Pod: "x/a",
			PodAddress: in6.dst, Peer: in6.src, Protocol: "icmpv6", ICMPType: 128,
			Tier: "networkpolicy", Rule: "default-deny", Reason: ReasonDefaultDeny}},
		{"namespaced policy", "r-0000000000aa", out4, DropEvent{Direction: "egress", Pod: "x/a",
			PodAddress: out4.src, Peer: out4.dst, Protocol: "udp", SrcPort: 5353, DstPort: 53,
			Tier: "networkpolicy", Policy: "x/deny-ish", Rule: "2", Reason: ReasonPolicy}},
		{"conntrack invalid finds the local side", "ct-invalid", in4, DropEvent{Pod: "x/a",
			PodAddress: in4.dst, Peer: in4.src, Protocol: "tcp", SrcPort: 40000, DstPort: 22,
			Rule: "conntrack-invalid", Reason: ReasonInvalid}},
		{"a prefix the table no longer holds still finds the pod", "r-ffffffffffff", in4, DropEvent{
			Pod: "x/a", PodAddress: in4.dst, Peer: in4.src, Protocol: "tcp", SrcPort: 40000, DstPort: 22, Rule: "r-ffffffffffff", Reason: ReasonUnknown}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.want.Time, tc.want.Source, tc.want.Destination = now, tc.p.src, tc.p.dst
			if got := r.event(now, tc.prefix, tc.p); got != tc.want {
				t.Errorf("event:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestEventOfAPodThisNodeDoesNotKnow(t *testing.T) {
	r := testReceiver(t)
	p := packet{src: addr("10.0.1.3"), dst: addr("10.0.0.77"), proto: protoTCP, dstPort: 80}
	e := r.event(time.Now(), "default-deny-ingress", p)
	if e.Pod != "" || e.PodAddress != p.dst || e.Reason != ReasonDefaultDeny {
		t.Errorf("event %+v: want no pod, pod address %s, reason default deny", e, p.dst)
	}
}
