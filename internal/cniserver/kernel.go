package cniserver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
)

// This file holds the kernel side of an endpoint: what is configured in each namespace and the
// waits that make ADD return only when the pod can talk.

// configurePod gives the pod its addresses (/32, /128: the pod has no on-link neighbours, all
// its traffic goes through the node), the routes to the link-local gateway, and permanent
// neighbour entries for the gateway so the pod never has to resolve it.
func configurePod(pod *netlink.Handle, link netlink.Link, ep *endpoint) error {
	name := link.Attrs().Name
	for _, ip := range ep.addrs {
		addr := &netlink.Addr{IPNet: hostPrefix(ip)}
		if ip.Is6() {
			// Skip duplicate address detection: the address is ours alone, and DAD would keep it
			// unusable for a second after ADD returns.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := pod.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s to %s in the pod: %w", ip, name, err)
		}
	}
	idx := link.Attrs().Index
	for _, r := range podRoutes(idx, ep.addrs) {
		if err := pod.RouteReplace(&r); err != nil {
			return fmt.Errorf("add route %s in the pod: %w", r, err)
		}
	}
	for _, gw := range podGateways(ep.addrs) {
		n := permanentNeigh(idx, gw, ep.hostMAC)
		if err := pod.NeighSet(n); err != nil {
			return fmt.Errorf("add neighbour %s lladdr %s in the pod: %w", gw, ep.hostMAC, err)
		}
	}
	return nil
}

// configureHost points the pod's addresses at the node's end of the pair.
func configureHost(host *netlink.Handle, link netlink.Link, ep *endpoint) error {
	name := link.Attrs().Name
	idx := link.Attrs().Index
	for _, ip := range ep.addrs {
		r := hostRoute(idx, ip)
		if err := host.RouteReplace(&r); err != nil {
			return fmt.Errorf("add route %s dev %s on the node: %w", ip, name, err)
		}
		n := permanentNeigh(idx, net.IP(ip.AsSlice()), ep.podMAC)
		if err := host.NeighSet(n); err != nil {
			return fmt.Errorf("add neighbour %s lladdr %s dev %s on the node: %w", ip, ep.podMAC, name, err)
		}
	}
	return nil
}

// podRoutes are the pod's routes: through the link-local gateway for each family it has.
func podRoutes(linkIndex int, addrs []netip.Addr) []netlink.Route {
	var routes []netlink.Route
	if hasFamily(addrs, false) {
		routes = append(routes,
			netlink.Route{LinkIndex: linkIndex, Dst: hostPrefix(netip.MustParseAddr(datapath.PodGatewayIPv4)), Scope: netlink.SCOPE_LINK},
			netlink.Route{LinkIndex: linkIndex, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: podGatewayV4})
	}
	if hasFamily(addrs, true) {
		routes = append(routes,
			netlink.Route{LinkIndex: linkIndex, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, Gw: podGatewayV6})
	}
	return routes
}

func podGateways(addrs []netip.Addr) []net.IP {
	var gws []net.IP
	if hasFamily(addrs, false) {
		gws = append(gws, podGatewayV4)
	}
	if hasFamily(addrs, true) {
		gws = append(gws, podGatewayV6)
	}
	return gws
}

// hostRoute is the node's route to one pod address, marked with twill's pod route protocol.
func hostRoute(linkIndex int, ip netip.Addr) netlink.Route {
	return netlink.Route{LinkIndex: linkIndex, Dst: hostPrefix(ip), Scope: netlink.SCOPE_LINK,
		Protocol: netlink.RouteProtocol(datapath.RouteProtocolPod)}
}

func permanentNeigh(linkIndex int, ip net.IP, mac net.HardwareAddr) *netlink.Neigh {
	family := netlink.FAMILY_V6
	if ip.To4() != nil {
		family = netlink.FAMILY_V4
		ip = ip.To4()
	}
	return &netlink.Neigh{LinkIndex: linkIndex, Family: family, State: netlink.NUD_PERMANENT, IP: ip, HardwareAddr: mac}
}

func hasFamily(addrs []netip.Addr, v6 bool) bool {
	for _, a := range addrs {
		if a.Is6() == v6 {
			return true
		}
	}
	return false
}

// hostPrefix is the single-address prefix of ip (/32 or /128).
func hostPrefix(ip netip.Addr) *net.IPNet {
	bits := ip.BitLen()
	return &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(bits, bits)}
}

// waitOperUp waits until the kernel reports the link operationally up.
func waitOperUp(h *netlink.Handle, name, desc string) error {
	var state netlink.LinkOperState
	err := poll(func() (bool, error) {
		link, err := h.LinkByName(name)
		if err != nil {
			return false, fmt.Errorf("find %s %s: %w", desc, name, err)
		}
		state = link.Attrs().OperState
		return state == netlink.OperUp, nil
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("%s %s is still %s after %s: the veth pair did not come up", desc, name, state, pollTimeout)
	}
	return err
}

// waitLocal waits until the pod's routing takes ip as its own.
func waitLocal(pod *netlink.Handle, ip netip.Addr) error {
	err := poll(func() (bool, error) {
		routes, err := pod.RouteGet(net.IP(ip.AsSlice()))
		if err != nil {
			return false, fmt.Errorf("look up the pod's route to its address %s: %w", ip, err)
		}
		return len(routes) > 0 && routes[0].Type == unix.RTN_LOCAL, nil
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("pod address %s is still not local after %s", ip, pollTimeout)
	}
	return err
}

// pollTimeout bounds the waits above; the kernel's link watch runs at least once a second.
const pollTimeout = 3 * time.Second

var errPollTimeout = errors.New("timed out")

// poll calls done until it says yes or fails, backing off from a millisecond (these waits are
// usually over within a few) to 20ms.
func poll(done func() (bool, error)) error {
	deadline := time.Now().Add(pollTimeout)
	pause := 500 * time.Microsecond
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return errPollTimeout
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
}

// hostHandle opens netlink in the node's network namespace.
func (s *Server) hostHandle() (*netlink.Handle, error) {
	if s.cfg.HostNetns == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("open netlink: %w", err)
		}
		return h, nil
	}
	nsh, err := netns.GetFromPath(s.cfg.HostNetns)
	if err != nil {
		return nil, fmt.Errorf("open node netns %s: %w", s.cfg.HostNetns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("open netlink in node netns %s: %w", s.cfg.HostNetns, err)
	}
	return h, nil
}
