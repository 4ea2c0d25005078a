package cniserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/twill-net/twill/internal/cniproto"
	"github.com/twill-net/twill/internal/ipam"
)

// drift collects what differs from what ADD made, each item saying exactly what to look at.
type drift []string

func (d *drift) addf(format string, args ...any) { *d = append(*d, fmt.Sprintf(format, args...)) }

// Check compares the endpoint in the kernel (and the runtime's prevResult) with what ADD makes
// and returns an error naming every difference: a missing veth end, a missing or extra address,
// a missing route or neighbour, a wrong MTU or MAC.
func (s *Server) Check(ctx context.Context, req cniproto.Request) error {
	if err := requireHandle(req); err != nil {
		return err
	}
	if req.Netns == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			"twill agent: CHECK needs the pod's network namespace path (CNI_NETNS is empty)", "")
	}
	var prev *types100.Result
	if len(req.PrevResult) > 0 {
		r, err := types100.NewResult(req.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("twill agent: cannot decode prevResult: %v", err), "")
		}
		prev = r.(*types100.Result)
	}
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	h := ipam.Handle{ContainerID: req.ContainerID, IfName: req.IfName}
	unlock := s.locks.lock(h)
	defer unlock()

	var d drift
	s.checkEndpoint(ctx, h, req.Netns, prev, &d)
	if len(d) > 0 {
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("twill: endpoint %s/%s drifted from what ADD made: %s", h.ContainerID, h.IfName, strings.Join(d, "; ")), "")
	}
	return nil
}

func (s *Server) checkEndpoint(_ context.Context, h ipam.Handle, netnsPath string, prev *types100.Result, d *drift) {
	var want []netip.Addr
	for _, a := range s.alloc.Allocations() {
		if a.Owner.Handle == h {
			want = append(want, a.IP)
		}
	}
	slices.SortFunc(want, netip.Addr.Compare)
	if len(want) == 0 {
		d.addf("IPAM holds no address for this attachment")
	}
	if prev != nil {
		var listed []netip.Addr
		for _, ipc := range prev.IPs {
			if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
				listed = append(listed, a.Unmap())
			}
		}
		slices.SortFunc(listed, netip.Addr.Compare)
		if len(want) > 0 && !slices.Equal(listed, want) {
			d.addf("prevResult lists addresses %v but IPAM holds %v", listed, want)
		}
	}

	hostName := HostVethName(h)
	host, err := s.hostHandle()
	if err != nil {
		d.addf("cannot inspect the node netns: %v", err)
		return
	}
	defer host.Close()
	hostLink, err := host.LinkByName(hostName)
	if err != nil {
		d.addf("host veth %s is missing on the node", hostName)
	} else {
		s.checkLink(hostLink, "host veth "+hostName, d)
		checkPrevMAC(prev, hostName, false, hostLink.Attrs().HardwareAddr, d)
	}

	podNS, err := ns.GetNS(netnsPath)
	if err != nil {
		d.addf("pod netns %s cannot be opened: %v", netnsPath, err)
		return
	}
	defer podNS.Close()
	pod, err := netlink.NewHandleAt(netns.NsHandle(podNS.Fd()))
	if err != nil {
		d.addf("cannot inspect pod netns %s: %v", netnsPath, err)
		return
	}
	defer pod.Close()
	podLink, err := pod.LinkByName(h.IfName)
	if err != nil {
		d.addf("pod interface %s is missing in %s", h.IfName, netnsPath)
		return
	}
	podDesc := "pod interface " + h.IfName
	s.checkLink(podLink, podDesc, d)
	checkPrevMAC(prev, h.IfName, true, podLink.Attrs().HardwareAddr, d)
	if hostLink == nil {
		return
	}
	if veth, ok := podLink.(*netlink.Veth); !ok {
		d.addf("%s is a %s, not a veth", podDesc, podLink.Type())
	} else if veth.Attrs().ParentIndex != hostLink.Attrs().Index {
		// A veth's IFLA_LINK is its peer's index, even with the peer in another netns.
		d.addf("%s is not the peer of host veth %s", podDesc, hostName)
	}

	checkPodAddresses(pod, podLink, want, d)
	podIdx := podLink.Attrs().Index
	for _, r := range podRoutes(podIdx, want) {
		if !hasRoute(pod, r) {
			d.addf("pod is missing route %s", describeRoute(r, h.IfName))
		}
	}
	for _, gw := range podGateways(want) {
		checkNeigh(pod, podIdx, gw, hostLink.Attrs().HardwareAddr, "pod "+h.IfName, d)
	}
	hostIdx := hostLink.Attrs().Index
	for _, ip := range want {
		r := hostRoute(hostIdx, ip)
		if !hasRoute(host, r) {
			d.addf("node is missing route %s", describeRoute(r, hostName))
		}
		checkNeigh(host, hostIdx, net.IP(ip.AsSlice()), podLink.Attrs().HardwareAddr, "node "+hostName, d)
	}
}

