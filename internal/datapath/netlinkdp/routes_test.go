package netlinkdp

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/routing"
	"github.com/twill-net/twill/internal/testutil"
)

func blocksOf(i string) []string {
	return []string{"10.250." + i + ".0/24", "fd10:0:0:" + i + "::/64"}
}

// connected checks ping (both families) and TCP (both families) between every pair of pods.
func connected(t *testing.T, pods ...*labPod) {
	t.Helper()
	for i, a := range pods {
		for _, b := range pods[i+1:] {
			for _, ip := range b.ips {
				mustPing(t, a.testNS, ip)
				mustTCP(t, a.testNS, b.testNS, ip)
			}
			mustPing(t, b.testNS, a.ip4())
		}
	}
}

// checkPathMTU sends don't-fragment pings at exactly the pod MTU (they must arrive, and the
// sending node must not have fragmented the tunnel packet) and one byte over (must not arrive).
func checkPathMTU(t *testing.T, from *labPod, node *labNode, to *labPod, podMTU int, outerV6 bool) {
	t.Helper()
	for _, dst := range to.ips {
		headers := 20 + 8
		if dst.Is6() {
			headers = 40 + 8
		}
		fragsBefore := fragmentsCreated(t, node.testNS, outerV6)
		var err error
		for range 3 {
			if err = echo(from.testNS, dst, podMTU-headers, true, time.Second); err == nil {
				break
			}
		}
		if err != nil {
			t.Errorf("don't-fragment ping of %d bytes (the pod MTU) to %s: %v", podMTU, dst, err)
		}
		if after := fragmentsCreated(t, node.testNS, outerV6); after != fragsBefore {
			t.Errorf("the node fragmented %d tunnel packets for a pod-MTU ping to %s", after-fragsBefore, dst)
		}
		if err := echo(from.testNS, dst, podMTU-headers+1, true, 500*time.Millisecond); err == nil {
			t.Errorf("don't-fragment ping of %d bytes (pod MTU + 1) to %s arrived", podMTU+1, dst)
		} else {
			t.Logf("pod MTU + 1 to %s refused as it should: %v", dst, err)
		}
	}
	if podMTU >= 1500 {
		return
	}
	// The pod's own MTU refused the packet above; a pod with a wider MTU must be stopped by the
	// node's tunnel device all the same.
	setPodMTU(t, node, from, 1500)
	defer setPodMTU(t, node, from, podMTU)
	for _, dst := range to.ips {
		headers := 20 + 8
		if dst.Is6() {
			headers = 40 + 8
		}
		if err := echo(from.testNS, dst, podMTU-headers+1, true, 500*time.Millisecond); err == nil {
			t.Errorf("don't-fragment packet of pod MTU + 1 (%d) from a 1500-MTU pod crossed the tunnel to %s", podMTU+1, dst)
		}
	}
}

// setPodMTU sets the MTU of both ends of a pod's veth.
func setPodMTU(t *testing.T, node *labNode, pod *labPod, mtu int) {
	t.Helper()
	for _, end := range []struct {
		h    *netlink.Handle
		name string
	}{{node.nl, pod.hostVeth}, {pod.nl, "eth0"}} {
		link, err := end.h.LinkByName(end.name)
		if err == nil {
			err = end.h.LinkSetMTU(link, mtu)
		}
		if err != nil {
			t.Fatalf("setting MTU %d on %s: %v", mtu, end.name, err)
		}
	}
}

func vxlanDevice(t *testing.T, n *labNode) *netlink.Vxlan {
	t.Helper()
	link, err := n.nl.LinkByName(datapath.VXLANDevice)
	if err != nil {
		t.Fatalf("%s: %s: %v", n.node.Name, datapath.VXLANDevice, err)
	}
	vx, ok := link.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("%s is a %s", datapath.VXLANDevice, link.Type())
	}
	return vx
}

