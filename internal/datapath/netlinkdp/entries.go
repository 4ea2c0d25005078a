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

// syncFDB makes the device's forwarding database hold exactly the wanted MAC -> peer entries.
// Learning is off, so every entry on the device is one of ours: stale ones are all removed.
func (r *Routes) syncFDB(vx *netlink.Vxlan, want []datapath.FDBEntry) error {
	index := vx.Attrs().Index
	current, err := consistentDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(index, unix.AF_BRIDGE) })
	if err != nil {
		return fmt.Errorf("listing FDB of %s: %w", vx.Attrs().Name, err)
	}
	wanted := map[datapath.FDBEntry]bool{}
	for _, e := range want {
		wanted[e] = true
	}
	var errs []error
	have := map[datapath.FDBEntry]bool{}
	for _, n := range current {
		mac, _ := datapath.MACFrom(n.HardwareAddr)
		dst, _ := netip.AddrFromSlice(n.IP)
		e := datapath.FDBEntry{MAC: mac, Dst: dst.Unmap()}
		if wanted[e] && n.State&unix.NUD_PERMANENT != 0 {
			have[e] = true
			continue
		}
		// Removing this exact (MAC, destination) pair leaves other destinations of the MAC.
		del := netlink.Neigh{LinkIndex: index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: n.State, HardwareAddr: n.HardwareAddr, IP: n.IP}
		if err := netlink.NeighDel(&del); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("removing FDB entry %s dst %s: %w", e.MAC, e.Dst, err))
			continue
		}
		r.changed("FDB entry removed", "mac", e.MAC, "dst", e.Dst)
	}
	for _, e := range want {
		if have[e] {
			continue
		}
		add := netlink.Neigh{LinkIndex: index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: unix.NUD_PERMANENT, HardwareAddr: e.MAC.HardwareAddr(), IP: net.IP(e.Dst.AsSlice())}
		if err := netlink.NeighSet(&add); err != nil {
			errs = append(errs, fmt.Errorf("adding FDB entry %s dst %s: %w", e.MAC, e.Dst, err))
			continue
		}
		r.changed("FDB entry added", "mac", e.MAC, "dst", e.Dst)
	}
	return errors.Join(errs...)
}

// syncNeighbors makes the device's permanent neighbour entries exactly the wanted ones. Entries
// the kernel made itself (not permanent) are left to age out: they are not ours to manage.
func (r *Routes) syncNeighbors(vx *netlink.Vxlan, want []datapath.Neighbor) error {
	index := vx.Attrs().Index
	wanted := map[netip.Addr]datapath.MAC{}
	for _, n := range want {
		wanted[n.IP] = n.MAC
	}
	var errs []error
	have := map[netip.Addr]bool{}
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		current, err := consistentDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(index, family) })
		if err != nil {
			errs = append(errs, fmt.Errorf("listing neighbours of %s: %w", vx.Attrs().Name, err))
			continue
		}
		for _, n := range current {
			ip, _ := netip.AddrFromSlice(n.IP)
			ip = ip.Unmap()
			mac, _ := datapath.MACFrom(n.HardwareAddr)
			wantMAC, isWanted := wanted[ip]
			if n.State&unix.NUD_PERMANENT == 0 {
				continue
			}
			if isWanted && wantMAC == mac {
				have[ip] = true
				continue
			}
			if isWanted {
				continue // replaced below
			}
			if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("removing neighbour %s: %w", ip, err))
				continue
			}
			r.changed("neighbour removed", "ip", ip, "mac", mac)
		}
	}
	for _, n := range want {
		if have[n.IP] {
			continue
		}
		family := unix.AF_INET6
		if n.IP.Is4() {
			family = unix.AF_INET
		}
		set := netlink.Neigh{LinkIndex: index, Family: family, State: unix.NUD_PERMANENT,
			IP: net.IP(n.IP.AsSlice()), HardwareAddr: n.MAC.HardwareAddr()}
		if err := netlink.NeighSet(&set); err != nil {
			errs = append(errs, fmt.Errorf("setting neighbour %s lladdr %s: %w", n.IP, n.MAC, err))
			continue
		}
		r.changed("neighbour set", "ip", n.IP, "mac", n.MAC)
	}
	return errors.Join(errs...)
}
