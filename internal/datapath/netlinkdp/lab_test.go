package netlinkdp

// A small lab local to these tests: an underlay namespace with bridges (and, when asked, routing
// between them), node namespaces attached to a bridge by a veth, and pod namespaces plumbed
// into a node the way the CNI server does it. Every namespace is named twt-*, created by the
// test, and removed by t.Cleanup whatever the outcome.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/routing"
	"github.com/twill-net/twill/internal/testutil"
)

// testNS is a named network namespace with a netlink handle bound to it.
type testNS struct {
	name string
	ns   ns.NetNS
	nl   *netlink.Handle
}

type lab struct {
	t      *testing.T
	suffix string
	ul     *testNS
}

func newLab(t *testing.T) *lab {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, suffix: hex.EncodeToString(b)}
	l.ul = l.newNS("ul")
	l.sysctl(l.ul, "net/ipv4/ip_forward", "1")
	l.sysctl(l.ul, "net/ipv6/conf/all/forwarding", "1")
	return l
}

// newNS creates twt-<role>-<suffix> (see testutil.NewNetNS).
func (l *lab) newNS(role string) *testNS {
	l.t.Helper()
	n := testutil.NewNetNS(l.t, role, l.suffix)
	return &testNS{name: n.Name, ns: n.NS, nl: n.NL}
}

func (l *lab) must(err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatal(err)
	}
}

// sysctl writes /proc/sys/<key> inside n (ns.Do locks the thread that opens the file).
func (l *lab) sysctl(n *testNS, key, value string) {
	l.t.Helper()
	l.must(n.ns.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	}))
}

// bridge makes a bridge in the underlay namespace; its addresses make the namespace the router
// between bridges.
func (l *lab) bridge(name string, addrs ...string) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	l.must(l.ul.nl.LinkAdd(br))
	for _, a := range addrs {
		l.must(l.ul.nl.AddrAdd(br, &netlink.Addr{IPNet: ipNet(a), Flags: unix.IFA_F_NODAD}))
	}
	l.must(l.ul.nl.LinkSetUp(br))
}

type labNode struct {
	*testNS
	node   routing.Node
	routes *Routes
	logs   *strings.Builder
}

// node makes a node namespace whose eth0 is plugged into bridge, with the given addresses
// (CIDR form; the first is the node IP) and extra "dst via gw" routes on eth0.
func (l *lab) node(name, bridge string, addrs, blocks []string, viaRouter ...string) *labNode {
	l.t.Helper()
	n := &labNode{testNS: l.newNS(name), logs: &strings.Builder{}}
	n.node.Name = name
	for _, a := range addrs {
		n.node.IPs = append(n.node.IPs, netip.MustParsePrefix(a).Addr())
	}
	for _, b := range blocks {
		n.node.Blocks = append(n.node.Blocks, netip.MustParsePrefix(b))
	}
	n.routes = New(slog.New(slog.NewTextHandler(n.logs, nil)))
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "to-" + name}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(n.ns.Fd()))}
	l.must(l.ul.nl.LinkAdd(veth))
	br, err := l.ul.nl.LinkByName(bridge)
	l.must(err)
	l.must(l.ul.nl.LinkSetMaster(veth, br))
	l.must(l.ul.nl.LinkSetUp(veth))
	eth0, err := n.nl.LinkByName("eth0")
	l.must(err)
	for _, a := range addrs {
		l.must(n.nl.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(a), Flags: unix.IFA_F_NODAD}))
	}
	l.must(n.nl.LinkSetUp(eth0))
	for _, r := range viaRouter {
		dst, gw, _ := strings.Cut(r, " via ")
		l.must(n.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(dst), Gw: net.ParseIP(gw)}))
	}
	l.must(n.ns.Do(func(ns.NetNS) error {
		if err := n.routes.EnableForwarding(); err != nil {
			return err
		}
		for _, key := range []string{"ipv4/ip_forward", "ipv6/conf/all/forwarding"} {
			if v, err := os.ReadFile("/proc/sys/net/" + key); err != nil || strings.TrimSpace(string(v)) != "1" {
				return fmt.Errorf("after EnableForwarding %s = %q (%v), want 1", key, v, err)
			}
		}
		return nil
	}))
	return n
}