func TestVXLANOverIPv4Underlay(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLab(t)
	l.bridge("br0")
	n1 := l.node("n1", "br0", []string{"172.31.250.11/24"}, blocksOf("1"))
	n2 := l.node("n2", "br0", []string{"172.31.250.12/24"}, blocksOf("2"))
	n3 := l.node("n3", "br0", []string{"172.31.250.13/24"}, blocksOf("3"))
	cfg := routing.Config{Mode: routing.ModeVXLAN}
	// A host that makes new links without IPv6 must still get IPv6 on the tunnel.
	l.sysctl(n1.testNS, "net/ipv6/conf/default/disable_ipv6", "1")
	_, underlay := n1.apply(t, cfg, n2, n3)
	l.sysctl(n1.testNS, "net/ipv6/conf/default/disable_ipv6", "0")
	n2.apply(t, cfg, n1, n3)
	n3.apply(t, cfg, n1, n2)

	if underlay.Link != "eth0" || underlay.MTU != 1500 || len(underlay.Subnets) != 1 || underlay.Subnets[0] != netip.MustParsePrefix("172.31.250.0/24") {
		t.Errorf("DetectUnderlay = %+v, want eth0, MTU 1500, subnet 172.31.250.0/24", underlay)
	}
	podMTU := routing.PodMTU(underlay.MTU, cfg.Mode, false, 0)
	if podMTU != 1450 {
		t.Fatalf("pod MTU %d, want 1450", podMTU)
	}
	vx := vxlanDevice(t, n1)
	wantMAC := routing.VTEPMAC(netip.MustParseAddr("172.31.250.11"))
	if vx.MTU != podMTU || vx.HardwareAddr.String() != wantMAC.String() || vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning {
		t.Errorf("vxlan device: mtu %d mac %s id %d port %d learning %v; want mtu %d mac %s id 1 port 8472 no learning",
			vx.MTU, vx.HardwareAddr, vx.VxlanId, vx.Port, vx.Learning, podMTU, wantMAC)
	}
	if !strings.Contains(n1.kernelState(t), "addr "+routing.VTEPLinkLocal(wantMAC).String()+"/64") {
		t.Errorf("vxlan device lacks its link-local %s:\n%s", routing.VTEPLinkLocal(wantMAC), n1.kernelState(t))
	}

	p1, p2, p3 := l.pod(n1, "p1", podMTU), l.pod(n2, "p2", podMTU), l.pod(n3, "p3", podMTU)
	connected(t, p1, p2, p3)
	checkPathMTU(t, p1, n1, p2, podMTU, false)
	// The node itself reaches a remote pod too; it sends with its node IP and the answer comes
	// back over the underlay, which loose reverse-path filtering (Debian's default) accepts.
	l.sysctl(n1.testNS, "net/ipv4/conf/all/rp_filter", "2")
	mustPing(t, n1.testNS, p2.ip4())

	t.Run("second apply changes nothing", func(t *testing.T) {
		before, changes := n1.kernelState(t), n1.routes.Changes()
		n1.apply(t, cfg, n3, n2)
		if after := n1.kernelState(t); after != before || n1.routes.Changes() != changes {
			t.Errorf("second apply made %d changes; before:\n%s\nafter:\n%s", n1.routes.Changes()-changes, before, after)
		}
	})

	t.Run("stale entries go, foreign ones stay", func(t *testing.T) {
		vx := vxlanDevice(t, n1)
		stray := netip.MustParseAddr("172.31.250.99")
		strayMAC := routing.VTEPMAC(stray)
		l.must(n1.nl.NeighAdd(&netlink.Neigh{LinkIndex: vx.Index, Family: unix.AF_INET, State: unix.NUD_PERMANENT, IP: stray.AsSlice(), HardwareAddr: strayMAC}))
		l.must(n1.nl.NeighAppend(&netlink.Neigh{LinkIndex: vx.Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: unix.NUD_PERMANENT, IP: stray.AsSlice(), HardwareAddr: strayMAC}))
		l.must(n1.nl.RouteAdd(&netlink.Route{Dst: ipNet("10.250.99.0/24"), Type: unix.RTN_BLACKHOLE, Protocol: datapath.RouteProtocolRemote}))
		l.must(n1.nl.RouteAdd(&netlink.Route{Dst: ipNet("10.250.98.0/24"), Type: unix.RTN_BLACKHOLE, Protocol: unix.RTPROT_STATIC}))
		n1.apply(t, cfg, n2, n3)
		state := n1.kernelState(t)
		if strings.Contains(state, stray.String()) || strings.Contains(state, strayMAC.String()) || strings.Contains(state, "10.250.99.0") {
			t.Errorf("stale entries survived:\n%s", state)
		}
		static, err := n1.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: unix.RTPROT_STATIC}, netlink.RT_FILTER_PROTOCOL)
		l.must(err)
		if len(static) != 1 || static[0].Dst.String() != "10.250.98.0/24" {
			t.Errorf("a route twill does not own was touched: static routes now %v", static)
		}
	})

	t.Run("removing a peer removes its entries", func(t *testing.T) {
		n1.apply(t, cfg, n2)
		state := n1.kernelState(t)
		n3MAC := routing.VTEPMAC(netip.MustParseAddr("172.31.250.13"))
		for _, gone := range []string{"172.31.250.13", n3MAC.String(), "10.250.3.0", "fd10:0:0:3::", routing.VTEPLinkLocal(n3MAC).String()} {
			if strings.Contains(state, gone) {
				t.Errorf("%s still in n1's state after n3 left:\n%s", gone, state)
			}
		}
		mustPing(t, p1.testNS, p2.ip4())
		if err := echo(p1.testNS, p3.ip4(), 56, false, 500*time.Millisecond); err == nil {
			t.Errorf("p1 still reaches p3 after n3 left n1's peers")
		}
		n1.apply(t, cfg, n2, n3)
		mustPing(t, p1.testNS, p3.ip4())
	})

	t.Run("cleanup leaves only what is not twill's routing", func(t *testing.T) {
		l.must(n1.ns.Do(func(ns.NetNS) error { return n1.routes.Cleanup() }))
		if _, err := n1.nl.LinkByName(datapath.VXLANDevice); err == nil {
			t.Errorf("%s survived Cleanup", datapath.VXLANDevice)
		}
		remote, err := n1.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: datapath.RouteProtocolRemote}, netlink.RT_FILTER_PROTOCOL)
		l.must(err)
		if len(remote) != 0 {
			t.Errorf("routes left after Cleanup: %v", remote)
		}
		pods, err := n1.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: datapath.RouteProtocolPod}, netlink.RT_FILTER_PROTOCOL)
		l.must(err)
		if len(pods) != 2 {
			t.Errorf("pod routes after Cleanup: %v, want p1's two", pods)
		}
		changes := n1.routes.Changes()
		l.must(n1.ns.Do(func(ns.NetNS) error { return n1.routes.Cleanup() }))
		if n1.routes.Changes() != changes {
			t.Errorf("a second Cleanup changed something")
		}
	})
}

