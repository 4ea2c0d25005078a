package routing

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
)

// ErrNoUnderlay means no interface of the current network namespace holds the node address.
var ErrNoUnderlay = errors.New("no interface holds the node address")

// DetectUnderlay finds the interface of the current network namespace that holds nodeIP (the
// one carrying node-to-node traffic), with its MTU and the subnets of its global addresses
// (auto mode routes natively to peers inside those). It only reads the kernel.
func DetectUnderlay(nodeIP netip.Addr) (Underlay, error) {
	nodeIP = nodeIP.Unmap()
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return Underlay{}, fmt.Errorf("listing addresses: %w", err)
	}
	index := 0
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == nodeIP {
			index = a.LinkIndex
			break
		}
	}
	if index == 0 {
		return Underlay{}, fmt.Errorf("%w: %s", ErrNoUnderlay, nodeIP)
	}
	link, err := netlink.LinkByIndex(index)
	if err != nil {
		return Underlay{}, fmt.Errorf("reading link %d that holds %s: %w", index, nodeIP, err)
	}
	u := Underlay{Link: link.Attrs().Name, Index: index, MTU: link.Attrs().MTU}
	for _, a := range addrs {
		if a.LinkIndex != index || a.Scope != unix.RT_SCOPE_UNIVERSE || a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if !ok {
			continue
		}
		u.Subnets = append(u.Subnets, netip.PrefixFrom(ip.Unmap(), ones).Masked())
	}
	slices.SortFunc(u.Subnets, datapath.ComparePrefixes)
	u.Subnets = slices.Compact(u.Subnets)
	return u, nil
}
