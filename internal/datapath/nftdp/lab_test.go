package nftdp

// A node namespace with pod namespaces plumbed into it the way the CNI server does (a veth
// named like cniserver.HostVethName, the pod's /32 and /128, default routes through the
// link-local gateways, permanent neighbours both ways, and the node's per-pod routes), and
// servers and probes for real TCP and UDP traffic. Every namespace is named twt-*, made by
// the test and removed by t.Cleanup whatever the outcome.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	xipv4 "golang.org/x/net/ipv4"
	xipv6 "golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/testutil"
)

type testNS struct {
	name  string
	ns    ns.NetNS
	nl    *netlink.Handle
	addrs []netip.Addr
}

type lab struct {
	t      *testing.T
	suffix string
	node   *testNS
}

// newLab makes the node namespace: forwarding on, and its own addresses.
func newLab(t *testing.T, nodeAddrs ...string) *lab {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, suffix: hex.EncodeToString(b)}
	l.node = l.newNS("node")
	l.sysctl(l.node, "net/ipv4/ip_forward", "1")
	l.sysctl(l.node, "net/ipv6/conf/all/forwarding", "1")
	// On lo, as this kernel has no dummy links: the node picks them as source addresses all the
	// same, having no other.
	lo, err := l.node.nl.LinkByName("lo")
	l.must(err)
	for _, a := range nodeAddrs {
		ip := netip.MustParseAddr(a)
		l.node.addrs = append(l.node.addrs, ip)
		l.must(l.node.nl.AddrAdd(lo, &netlink.Addr{IPNet: hostNet(ip), Flags: unix.IFA_F_NODAD}))
	}
	return l
}

func (l *lab) must(err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatal(err)
	}
}

// newNS creates twt-<role>-<suffix> (see testutil.NewNetNS).
func (l *lab) newNS(role string) *testNS {
	l.t.Helper()
	n := testutil.NewNetNS(l.t, role, l.suffix)
	return &testNS{name: n.Name, ns: n.NS, nl: n.NL}
}

func (l *lab) sysctl(n *testNS, key, value string) {
	l.t.Helper()
	l.must(n.ns.Do(func(ns.NetNS) error { return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644) }))
}

// pod plumbs a namespace into the node as the CNI server plumbs a pod. Namespaces standing
// for machines outside the cluster are plumbed the same way: only the policy state tells them
// apart.
func (l *lab) pod(role string, addrs ...string) *testNS {
	l.t.Helper()
	p := l.newNS(role)
	sum := sha256.Sum256([]byte(role + l.suffix))
	hostName := "tw" + hex.EncodeToString(sum[:])[:11] // as cniserver.HostVethName spells it
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(p.ns.Fd()))}
	l.must(l.node.nl.LinkAdd(veth))
	host, err := l.node.nl.LinkByName(hostName)
	l.must(err)
	eth0, err := p.nl.LinkByName("eth0")
	l.must(err)
	l.must(l.node.nl.LinkSetUp(host))
	l.must(p.nl.LinkSetUp(eth0))
	for _, a := range addrs {
		ip := netip.MustParseAddr(a)
		p.addrs = append(p.addrs, ip)
		l.must(p.nl.AddrAdd(eth0, &netlink.Addr{IPNet: hostNet(ip), Flags: unix.IFA_F_NODAD}))
		gw, family, bits := netip.MustParseAddr(datapath.PodGatewayIPv4), unix.AF_INET, 32
		if ip.Is6() {
			gw, family, bits = netip.MustParseAddr(datapath.PodGatewayIPv6), unix.AF_INET6, 128
		}
		l.must(p.nl.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: family, State: unix.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: host.Attrs().HardwareAddr}))
		l.must(p.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice(), Flags: int(netlink.FLAG_ONLINK),
			Dst: &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}}))
		l.must(l.node.nl.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Scope: unix.RT_SCOPE_LINK,
			Protocol: datapath.RouteProtocolPod, Dst: hostNet(ip)}))
		l.must(l.node.nl.NeighAdd(&netlink.Neigh{LinkIndex: host.Attrs().Index, Family: family, State: unix.NUD_PERMANENT,
			IP: ip.AsSlice(), HardwareAddr: eth0.Attrs().HardwareAddr}))
	}
	return p
}