func TestVXLANOverIPv6Underlay(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLab(t)
	l.bridge("br0")
	n1 := l.node("n1", "br0", []string{"fd00:250::11/64"}, blocksOf("1"))
	n2 := l.node("n2", "br0", []string{"fd00:250::12/64"}, blocksOf("2"))
	cfg := routing.Config{Mode: routing.ModeVXLAN, VNI: 42, Port: 4789}
	state, underlay := n1.apply(t, cfg, n2)
	n2.apply(t, cfg, n1)
	podMTU := routing.PodMTU(underlay.MTU, cfg.Mode, true, 0)
	if podMTU != 1430 || state.VXLAN == nil || state.VXLAN.MTU != 1430 {
		t.Fatalf("pod MTU %d, state %v; want 1430 over an IPv6 underlay", podMTU, state.VXLAN)
	}
	if vx := vxlanDevice(t, n1); vx.MTU != 1430 || vx.VxlanId != 42 || vx.Port != 4789 {
		t.Errorf("vxlan device mtu %d id %d port %d, want 1430 42 4789", vx.MTU, vx.VxlanId, vx.Port)
	}
	// With no IPv4 underlay, IPv4 pods go through the peer's IPv6 link-local (RTA_VIA).
	p1, p2 := l.pod(n1, "p1", podMTU), l.pod(n2, "p2", podMTU)
	connected(t, p1, p2)
	checkPathMTU(t, p1, n1, p2, podMTU, true)
	before, changes := n1.kernelState(t), n1.routes.Changes()
	n1.apply(t, cfg, n2)
	if after := n1.kernelState(t); after != before || n1.routes.Changes() != changes {
		t.Errorf("second apply changed the kernel; before:\n%s\nafter:\n%s", before, after)
	}
}

