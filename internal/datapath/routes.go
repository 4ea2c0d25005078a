package datapath

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// RouteReconciler makes the kernel's routes to other nodes match a desired RouteState. An
// implementation must be idempotent (applying the same state twice changes nothing the second
// time) and must touch only what twill owns: routes with RouteProtocolRemote and the entries of
// the VXLANDevice.
type RouteReconciler interface {
	ApplyRoutes(ctx context.Context, s RouteState) error
}

// RouteState is everything the routing calculator wants the kernel to hold for pod traffic
// between nodes. Its lists are sorted, so two states computed from the same inputs are Equal
// whatever order the inputs came in.
type RouteState struct {
	// VXLAN is the overlay device, or nil when no peer is reached through it (the device is
	// then removed).
	VXLAN *VXLANSpec
	// Routes all carry RouteProtocolRemote in the main table.
	Routes []Route
	// Neighbors are permanent entries on the VXLAN device: gateway address -> peer's VTEP MAC.
	Neighbors []Neighbor
	// FDB entries on the VXLAN device: peer's VTEP MAC -> peer's node (underlay) address.
	FDB []FDBEntry
}

// VXLANSpec describes the node's overlay device.
type VXLANSpec struct {
	Name  string     // always VXLANDevice today; carried so the reconciler needs no guess
	VNI   int        // VXLAN network identifier, the same on every node
	Port  int        // UDP destination port, the same on every node
	Local netip.Addr // this node's underlay address, the outer source
	MTU   int        // device MTU: underlay MTU minus the outer headers (or the configured MTU)
	MAC   MAC        // this node's VTEP MAC, which peers put in their FDB and neighbour entries
	// LinkLocal is the IPv6 link-local address matching MAC (EUI-64); peers use it as the
	// gateway of IPv6 routes, so IPv6 pods need no IPv6 underlay. Invalid when not wanted.
	LinkLocal netip.Addr
}

// Route is one route twill owns. A blackhole has only Dst; other routes have a Gateway and
// usually a Dev. A Gateway of the other family than Dst (an IPv4 route through an IPv6
// link-local) is programmed with RTA_VIA.
type Route struct {
	Dst       netip.Prefix
	Gateway   netip.Addr
	Dev       string // outgoing link; empty lets the kernel pick it from the gateway
	OnLink    bool   // the gateway is reachable on Dev whatever Dev's addresses are
	Blackhole bool
}

// Neighbor is a permanent neighbour entry on the VXLAN device.
type Neighbor struct {
	IP  netip.Addr
	MAC MAC
}

// FDBEntry sends frames for MAC to the VTEP at Dst (a peer's underlay address).
type FDBEntry struct {
	MAC MAC
	Dst netip.Addr
}

// MAC is an Ethernet address as a comparable value (net.HardwareAddr is a slice).
type MAC [6]byte

// MACFrom converts a 6-byte hardware address; ok is false for any other length.
func MACFrom(hw net.HardwareAddr) (m MAC, ok bool) {
	if len(hw) != len(m) {
		return m, false
	}
	copy(m[:], hw)
	return m, true
}

// HardwareAddr returns the address in the form the net and netlink packages use.
func (m MAC) HardwareAddr() net.HardwareAddr { return net.HardwareAddr(m[:]) }

func (m MAC) String() string { return m.HardwareAddr().String() }

// Equal reports whether two states ask for the same kernel state.
func (s RouteState) Equal(o RouteState) bool {
	if (s.VXLAN == nil) != (o.VXLAN == nil) || (s.VXLAN != nil && *s.VXLAN != *o.VXLAN) {
		return false
	}
	return slices.Equal(s.Routes, o.Routes) && slices.Equal(s.Neighbors, o.Neighbors) &&
		slices.Equal(s.FDB, o.FDB)
}

// String prints the state the way iproute2 would show it, one entry a line, for logs and
// golden tests.
func (s RouteState) String() string {
	var b strings.Builder
	if v := s.VXLAN; v != nil {
		fmt.Fprintf(&b, "vxlan %s id %d dstport %d local %s mtu %d address %s", v.Name, v.VNI, v.Port, v.Local, v.MTU, v.MAC)
		if v.LinkLocal.IsValid() {
			fmt.Fprintf(&b, " inet6 %s", v.LinkLocal)
		}
		b.WriteByte('\n')
	}
	for _, r := range s.Routes {
		b.WriteString("route " + r.String() + "\n")
	}
	for _, n := range s.Neighbors {
		fmt.Fprintf(&b, "neigh %s lladdr %s\n", n.IP, n.MAC)
	}
	for _, f := range s.FDB {
		fmt.Fprintf(&b, "fdb %s dst %s\n", f.MAC, f.Dst)
	}
	return b.String()
}

func (r Route) String() string {
	if r.Blackhole {
		return "blackhole " + r.Dst.String()
	}
	s := r.Dst.String() + " via " + r.Gateway.String()
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	if r.OnLink {
		s += " onlink"
	}
	return s
}

// ComparePrefixes orders prefixes by address, then by length; routes and tests sort with it.
func ComparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