func hostNet(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}
}

// addr returns the namespace's address of a family.
func (n *testNS) addr(v6 bool) netip.Addr {
	for _, a := range n.addrs {
		if a.Is6() == v6 {
			return a
		}
	}
	panic(n.name + " has no address of that family")
}

// serve answers on every address of n: each TCP port echoes one line, each UDP port echoes
// every datagram. The servers stop with the test.
func serve(t *testing.T, n *testNS, tcpPorts, udpPorts []uint16) {
	t.Helper()
	for _, a := range n.addrs {
		for _, p := range tcpPorts {
			var ln net.Listener
			err := n.ns.Do(func(ns.NetNS) error {
				var err error
				ln, err = net.Listen("tcp", netip.AddrPortFrom(a, p).String())
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer conn.Close()
						_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
						if line, err := bufio.NewReader(conn).ReadString('\n'); err == nil {
							_, _ = conn.Write([]byte(line))
						}
					}()
				}
			}()
		}
		for _, p := range udpPorts {
			var pc net.PacketConn
			err := n.ns.Do(func(ns.NetNS) error {
				var err error
				pc, err = net.ListenPacket("udp", netip.AddrPortFrom(a, p).String())
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 1500)
				for {
					k, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = pc.WriteTo(buf[:k], from)
				}
			}()
		}
	}
}

// exchange opens a connection from n to dst and checks that a line sent comes back: the
// first packet went through and so did the replies. It returns false when nothing came back
// within timeout.
func exchange(n *testNS, proto datapath.Protocol, dst netip.AddrPort, timeout time.Duration) (bool, error) {
	network := "tcp"
	if proto == datapath.ProtocolUDP {
		network = "udp"
	}
	var conn net.Conn
	err := n.ns.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout(network, dst.String(), timeout)
		return err
	})
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	msg := fmt.Sprintf("probe from %s\n", n.name)
	if _, err := conn.Write([]byte(msg)); err != nil {
		return false, err
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	if errors.As(err, &netErr) && netErr.Timeout() {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if got != msg {
		return false, fmt.Errorf("echo %q, want %q", got, msg)
	}
	return true, nil
}

// ping sends one ICMP echo request from n to dst and waits for its reply.
func ping(n *testNS, dst netip.Addr, timeout time.Duration) (bool, error) {
	network, listen, echo, reply, proto := "ip4:icmp", "0.0.0.0", icmp.Type(xipv4.ICMPTypeEcho), icmp.Type(xipv4.ICMPTypeEchoReply), 1
	if dst.Is6() {
		network, listen, echo, reply, proto = "ip6:ipv6-icmp", "::", xipv6.ICMPTypeEchoRequest, xipv6.ICMPTypeEchoReply, 58
	}
	var conn *icmp.PacketConn
	err := n.ns.Do(func(ns.NetNS) error {
		var err error
		conn, err = icmp.ListenPacket(network, listen)
		return err
	})
	if err != nil {
		return false, err
	}
	defer conn.Close()
	id := int(pingID.Add(1) & 0xffff)
	msg, err := (&icmp.Message{Type: echo, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("twill")}}).Marshal(nil)
	if err != nil {
		return false, err
	}
	if _, err := conn.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return false, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		// The raw socket sees every ICMP packet of the namespace: keep only this echo's reply.
		k, from, err := conn.ReadFrom(buf)
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		m, err := icmp.ParseMessage(proto, buf[:k])
		if err != nil || m.Type != reply || from.String() != dst.String() {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id {
			return true, nil
		}
	}
}

var pingID atomic.Int32

// inNode runs f in the node's namespace; nft started from there configures that namespace.
func (l *lab) inNode(f func() error) error {
	return l.node.ns.Do(func(ns.NetNS) error { return f() })
}

// apply renders s with a reconciler in the node namespace.
func (l *lab) apply(r *Reconciler, s *datapath.PolicyState) {
	l.t.Helper()
	l.must(l.inNode(func() error { return r.ApplyPolicy(context.Background(), s) }))
}