// apply runs what the agent runs on this node: detect the underlay, compute, apply.
func (n *labNode) apply(t *testing.T, cfg routing.Config, peers ...*labNode) (datapath.RouteState, routing.Underlay) {
	t.Helper()
	var nodes []routing.Node
	for _, p := range peers {
		nodes = append(nodes, p.node)
	}
	var state datapath.RouteState
	var underlay routing.Underlay
	err := n.ns.Do(func(ns.NetNS) error {
		var err error
		if underlay, err = routing.DetectUnderlay(n.node.IPs[0]); err != nil {
			return err
		}
		state = routing.Compute(n.node, underlay, nodes, cfg)
		return n.routes.ApplyRoutes(context.Background(), state)
	})
	if err != nil {
		t.Fatalf("%s: apply: %v\nlog:\n%s", n.node.Name, err, n.logs)
	}
	return state, underlay
}

type labPod struct {
	*testNS
	ips      []netip.Addr // one per block of its node: the block's address ending in 10
	hostVeth string       // the node's end of the pod's veth
}

// pod plumbs a pod namespace into node n like the CNI server: a veth, the pod's /32 and /128,
// default routes via the link-local gateways with permanent neighbour entries, and the host's
// per-pod routes marked RouteProtocolPod (which the reconciler must leave alone).
func (l *lab) pod(n *labNode, name string, mtu int) *labPod {
	l.t.Helper()
	hostName := "veth-" + name
	p := &labPod{testNS: l.newNS(name), hostVeth: hostName}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName, MTU: mtu}, PeerName: "eth0",
		PeerMTU: uint32(mtu), PeerNamespace: netlink.NsFd(int(p.ns.Fd()))}
	l.must(n.nl.LinkAdd(veth))
	host, err := n.nl.LinkByName(hostName)
	l.must(err)
	l.must(n.nl.LinkSetUp(host))
	eth0, err := p.nl.LinkByName("eth0")
	l.must(err)
	l.must(p.nl.LinkSetUp(eth0))
	for _, b := range n.node.Blocks {
		ip := b.Addr().Next()
		for range 9 {
			ip = ip.Next()
		}
		p.ips = append(p.ips, ip)
		bits := ip.BitLen()
		l.must(p.nl.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Flags: unix.IFA_F_NODAD}))
		gw, family := netip.MustParseAddr(datapath.PodGatewayIPv4), unix.AF_INET
		if ip.Is6() {
			gw, family = netip.MustParseAddr(datapath.PodGatewayIPv6), unix.AF_INET6
		}
		l.must(p.nl.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: family, State: unix.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: host.Attrs().HardwareAddr}))
		l.must(p.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice(), Flags: int(netlink.FLAG_ONLINK),
			Dst: &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}}))
		l.must(n.nl.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Scope: unix.RT_SCOPE_LINK,
			Protocol: datapath.RouteProtocolPod, Dst: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, bits)}}))
	}
	return p
}

// ip4 and ip6 are the pod's addresses of each family.
func (p *labPod) ip4() netip.Addr { return p.ip(true) }
func (p *labPod) ip6() netip.Addr { return p.ip(false) }

func (p *labPod) ip(v4 bool) netip.Addr {
	for _, ip := range p.ips {
		if ip.Is4() == v4 {
			return ip
		}
	}
	panic("pod has no address of that family")
}

func ipNet(cidr string) *net.IPNet {
	p := netip.MustParsePrefix(cidr)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// kernelState prints what the node's kernel holds of twill's routing (and the pods' routes,
// which must survive): for comparing before and after an apply.
func (n *labNode) kernelState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	if link, err := n.nl.LinkByName(datapath.VXLANDevice); err == nil {
		a := link.Attrs()
		fmt.Fprintf(&b, "link %s index %d mtu %d mac %s up %v\n", a.Name, a.Index, a.MTU, a.HardwareAddr, a.Flags&net.FlagUp != 0)
		addrs, _ := n.nl.AddrList(link, netlink.FAMILY_ALL)
		for _, ad := range addrs {
			fmt.Fprintf(&b, "addr %s\n", ad.IPNet)
		}
		for _, family := range []int{unix.AF_INET, unix.AF_INET6, unix.AF_BRIDGE} {
			neighs, err := n.nl.NeighList(a.Index, family)
			if err != nil {
				t.Fatal(err)
			}
			for _, ne := range neighs {
				if ne.State&unix.NUD_PERMANENT != 0 || family == unix.AF_BRIDGE {
					fmt.Fprintf(&b, "neigh family %d %s %s state %#x\n", family, ne.IP, ne.HardwareAddr, ne.State)
				}
			}
		}
	}
	for _, proto := range []netlink.RouteProtocol{datapath.RouteProtocolRemote, datapath.RouteProtocolPod} {
		routes, err := n.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: proto}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			fmt.Fprintf(&b, "route %s\n", r)
		}
	}
	return b.String()
}
