package routing

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/twill-net/twill/internal/datapath"
)

// Compute is the desired routing state of the local node, given its underlay and its peers:
//
//   - each local block gets a blackhole route, so an address of our block that no pod holds is
//     dropped here instead of following the default route out of the node (the pods' own /32
//     and /128 routes are more specific and win);
//   - each peer block gets a route through the peer: natively ("via <peer node IP> dev
//     <underlay>") when the mode allows it, else through the VXLAN device ("via <gateway> dev
//     twill.vxlan onlink", with a permanent neighbour entry gateway -> peer VTEP MAC and an FDB
//     entry peer VTEP MAC -> peer node IP).
//
// VXLAN gateways: an IPv4 block goes via the peer's IPv4 node address when it has one; an IPv6
// block (and an IPv4 block of a peer without IPv4 node address, i.e. over an IPv6-only
// underlay, using an IPv4 route with an IPv6 next hop) goes via the link-local address that
// belongs to the peer's VTEP MAC. Those gateways exist only as neighbour entries on the VXLAN
// device, so either pod family works over either underlay family.
//
// Peers are taken in name order and a block already routed is never routed twice (our own
// blocks first), so the result depends only on the set of peers, not on the order they come
// in. Blocks that cannot be reached are left out: in native mode a block of a peer that has no
// node address of the block's family on one of our subnets (see NativeUnreachable), and with
// VXLAN a peer without a node address of the tunnel family.
func Compute(local Node, underlay Underlay, peers []Node, cfg Config) datapath.RouteState {
	cfg = cfg.withDefaults()
	c := computation{
		cfg:      cfg,
		underlay: underlay,
		routes:   map[netip.Prefix]datapath.Route{},
		neigh:    map[netip.Addr]datapath.MAC{},
		fdb:      map[datapath.MAC]netip.Addr{},
	}
	if len(local.IPs) > 0 {
		c.tunnelLocal = local.IPs[0].Unmap()
	}
	for _, b := range sortedBlocks(local.Blocks) {
		c.add(datapath.Route{Dst: b, Blackhole: true})
	}
	for _, p := range sortedPeers(peers) {
		if p.Name == local.Name {
			continue
		}
		c.addPeer(p)
	}
	return c.state()
}

type computation struct {
	cfg         Config
	underlay    Underlay
	tunnelLocal netip.Addr // local VXLAN endpoint; invalid when the local node has no address
	routes      map[netip.Prefix]datapath.Route
	neigh       map[netip.Addr]datapath.MAC
	fdb         map[datapath.MAC]netip.Addr
	viaVXLAN    bool
}

// add keeps the first route for each destination.
func (c *computation) add(r datapath.Route) bool {
	if _, taken := c.routes[r.Dst]; taken {
		return false
	}
	c.routes[r.Dst] = r
	return true
}

func (c *computation) addPeer(p Node) {
	for _, b := range sortedBlocks(p.Blocks) {
		if gw, ok := c.nativeNextHop(p, b); ok {
			c.add(datapath.Route{Dst: b, Gateway: gw, Dev: c.underlay.Link})
			continue
		}
		if c.cfg.Mode == ModeNative {
			continue
		}
		c.addTunneled(p, b)
	}
}

// nativeNextHop is the peer's node address that block b can be routed to without
// encapsulation, if the mode allows it.
func (c *computation) nativeNextHop(p Node, b netip.Prefix) (netip.Addr, bool) {
	switch c.cfg.Mode {
	case ModeNative, ModeAuto:
		// A native route needs the peer on one of our own subnets: a router between subnets
		// does not know pod blocks (no BGP), and the kernel refuses a gateway it cannot reach
		// directly anyway.
		return firstAddr(p.IPs, func(a netip.Addr) bool {
			return a.Is4() == b.Addr().Is4() && c.onUnderlaySubnet(a)
		})
	}
	return netip.Addr{}, false
}

func (c *computation) onUnderlaySubnet(a netip.Addr) bool {
	return slices.ContainsFunc(c.underlay.Subnets, func(s netip.Prefix) bool { return s.Contains(a) })
}

