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

// in6AddrGenModeNone stops the kernel from making its own IPv6 link-local address on the
// device (IN6_ADDR_GEN_MODE_NONE in linux/if_link.h); we add the one peers expect ourselves,
// without duplicate address detection, so it is usable at once.
const in6AddrGenModeNone = 1

// syncVXLAN creates, fixes or removes the VXLAN device; it returns the device, nil when the
// state has none.
func (r *Routes) syncVXLAN(spec *datapath.VXLANSpec) (*netlink.Vxlan, error) {
	if spec == nil {
		return nil, r.deleteVXLAN()
	}
	link, err := netlink.LinkByName(spec.Name)
	switch {
	case linkNotFound(err):
		link = nil
	case err != nil:
		return nil, fmt.Errorf("reading %s: %w", spec.Name, err)
	}
	vx, isVXLAN := link.(*netlink.Vxlan)
	if link != nil && (!isVXLAN || !sameTunnel(vx, spec)) {
		// VNI, port, local address and learning cannot be changed on a live device.
		if err := netlink.LinkDel(link); err != nil {
			return nil, fmt.Errorf("deleting %s to recreate it: %w", spec.Name, err)
		}
		r.changed("vxlan device deleted for recreation", "name", spec.Name)
		vx = nil
	}
	if vx == nil {
		if vx, err = r.createVXLAN(spec); err != nil {
			return nil, err
		}
	}
	return vx, r.fixVXLAN(vx, spec)
}

func sameTunnel(vx *netlink.Vxlan, spec *datapath.VXLANSpec) bool {
	local, _ := netip.AddrFromSlice(vx.SrcAddr)
	return vx.VxlanId == spec.VNI && vx.Port == spec.Port && local.Unmap() == spec.Local && !vx.Learning
}

func (r *Routes) createVXLAN(spec *datapath.VXLANSpec) (*netlink.Vxlan, error) {
	vx := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: spec.Name, MTU: spec.MTU, HardwareAddr: spec.MAC.HardwareAddr()},
		VxlanId:   spec.VNI,
		SrcAddr:   net.IP(spec.Local.AsSlice()),
		Port:      spec.Port,
		Learning:  false, // peers are programmed from the API; never learn from the wire
	}
	if err := netlink.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("creating %s: %w", spec.Name, err)
	}
	r.changed("vxlan device created", "name", spec.Name, "vni", spec.VNI, "port", spec.Port, "local", spec.Local, "mtu", spec.MTU)
	link, err := netlink.LinkByName(spec.Name)
	if err != nil {
		return nil, fmt.Errorf("reading %s after creating it: %w", spec.Name, err)
	}
	created, ok := link.(*netlink.Vxlan)
	if !ok {
		return nil, fmt.Errorf("%s is a %s after creating it as vxlan", spec.Name, link.Type())
	}
	// A host may create new links with IPv6 off (default/disable_ipv6); the tunnel needs it
	// for its link-local gateways, whatever the host's other links do.
	if err := enableIPv6(spec.Name); err != nil {
		r.log.Warn("cannot enable IPv6 on the vxlan device; IPv6 pods will not be routed", "err", err)
	}
	if err := netlink.LinkSetIP6AddrGenMode(created, in6AddrGenModeNone); err != nil {
		// IPv6 disabled on this host: IPv4 still works; IPv6 routes will fail and say so.
		r.log.Warn("cannot turn off IPv6 address generation on the vxlan device", "err", err)
	}
	return created, nil
}

// fixVXLAN sets what can change on a live device: MTU, MAC, state up, link-local address.
func (r *Routes) fixVXLAN(vx *netlink.Vxlan, spec *datapath.VXLANSpec) error {
	attrs := vx.Attrs()
	if attrs.MTU != spec.MTU {
		if err := netlink.LinkSetMTU(vx, spec.MTU); err != nil {
			return fmt.Errorf("setting MTU %d on %s: %w", spec.MTU, spec.Name, err)
		}
		r.changed("vxlan MTU set", "name", spec.Name, "mtu", spec.MTU, "was", attrs.MTU)
	}
	if mac, _ := datapath.MACFrom(attrs.HardwareAddr); mac != spec.MAC {
		if err := netlink.LinkSetHardwareAddr(vx, spec.MAC.HardwareAddr()); err != nil {
			return fmt.Errorf("setting MAC %s on %s: %w", spec.MAC, spec.Name, err)
		}
		r.changed("vxlan MAC set", "name", spec.Name, "mac", spec.MAC)
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(vx); err != nil {
			return fmt.Errorf("setting %s up: %w", spec.Name, err)
		}
		r.changed("vxlan device up", "name", spec.Name)
	}
	return r.syncLinkLocal(vx, spec)
}

// syncLinkLocal gives the device exactly one IPv6 link-local address, the one matching its MAC.
func (r *Routes) syncLinkLocal(vx *netlink.Vxlan, spec *datapath.VXLANSpec) error {
	if !spec.LinkLocal.IsValid() {
		return nil
	}
	current, err := consistentDump(func() ([]netlink.Addr, error) { return netlink.AddrList(vx, netlink.FAMILY_V6) })
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", spec.Name, err)
	}
	present := false
	var errs []error
	for _, a := range current {
		ip, _ := netip.AddrFromSlice(a.IP)
		switch {
		case ip == spec.LinkLocal:
			present = true
		case ip.IsLinkLocalUnicast():
			if err := netlink.AddrDel(vx, &a); err != nil {
				errs = append(errs, fmt.Errorf("removing stale link-local %s: %w", ip, err))
				continue
			}
			r.changed("stale vxlan link-local removed", "addr", ip)
		}
	}
	if !present {
		addr := &netlink.Addr{
			IPNet: &net.IPNet{IP: spec.LinkLocal.AsSlice(), Mask: net.CIDRMask(64, 128)},
			Flags: unix.IFA_F_NODAD,
			Scope: unix.RT_SCOPE_LINK,
		}
		if err := netlink.AddrAdd(vx, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("adding link-local %s to %s: %w", spec.LinkLocal, spec.Name, err))
		} else if err == nil {
			r.changed("vxlan link-local added", "addr", spec.LinkLocal)
		}
	}
	return errors.Join(errs...)
}

func (r *Routes) deleteVXLAN() error {
	link, err := netlink.LinkByName(datapath.VXLANDevice)
	if linkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", datapath.VXLANDevice, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("deleting %s: %w", datapath.VXLANDevice, err)
	}
	r.changed("vxlan device deleted", "name", datapath.VXLANDevice)
	return nil
}
