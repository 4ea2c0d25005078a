package cniserver_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/cniserver/cnitest"
)

// TestPodTraffic sends real TCP between a pod and its node and between two pods on the node,
// over IPv4 and IPv6, with a fresh namespace's defaults plus the forwarding switches the agent
// turns on.
func TestPodTraffic(t *testing.T) {
	f := newFixture(t, nil)
	node := handleIn(t, f.node)
	// The node's own addresses live on its loopback: a stand-in for its real interface.
	lo := mustLink(t, node, "lo")
	if err := node.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.51.100.1/32", "2001:db8:ff::1/128"} {
		addr, _ := netlink.ParseAddr(a)
		// No duplicate address detection: the test uses the address at once.
		addr.Flags = unix.IFA_F_NODAD
		if err := node.AddrAdd(lo, addr); err != nil {
			t.Fatal(err)
		}
	}
	runIn(t, f.node, func() error {
		// Strict reverse-path filtering too: the node's /32 route to each pod must satisfy it.
		for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/rp_filter"} {
			if _, err := sysctl.Sysctl(key, "1"); err != nil {
				return err
			}
		}
		return nil
	})

	podA := cnitest.NewNetns(t, "poda")
	podB := cnitest.NewNetns(t, "podb")
	f.add(request("a", podA))
	f.add(request("b", podB))
	ipsB := allocatedIPs(f.alloc, handleOf(request("b", podB)))

	t.Run("pod to node", func(t *testing.T) {
		for _, addr := range []string{"198.51.100.1:0", "[2001:db8:ff::1]:0"} {
			target := tcpEcho(t, f.node, addr)
			if err := tcpRoundTrip(podA, target); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("node to pod", func(t *testing.T) {
		for _, ip := range ipsB {
			target := tcpEcho(t, podB, netip.AddrPortFrom(ip, 0).String())
			if err := tcpRoundTrip(f.node, target); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("pod to pod through the node", func(t *testing.T) {
		for _, ip := range ipsB {
			target := tcpEcho(t, podB, netip.AddrPortFrom(ip, 0).String())
			if err := tcpRoundTrip(podA, target); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("pod source address is its own", func(t *testing.T) {
		// The node sees the pod's allocated address as the peer, not something rewritten.
		target := tcpEcho(t, f.node, "198.51.100.1:0")
		var local net.Addr
		runIn(t, podA, func() error {
			c, err := net.Dial("tcp", target)
			if err != nil {
				return err
			}
			local = c.LocalAddr()
			return c.Close()
		})
		ipsA := allocatedIPs(f.alloc, handleOf(request("a", podA)))
		if host, _, _ := net.SplitHostPort(local.String()); host != ipsA[0].String() {
			t.Errorf("pod connected from %s, want its address %s", host, ipsA[0])
		}
	})
}
