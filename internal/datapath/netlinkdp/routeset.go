package netlinkdp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
)

// routeKey is what makes two routes the same for the reconciler, with the link as an index
// (names are resolved once per apply).
type routeKey struct {
	dst       netip.Prefix
	gateway   netip.Addr
	linkIndex int
	onLink    bool
	blackhole bool
}

// syncRoutes makes the main table's RouteProtocolRemote routes exactly want. Routes are added
// (or replaced in place) before stale ones are removed, so a changed route never has a gap.
func (r *Routes) syncRoutes(want []datapath.Route) error {
	current, err := consistentDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{Protocol: datapath.RouteProtocolRemote}, netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return fmt.Errorf("listing twill's routes: %w", err)
	}
	have := map[routeKey]bool{}
	for _, kr := range current {
		key := keyOfKernelRoute(kr)
		have[key] = true
		have[key.anyLink()] = true
	}
	var errs []error
	wanted := map[routeKey]bool{}
	indexes := map[string]int{}
	for _, dr := range want {
		key, err := keyOfRoute(dr, indexes)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		wanted[key] = true
		if have[key] {
			continue
		}
		if err := netlink.RouteReplace(kernelRoute(key)); err != nil {
			errs = append(errs, fmt.Errorf("adding route %s: %w", dr, err))
			continue
		}
		r.changed("route set", "route", dr.String())
	}
	for _, kr := range current {
		key := keyOfKernelRoute(kr)
		if wanted[key] || wanted[key.anyLink()] {
			continue
		}
		// A route replaced above is already gone: ESRCH then just confirms it.
		if err := netlink.RouteDel(&kr); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing stale route to %s: %w", key.dst, err))
			continue
		}
		r.changed("stale route removed", "dst", key.dst, "gateway", key.gateway)
	}
	return errors.Join(errs...)
}

// anyLink is the key of a wanted route that leaves the link to the kernel (Dev empty): it
// matches the kernel's route whatever link the kernel chose.
func (k routeKey) anyLink() routeKey {
	k.linkIndex = 0
	return k
}

func keyOfRoute(dr datapath.Route, indexes map[string]int) (routeKey, error) {
	key := routeKey{dst: dr.Dst.Masked(), blackhole: dr.Blackhole}
	if dr.Blackhole {
		return key, nil
	}
	key.gateway, key.onLink = dr.Gateway.Unmap(), dr.OnLink
	if dr.Dev == "" {
		return key, nil
	}
	index, ok := indexes[dr.Dev]
	if !ok {
		link, err := netlink.LinkByName(dr.Dev)
		if err != nil {
			return key, fmt.Errorf("route %s: finding link %s: %w", dr, dr.Dev, err)
		}
		index = link.Attrs().Index
		indexes[dr.Dev] = index
	}
	key.linkIndex = index
	return key, nil
}

func keyOfKernelRoute(kr netlink.Route) routeKey {
	var key routeKey
	if kr.Dst != nil {
		ip, _ := netip.AddrFromSlice(kr.Dst.IP)
		ones, _ := kr.Dst.Mask.Size()
		key.dst = netip.PrefixFrom(ip.Unmap(), ones).Masked()
	}
	if kr.Type == unix.RTN_BLACKHOLE {
		key.blackhole = true
		return key // the kernel shows IPv6 blackholes on lo: the link means nothing here
	}
	if via, ok := kr.Via.(*netlink.Via); ok && via != nil {
		key.gateway, _ = netip.AddrFromSlice(via.Addr)
	} else if kr.Gw != nil {
		key.gateway, _ = netip.AddrFromSlice(kr.Gw)
	}
	key.gateway = key.gateway.Unmap()
	key.linkIndex = kr.LinkIndex
	key.onLink = kr.Flags&int(netlink.FLAG_ONLINK) != 0
	return key
}

func kernelRoute(key routeKey) *netlink.Route {
	kr := &netlink.Route{
		Dst:      &net.IPNet{IP: key.dst.Addr().AsSlice(), Mask: net.CIDRMask(key.dst.Bits(), key.dst.Addr().BitLen())},
		Protocol: datapath.RouteProtocolRemote,
		Table:    unix.RT_TABLE_MAIN,
	}
	if key.blackhole {
		kr.Type = unix.RTN_BLACKHOLE
		return kr
	}
	kr.LinkIndex = key.linkIndex
	if key.onLink {
		kr.Flags = int(netlink.FLAG_ONLINK)
	}
	if key.gateway.Is4() == key.dst.Addr().Is4() {
		kr.Gw = key.gateway.AsSlice()
	} else {
		// An IPv4 route through an IPv6 next hop (RTA_VIA, Linux 5.2+).
		kr.Via = &netlink.Via{AddrFamily: netlink.FAMILY_V6, Addr: key.gateway.AsSlice()}
	}
	return kr
}