func (s *Server) checkLink(link netlink.Link, desc string, d *drift) {
	attrs := link.Attrs()
	if s.cfg.MTU > 0 && attrs.MTU != s.cfg.MTU {
		d.addf("%s has MTU %d, want %d", desc, attrs.MTU, s.cfg.MTU)
	}
	if attrs.Flags&net.FlagUp == 0 {
		d.addf("%s is down", desc)
	}
}

// checkPrevMAC compares a link's MAC with the one ADD reported for it.
func checkPrevMAC(prev *types100.Result, name string, inSandbox bool, mac net.HardwareAddr, d *drift) {
	if prev == nil {
		return
	}
	for _, iface := range prev.Interfaces {
		if iface.Name == name && (iface.Sandbox != "") == inSandbox && iface.Mac != "" && iface.Mac != mac.String() {
			d.addf("%s has MAC %s but ADD reported %s", name, mac, iface.Mac)
		}
	}
}

func checkPodAddresses(pod *netlink.Handle, link netlink.Link, want []netip.Addr, d *drift) {
	addrs, err := pod.AddrList(link, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		d.addf("cannot list addresses of pod %s: %v", link.Attrs().Name, err)
		return
	}
	var have []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		// The kernel's own IPv6 link-local address is not ADD's doing.
		if !ok || ip.Unmap().IsLinkLocalUnicast() {
			continue
		}
		have = append(have, ip.Unmap())
	}
	for _, w := range want {
		if !slices.Contains(have, w) {
			d.addf("pod %s is missing address %s", link.Attrs().Name, w)
		}
	}
	for _, h := range have {
		if !slices.Contains(want, h) {
			d.addf("pod %s has extra address %s", link.Attrs().Name, h)
		}
	}
}

// hasRoute reports whether the main table has a route with r's link, destination and gateway.
func hasRoute(h *netlink.Handle, r netlink.Route) bool {
	family := netlink.FAMILY_V4
	if r.Dst != nil && r.Dst.IP.To4() == nil {
		family = netlink.FAMILY_V6
	}
	routes, err := h.RouteListFiltered(family, &netlink.Route{LinkIndex: r.LinkIndex}, netlink.RT_FILTER_OIF)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return false
	}
	for _, got := range routes {
		if sameDst(got.Dst, r.Dst) && got.Gw.Equal(r.Gw) {
			return true
		}
	}
	return false
}

func sameDst(a, b *net.IPNet) bool {
	isDefault := func(n *net.IPNet) bool {
		if n == nil {
			return true
		}
		ones, _ := n.Mask.Size()
		return ones == 0
	}
	if isDefault(a) || isDefault(b) {
		return isDefault(a) && isDefault(b)
	}
	return a.IP.Equal(b.IP) && bytes.Equal(a.Mask, b.Mask)
}

func describeRoute(r netlink.Route, dev string) string {
	dst := "default"
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones > 0 {
			dst = r.Dst.String()
		}
	}
	if r.Gw != nil {
		return fmt.Sprintf("%q", fmt.Sprintf("%s via %s dev %s", dst, r.Gw, dev))
	}
	return fmt.Sprintf("%q", fmt.Sprintf("%s dev %s scope link", dst, dev))
}

func checkNeigh(h *netlink.Handle, linkIndex int, ip net.IP, mac net.HardwareAddr, where string, d *drift) {
	family := netlink.FAMILY_V6
	if ip.To4() != nil {
		family = netlink.FAMILY_V4
	}
	neighs, err := h.NeighList(linkIndex, family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		d.addf("cannot list neighbours of %s: %v", where, err)
		return
	}
	for _, n := range neighs {
		if n.IP.Equal(ip) {
			if n.State&netlink.NUD_PERMANENT == 0 || !bytes.Equal(n.HardwareAddr, mac) {
				d.addf("%s has neighbour %s lladdr %s (NUD state %#x), want permanent %s",
					where, ip, n.HardwareAddr, n.State, mac)
			}
			return
		}
	}
	d.addf("%s is missing permanent neighbour %s lladdr %s", where, ip, mac)
}