func TestNativeRouting(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLab(t)
	l.bridge("br0")
	n1 := l.node("n1", "br0", []string{"172.31.250.11/24", "fd00:250::11/64"}, blocksOf("1"))
	n2 := l.node("n2", "br0", []string{"172.31.250.12/24", "fd00:250::12/64"}, blocksOf("2"))

	// Start in vxlan mode, then switch: routes are replaced and the device goes away.
	vxlanCfg := routing.Config{Mode: routing.ModeVXLAN}
	n1.apply(t, vxlanCfg, n2)
	n2.apply(t, vxlanCfg, n1)
	p1, p2 := l.pod(n1, "p1", 1500), l.pod(n2, "p2", 1500)
	mustPing(t, p1.testNS, p2.ip4())

	cfg := routing.Config{Mode: routing.ModeNative}
	state, underlay := n1.apply(t, cfg, n2)
	n2.apply(t, cfg, n1)
	if state.VXLAN != nil {
		t.Errorf("native state has a vxlan device: %v", state.VXLAN)
	}
	if _, err := n1.nl.LinkByName(datapath.VXLANDevice); err == nil {
		t.Errorf("%s still exists in native mode", datapath.VXLANDevice)
	}
	podMTU := routing.PodMTU(underlay.MTU, cfg.Mode, false, 0)
	if podMTU != 1500 {
		t.Errorf("native pod MTU %d, want 1500", podMTU)
	}
	for _, dst := range []string{"10.250.2.1", "fd10:0:0:2::1"} {
		r, err := n1.nl.RouteGet(net.ParseIP(dst))
		l.must(err)
		eth0, _ := n1.nl.LinkByName("eth0")
		if len(r) != 1 || r[0].LinkIndex != eth0.Attrs().Index || r[0].Gw == nil {
			t.Errorf("route to %s: %v, want via n2 on eth0", dst, r)
		}
	}
	connected(t, p1, p2)
	checkPathMTU(t, p1, n1, p2, podMTU, false)

	t.Run("routes that leave the link to the kernel are idempotent too", func(t *testing.T) {
		noDev := datapath.RouteState{}
		for _, r := range state.Routes {
			r.Dev = ""
			noDev.Routes = append(noDev.Routes, r)
		}
		apply := func() {
			l.must(n1.ns.Do(func(ns.NetNS) error { return n1.routes.ApplyRoutes(context.Background(), noDev) }))
		}
		apply()
		before, changes := n1.kernelState(t), n1.routes.Changes()
		apply()
		if after := n1.kernelState(t); after != before || n1.routes.Changes() != changes {
			t.Errorf("second apply changed the kernel; before:\n%s\nafter:\n%s", before, after)
		}
		mustPing(t, p1.testNS, p2.ip6())
	})
}

func TestAutoRouting(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLab(t)
	// Two subnets, routed by the underlay namespace, which knows nothing of pod blocks: pod
	// traffic crosses it only inside the tunnel.
	l.bridge("br0", "172.31.250.1/24")
	l.bridge("br1", "172.31.251.1/24")
	n1 := l.node("n1", "br0", []string{"172.31.250.11/24"}, blocksOf("1"), "172.31.251.0/24 via 172.31.250.1")
	n2 := l.node("n2", "br0", []string{"172.31.250.12/24"}, blocksOf("2"), "172.31.251.0/24 via 172.31.250.1")
	n3 := l.node("n3", "br1", []string{"172.31.251.13/24"}, blocksOf("3"), "172.31.250.0/24 via 172.31.251.1")
	cfg := routing.Config{Mode: routing.ModeAuto}
	state, underlay := n1.apply(t, cfg, n2, n3)
	n2.apply(t, cfg, n1, n3)
	n3.apply(t, cfg, n1, n2)

	podMTU := routing.PodMTU(underlay.MTU, cfg.Mode, false, 0)
	if podMTU != 1450 {
		t.Errorf("auto pod MTU %d, want 1450 (some peers are behind the tunnel)", podMTU)
	}
	want := map[string]string{
		"10.250.2.0/24": "172.31.250.12 dev eth0", // same subnet: native
		"10.250.3.0/24": "172.31.251.13 dev " + datapath.VXLANDevice + " onlink",
	}
	for _, r := range state.Routes {
		if w, ok := want[r.Dst.String()]; ok && !strings.HasSuffix(r.String(), "via "+w) {
			t.Errorf("route %v, want via %s", r, w)
		}
	}
	// n2 is native for IPv4 but tunnelled for IPv6, as it has no IPv6 node address.
	if len(state.FDB) != 2 || state.FDB[0].Dst != netip.MustParseAddr("172.31.250.12") || state.FDB[1].Dst != netip.MustParseAddr("172.31.251.13") {
		t.Errorf("FDB %v, want n2 and n3", state.FDB)
	}
	p1, p2, p3 := l.pod(n1, "p1", podMTU), l.pod(n2, "p2", podMTU), l.pod(n3, "p3", podMTU)
	connected(t, p1, p2, p3)
	checkPathMTU(t, p1, n1, p3, podMTU, false)
}