func (c *computation) addTunneled(p Node, b netip.Prefix) {
	if !c.tunnelLocal.IsValid() {
		return
	}
	remote, ok := firstAddr(p.IPs, func(a netip.Addr) bool { return a.Is4() == c.tunnelLocal.Is4() })
	if !ok {
		return
	}
	mac := vtepMAC(remote)
	gw, ok := netip.Addr{}, false
	if b.Addr().Is4() {
		gw, ok = firstAddr(p.IPs, netip.Addr.Is4)
	}
	if !ok {
		gw = linkLocal(mac)
	}
	if !c.add(datapath.Route{Dst: b, Gateway: gw, Dev: datapath.VXLANDevice, OnLink: true}) {
		return
	}
	c.viaVXLAN = true
	if _, taken := c.neigh[gw]; !taken {
		c.neigh[gw] = mac
	}
	if _, taken := c.fdb[mac]; !taken {
		c.fdb[mac] = remote
	}
}

func (c *computation) state() datapath.RouteState {
	var s datapath.RouteState
	for _, r := range c.routes {
		s.Routes = append(s.Routes, r)
	}
	slices.SortFunc(s.Routes, func(a, b datapath.Route) int { return datapath.ComparePrefixes(a.Dst, b.Dst) })
	// The device exists in the tunnelling modes even when no route of ours uses it: a peer may
	// tunnel to us (to reach our pods, or from a node that has no pods yet and so none of our
	// routes point at it), and without the device its packets would be dropped on arrival.
	if !c.viaVXLAN && (c.cfg.Mode == ModeNative || !c.tunnelLocal.IsValid()) {
		return s
	}
	mac := vtepMAC(c.tunnelLocal)
	s.VXLAN = &datapath.VXLANSpec{
		Name:      datapath.VXLANDevice,
		VNI:       c.cfg.VNI,
		Port:      c.cfg.Port,
		Local:     c.tunnelLocal,
		MTU:       PodMTU(c.underlay.MTU, ModeVXLAN, c.tunnelLocal.Is6(), c.cfg.MTU),
		MAC:       mac,
		LinkLocal: linkLocal(mac),
	}
	for ip, m := range c.neigh {
		s.Neighbors = append(s.Neighbors, datapath.Neighbor{IP: ip, MAC: m})
	}
	slices.SortFunc(s.Neighbors, func(a, b datapath.Neighbor) int { return a.IP.Compare(b.IP) })
	for m, dst := range c.fdb {
		s.FDB = append(s.FDB, datapath.FDBEntry{MAC: m, Dst: dst})
	}
	slices.SortFunc(s.FDB, func(a, b datapath.FDBEntry) int { return slices.Compare(a.MAC[:], b.MAC[:]) })
	return s
}

func firstAddr(addrs []netip.Addr, want func(netip.Addr) bool) (netip.Addr, bool) {
	for _, a := range addrs {
		if a = a.Unmap(); a.IsValid() && want(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func sortedBlocks(blocks []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(blocks))
	for _, b := range blocks {
		if b.IsValid() {
			out = append(out, b.Masked())
		}
	}
	slices.SortFunc(out, datapath.ComparePrefixes)
	return slices.Compact(out)
}

// sortedPeers orders peers by name, and (should two claim the same name) by their addresses
// and blocks, so that which one wins a contested block never depends on input order.
func sortedPeers(peers []Node) []Node {
	out := slices.Clone(peers)
	slices.SortFunc(out, func(a, b Node) int {
		return cmp.Or(
			cmp.Compare(a.Name, b.Name),
			slices.CompareFunc(a.IPs, b.IPs, netip.Addr.Compare),
			slices.CompareFunc(a.Blocks, b.Blocks, datapath.ComparePrefixes),
		)
	})
	return out
}

// NativeUnreachable names the peers whose blocks native mode cannot route (in whole or in part):
// they have no node address on one of the local node's subnets for some family of their blocks.
// The agent warns about them: such a cluster wants the auto mode.
func NativeUnreachable(underlay Underlay, peers []Node, cfg Config) []string {
	if cfg.withDefaults().Mode != ModeNative {
		return nil
	}
	c := computation{cfg: cfg.withDefaults(), underlay: underlay}
	var names []string
	for _, p := range sortedPeers(peers) {
		for _, b := range p.Blocks {
			if _, ok := c.nativeNextHop(p, b); !ok {
				names = append(names, p.Name)
				break
			}
		}
	}
	return names
}
