package flow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/datapath/nftdp"
	"github.com/twill-net/twill/internal/testutil"
)

// kernelState: pod x/a (10.99.0.1, fd99::1) on this node is isolated for ingress with no rule
// allowing anything (default deny), and an admin policy denies its egress to 10.99.0.3 on
// UDP port 53.
func kernelState() *datapath.PolicyState {
	a4, a6 := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("fd99::1")
	pod := datapath.PodRef{Namespace: "x", Name: "a"}
	return &datapath.PolicyState{
		Identities: map[datapath.Identity]datapath.IdentityLabels{1: {Namespace: "x"}},
		Endpoints: map[netip.Addr]datapath.EndpointEntry{
			a4: {Pod: pod, Node: "n1", Identity: 1},
			a6: {Pod: pod, Node: "n1", Identity: 1},
		},
		IdentitySets: map[datapath.SetName]datapath.IdentitySet{
			"id-x":             {Selector: "all pods in namespace x", Members: []datapath.Identity{1}},
			"isolated-ingress": {Members: []datapath.Identity{1}},
			"isolated-egress":  {},
		},
		CIDRSets: map[datapath.SetName]datapath.CIDRSet{
			"blocked": {Source: "10.99.0.3/32", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.99.0.3/32")}},
		},
		Ingress: datapath.DirectionPolicy{
			Isolated:  "isolated-ingress",
			Isolation: []datapath.IsolationEntry{{Policy: datapath.PolicyRef{Namespace: "x", Name: "deny-all"}, Subject: "id-x"}},
		},
		Egress: datapath.DirectionPolicy{
			Isolated: "isolated-egress",
			Admin: []datapath.Rule{{
				Attribution: datapath.Attribution{Tier: datapath.TierAdmin, Policy: datapath.PolicyRef{Name: "no-dns-there"},
					Direction: datapath.Egress, Index: 0, Action: datapath.ActionDeny},
				Priority: 10, Subject: "id-x", Peers: []datapath.Peer{{CIDRs: "blocked"}},
				Ports: []datapath.PortMatch{{Protocol: datapath.ProtocolUDP, FirstPort: 53, LastPort: 53}},
			}},
		},
	}
}

// In a namespace of its own, the real policy table drops packets and the receiver turns its
// drop log into events naming the pod, the direction and the rule or default deny.
func TestKernelDropsBecomeAttributedEvents(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t, "drops", fmt.Sprint(os.Getpid()))
	// A veth pair with both ends in the namespace carries the addresses (the kernel here has
	// no pods links); packets between them go through the output hook, as a node's own do.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "twt-pods"}, PeerName: "twt-peer"}
	if err := n.NL.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"twt-pods", "twt-peer"} {
		l, err := n.NL.LinkByName(name)
		if err == nil {
			err = n.NL.LinkSetUp(l)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []string{"10.99.0.1/24", "10.99.0.2/24", "fd99::1/64", "fd99::2/64"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = netlinkNoDAD
		if err := n.NL.AddrAdd(veth, addr); err != nil {
			t.Fatalf("address %s: %v", a, err)
		}
	}
	var dp *nftdp.Reconciler
	if err := n.NS.Do(func(ns.NetNS) error {
		var err error
		if dp, err = nftdp.NewKernel("n1", nil); err != nil {
			return err
		}
		return dp.ApplyPolicy(context.Background(), kernelState())
	}); err != nil {
		t.Fatalf("policy table in %s: %v", n.Name, err)
	}

	hub := NewHub(64)
	pods := func(a netip.Addr) (datapath.PodRef, bool) {
		if a == netip.MustParseAddr("10.99.0.1") || a == netip.MustParseAddr("fd99::1") {
			return datapath.PodRef{Namespace: "x", Name: "a"}, true
		}
		return datapath.PodRef{}, false
	}
	r, err := NewReceiver(ReceiverConfig{Group: nftdp.DropLogGroup, NetNS: int(n.NS.Fd()), Attribute: dp.DropAttribution, Pods: pods, Hub: hub})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	events := hub.Subscribe(ctx)
	ran := make(chan error, 1)
	runCtx, stop := context.WithCancel(ctx)
	go func() { ran <- r.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("receiver: %v", err)
		}
	})

	for _, tc := range []struct {
		name     string
		from, to netip.AddrPort
		want     DropEvent
	}{
		{"default deny of ingress", ap("10.99.0.2:40001"), ap("10.99.0.1:7777"), DropEvent{
			Direction: "ingress", Pod: "x/a", PodAddress: addr("10.99.0.1"), Peer: addr("10.99.0.2"),
			Tier: "networkpolicy", Rule: "default-deny", Reason: ReasonDefaultDeny}},
		{"default deny of ingress, IPv6", ap("[fd99::2]:40002"), ap("[fd99::1]:7777"), DropEvent{
			Direction: "ingress", Pod: "x/a", PodAddress: addr("fd99::1"), Peer: addr("fd99::2"),
			Tier: "networkpolicy", Rule: "default-deny", Reason: ReasonDefaultDeny}},
		{"admin deny of egress", ap("10.99.0.1:40003"), ap("10.99.0.3:53"), DropEvent{
			Direction: "egress", Pod: "x/a", PodAddress: addr("10.99.0.1"), Peer: addr("10.99.0.3"),
			Tier: "admin", Policy: "no-dns-there", Rule: "0", Reason: ReasonPolicy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.want.Source, tc.want.Destination = tc.from.Addr(), tc.to.Addr()
			tc.want.Protocol, tc.want.SrcPort, tc.want.DstPort = "udp", tc.from.Port(), tc.to.Port()
			// The receiver binds its group while this runs: send until an event comes.
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				sendUDP(t, n, tc.from, tc.to)
				select {
				case e := <-events:
					if e.Source != tc.from.Addr() || e.SrcPort != tc.from.Port() {
						continue // a retry of an earlier case, logged late
					}
					e.Time = time.Time{}
					if e != tc.want {
						t.Fatalf("event:\n got %+v\nwant %+v", e, tc.want)
					}
					return
				case <-tick.C:
				case <-ctx.Done():
					t.Fatalf("no drop event for %s -> %s", tc.from, tc.to)
				}
			}
		})
	}
	// The counters agree that what was logged was dropped.
	var counters map[string]datapath.PolicyCounter
	if err := n.NS.Do(func(ns.NetNS) error {
		var err error
		counters, err = dp.PolicyCounters(ctx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if c := counters[datapath.DefaultDenyCounter(datapath.Ingress)]; c.Packets == 0 {
		t.Errorf("default-deny ingress counted nothing, though its drops were logged")
	}
	if r.Undecodable() != 0 {
		t.Errorf("%d log messages undecodable", r.Undecodable())
	}
}

const netlinkNoDAD = 0x02 // IFA_F_NODAD

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// sendUDP sends one datagram inside n from a local address to another address.
func sendUDP(t *testing.T, n *testutil.NetNS, from, to netip.AddrPort) {
	t.Helper()
	err := n.NS.Do(func(ns.NetNS) error {
		c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(from), net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("drop me"))
		return err
	})
	if err != nil && !isPermissionDenied(err) { // a drop in output fails the send with EPERM
		t.Fatalf("send %s -> %s: %v", from, to, err)
	}
}

func isPermissionDenied(err error) bool { return errors.Is(err, syscall.EPERM) }
