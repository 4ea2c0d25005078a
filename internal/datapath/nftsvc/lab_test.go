package nftsvc

// A node namespace with the reconciler running in it and client, backend and outside
// namespaces plumbed into it as the CNI server plumbs pods (a veth, the pod's /32 and /128,
// default routes through the link-local gateways, permanent neighbours both ways, the node's
// per-pod routes). Backends answer every connection with their name and the client address
// they see. Every namespace is named twt-*, made by the test and removed by t.Cleanup
// whatever the outcome; traffic never leaves them.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/testutil"
)

type labNS struct {
	name  string
	ns    ns.NetNS
	nl    *netlink.Handle
	addrs []netip.Addr
	host  netlink.Link // the node's end of the veth (pods only)
}

type lab struct {
	t      testing.TB
	suffix string
	node   *labNS
}

// newLab makes the node namespace: forwarding on, and its own addresses on lo.
func newLab(t testing.TB, nodeAddrs ...string) *lab {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, suffix: hex.EncodeToString(b)}
	l.node = l.newNS("svcnode")
	n := testutil.NetNS{Name: l.node.name, NS: l.node.ns}
	n.Sysctl(t, "net/ipv4/ip_forward", "1")
	n.Sysctl(t, "net/ipv6/conf/all/forwarding", "1")
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

func (l *lab) newNS(role string) *labNS {
	l.t.Helper()
	n := testutil.NewNetNS(l.t, role, l.suffix)
	return &labNS{name: n.Name, ns: n.NS, nl: n.NL}
}

// pod plumbs a namespace into the node.
func (l *lab) pod(role string, addrs ...string) *labNS {
	l.t.Helper()
	p := l.newNS(role)
	hostName := "tws" + role + l.suffix
	if len(hostName) > 15 {
		hostName = hostName[:15]
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(p.ns.Fd()))}
	l.must(l.node.nl.LinkAdd(veth))
	host, err := l.node.nl.LinkByName(hostName)
	l.must(err)
	p.host = host
	eth0, err := p.nl.LinkByName("eth0")
	l.must(err)
	l.must(l.node.nl.LinkSetUp(host))
	l.must(p.nl.LinkSetUp(eth0))
	for _, a := range addrs {
		ip := netip.MustParseAddr(a)
		p.addrs = append(p.addrs, ip)
		l.must(p.nl.AddrAdd(eth0, &netlink.Addr{IPNet: hostNet(ip), Flags: unix.IFA_F_NODAD}))
		gw, family := netip.MustParseAddr(datapath.PodGatewayIPv4), unix.AF_INET
		if ip.Is6() {
			gw, family = netip.MustParseAddr(datapath.PodGatewayIPv6), unix.AF_INET6
		}
		l.must(p.nl.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: family, State: unix.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: host.Attrs().HardwareAddr}))
		l.must(p.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice(), Flags: int(netlink.FLAG_ONLINK),
			Dst: anyNet(ip)}))
		l.must(l.node.nl.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Scope: unix.RT_SCOPE_LINK, Dst: hostNet(ip)}))
		l.must(l.node.nl.NeighAdd(&netlink.Neigh{LinkIndex: host.Attrs().Index, Family: family, State: unix.NUD_PERMANENT,
			IP: ip.AsSlice(), HardwareAddr: eth0.Attrs().HardwareAddr}))
	}
	return p
}

// defaultRouteVia gives the node a default route through p (in each of p's families), as a
// real node has one towards its network: the node's own connections to a cluster IP need a
// route before the output hook translates them.
func (l *lab) defaultRouteVia(p *labNS) {
	l.t.Helper()
	for _, a := range p.addrs {
		l.must(l.node.nl.RouteAdd(&netlink.Route{LinkIndex: p.host.Attrs().Index, Scope: unix.RT_SCOPE_LINK, Dst: anyNet(a)}))
	}
}

func hostNet(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}
}

func anyNet(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: make(net.IP, ip.BitLen()/8), Mask: net.CIDRMask(0, ip.BitLen())}
}

// inNode runs f in the node's namespace; nft started from there configures that namespace.
func (l *lab) inNode(f func() error) error {
	return l.node.ns.Do(func(ns.NetNS) error { return f() })
}

// serve answers on every address of n: a TCP connection gets one line, a UDP datagram one
// datagram, "<name> <client address>".
func serve(t testing.TB, n *labNS, name string, tcpPorts, udpPorts []uint16) {
	t.Helper()
	for _, a := range n.addrs {
		for _, p := range tcpPorts {
			var ln net.Listener
			must(t, n.ns.Do(func(ns.NetNS) error {
				var err error
				ln, err = net.Listen("tcp", netip.AddrPortFrom(a, p).String())
				return err
			}))
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer conn.Close()
						from := conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
						_, _ = fmt.Fprintf(conn, "%s %s\n", name, from)
					}()
				}
			}()
		}
		for _, p := range udpPorts {
			var pc net.PacketConn
			must(t, n.ns.Do(func(ns.NetNS) error {
				var err error
				pc, err = net.ListenPacket("udp", netip.AddrPortFrom(a, p).String())
				return err
			}))
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 1500)
				for {
					_, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s", name, from.(*net.UDPAddr).AddrPort().Addr()), from)
				}
			}()
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// answer is what a backend said: its name and the client address it saw.
type answer struct {
	backend string
	client  netip.Addr
}

// errTimeout is a probe that got no answer at all.
var errTimeout = errors.New("no answer")

// ask connects from n to dst and returns the backend's answer. A refused connection returns
// an error wrapping syscall.ECONNREFUSED; silence returns errTimeout.
func ask(n *labNS, network string, dst netip.AddrPort, timeout time.Duration) (answer, error) {
	var conn net.Conn
	err := n.ns.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout(network, dst.String(), timeout)
		return err
	})
	if err != nil {
		return answer{}, timeoutOr(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	var line string
	if network == "udp" {
		if _, err := conn.Write([]byte("hello")); err != nil {
			return answer{}, timeoutOr(err)
		}
		buf := make([]byte, 1500)
		k, err := conn.Read(buf)
		if err != nil {
			return answer{}, timeoutOr(err)
		}
		line = string(buf[:k])
	} else {
		line, err = bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return answer{}, timeoutOr(err)
		}
	}
	name, addr, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok {
		return answer{}, fmt.Errorf("answer %q", line)
	}
	client, err := netip.ParseAddr(addr)
	return answer{backend: name, client: client}, err
}

func timeoutOr(err error) error {
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return errTimeout
	}
	return err
}

func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// apply runs ApplyServices in the node namespace.
func (l *lab) apply(r *Reconciler, ch datapath.ServiceChanges) {
	l.t.Helper()
	l.must(l.inNode(func() error { return r.ApplyServices(context.Background(), ch) }))
}
