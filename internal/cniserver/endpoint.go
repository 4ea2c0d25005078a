package cniserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/cni/spool"
	"github.com/twill-net/twill/internal/cniproto"
	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/ipam"
)

// HostVethName is the node-side veth of an attachment: "tw" and 11 hex digits of a hash of
// container ID and interface name. It fits the kernel's 15-character limit, is the same every
// time for the same attachment (so DEL, CHECK and GC find it without any state), and its prefix
// tells an operator whose interface it is.
func HostVethName(h ipam.Handle) string {
	sum := sha256.Sum256([]byte(h.ContainerID + "/" + h.IfName))
	return "tw" + hex.EncodeToString(sum[:])[:11]
}

var (
	podGatewayV4 = net.ParseIP(datapath.PodGatewayIPv4)
	podGatewayV6 = net.ParseIP(datapath.PodGatewayIPv6)
)

// endpoint is what plumbing made, for the result.
type endpoint struct {
	hostVeth string
	hostMAC  net.HardwareAddr
	podMAC   net.HardwareAddr
	addrs    []netip.Addr
}

// Add creates the endpoint of one attachment and returns its CNI 1.1.0 result. Whatever fails,
// everything it did is undone: the veth pair (taking its addresses, routes and neighbours with
// it) and the addresses it was given.
func (s *Server) Add(ctx context.Context, req cniproto.Request) (*types100.Result, error) {
	if err := requireHandle(req); err != nil {
		return nil, err
	}
	if req.Netns == "" {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
			"twill agent: ADD needs the pod's network namespace path (CNI_NETNS is empty)", "")
	}
	if err := s.ready(); err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, "twill agent is not ready yet: "+err.Error(), "")
	}
	s.releaseSuperseded(ctx, req)
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	h := ipam.Handle{ContainerID: req.ContainerID, IfName: req.IfName}
	unlock := s.locks.lock(h)
	defer unlock()

	// A DEL the plugin spooled for this same attachment happened before this ADD; finishing it
	// after the ADD would tear down the new endpoint.
	if s.cfg.PendingDeleteDir != "" {
		if _, ok := spool.Lookup(s.cfg.PendingDeleteDir, h.ContainerID, h.IfName); ok {
			// deleteLocked also removes the spool file.
			if err := s.deleteLocked(ctx, h); err != nil {
				return nil, fmt.Errorf("finish the pending DEL of %s/%s before ADD: %w", h.ContainerID, h.IfName, err)
			}
			s.log.Info("completed a spooled DEL before a new ADD of the same attachment", "containerID", h.ContainerID, "ifName", h.IfName)
		}
	}

	podNS, err := ns.GetNS(req.Netns)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS,
			fmt.Sprintf("twill agent: cannot open the pod's network namespace %s: %v", req.Netns, err), "")
	}
	defer podNS.Close()

	owner := ipam.Owner{Handle: h, PodNamespace: req.PodNamespace, PodName: req.PodName, PodUID: req.PodUID}
	allocs, err := s.alloc.Allocate(ctx, owner)
	if err != nil {
		return nil, fmt.Errorf("allocate addresses for pod %s/%s: %w", req.PodNamespace, req.PodName, err)
	}
	// The policy goes in before the plumbing: by the time a route leads to the pod's address,
	// the datapath already polices it, so not even a packet sent during the plumbing passes
	// unjudged.
	if s.cfg.BeforeReady != nil {
		ep := Endpoint{PodNamespace: req.PodNamespace, PodName: req.PodName, PodUID: req.PodUID,
			ContainerID: h.ContainerID, IfName: h.IfName}
		for _, a := range allocs {
			ep.IPs = append(ep.IPs, a.IP)
		}
		err = s.cfg.BeforeReady(ctx, ep)
		if err != nil {
			err = fmt.Errorf("put the policy of pod %s/%s in force: %w", req.PodNamespace, req.PodName, err)
		}
	}
	var ep *endpoint
	if err == nil {
		ep, err = s.plumb(h, podNS, allocs)
	}
	if err != nil {
		// Detached from ctx: a rollback must run even when the request's time is up.
		cleanup := context.WithoutCancel(ctx)
		if rmErr := s.removeHostVeth(h); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("rollback: %w", rmErr))
		}
		if relErr := s.alloc.Release(cleanup, h); relErr != nil {
			err = errors.Join(err, fmt.Errorf("rollback: release addresses: %w", relErr))
		}
		return nil, err
	}
	return s.result(req, ep), nil
}

// plumb makes the veth pair and configures both ends. On error the caller removes the host veth,
// which removes its peer and everything configured on either end.
func (s *Server) plumb(h ipam.Handle, podNS ns.NetNS, allocs []ipam.Allocation) (*endpoint, error) {
	if len(allocs) == 0 {
		return nil, errors.New("IPAM gave no address")
	}
	ep := &endpoint{hostVeth: HostVethName(h)}
	hasV6 := false
	for _, a := range allocs {
		ep.addrs = append(ep.addrs, a.IP)
		hasV6 = hasV6 || a.IP.Is6()
	}

	host, err := s.hostHandle()
	if err != nil {
		return nil, err
	}
	defer host.Close()
	pod, err := netlink.NewHandleAt(netns.NsHandle(podNS.Fd()))
	if err != nil {
		return nil, fmt.Errorf("open netlink in pod netns %s: %w", podNS.Path(), err)
	}
	defer pod.Close()

	// The name is ours (derived from this attachment): one left over is from an earlier ADD of
	// this same attachment that the runtime is retrying.
	if old, err := host.LinkByName(ep.hostVeth); err == nil {
		if err := host.LinkDel(old); err != nil {
			return nil, fmt.Errorf("remove leftover host veth %s: %w", ep.hostVeth, err)
		}
	}

	// The peer is created straight inside the pod's netns under its final name, so it never
	// appears in the node's namespace, where a name like eth0 is taken.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = ep.hostVeth
	attrs.MTU = s.cfg.MTU
	veth := netlink.NewVeth(attrs)
	veth.PeerName = h.IfName
	veth.PeerMTU = uint32(max(s.cfg.MTU, 0))
	veth.PeerNamespace = netlink.NsFd(int(podNS.Fd()))
	if err := host.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s with peer %s in %s: %w", ep.hostVeth, h.IfName, podNS.Path(), err)
	}
	hostLink, err := host.LinkByName(ep.hostVeth)
	if err != nil {
		return nil, fmt.Errorf("find host veth %s: %w", ep.hostVeth, err)
	}
	podLink, err := pod.LinkByName(h.IfName)
	if err != nil {
		return nil, fmt.Errorf("find %s in pod netns: %w", h.IfName, err)
	}
	ep.hostMAC = hostLink.Attrs().HardwareAddr
	ep.podMAC = podLink.Attrs().HardwareAddr

	if hasV6 {
		// A runtime or image may have disabled IPv6 in the pod; the pod was given an IPv6 address.
		err := podNS.Do(func(ns.NetNS) error {
			_, err := sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", h.IfName), "0")
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("enable IPv6 on %s in the pod: %w", h.IfName, err)
		}
	}
	// Both ends up first: the kernel activates a veth's transmit queue asynchronously (link
	// watch) once both ends are up, and the configuration below gives it time to do so.
	if err := host.LinkSetUp(hostLink); err != nil {
		return nil, fmt.Errorf("set host veth %s up: %w", ep.hostVeth, err)
	}
	if err := pod.LinkSetUp(podLink); err != nil {
		return nil, fmt.Errorf("set %s up in the pod: %w", h.IfName, err)
	}
	if err := configurePod(pod, podLink, ep); err != nil {
		return nil, err
	}
	if err := configureHost(host, hostLink, ep); err != nil {
		return nil, err
	}
	// ADD returns only when the pod can talk: otherwise its first SYN is lost and resent a
	// second later. Until the kernel's link watch has run, a veth drops what it is given to send;
	// and an IPv6 address, even without DAD, gets its local route from a kernel work item a few
	// milliseconds after it is added, and until then the pod drops packets sent to it.
	if err := waitOperUp(host, ep.hostVeth, "host veth"); err != nil {
		return nil, err
	}
	if err := waitOperUp(pod, h.IfName, "pod interface"); err != nil {
		return nil, err
	}
	for _, ip := range ep.addrs {
		if err := waitLocal(pod, ip); err != nil {
			return nil, err
		}
	}
	return ep, nil
}

// result is the CNI 1.1.0 result: the host veth (index 0), the pod interface (index 1) and its
// addresses, with the link-local gateways.
func (s *Server) result(req cniproto.Request, ep *endpoint) *types100.Result {
	res := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: ep.hostVeth, Mac: ep.hostMAC.String(), Mtu: s.cfg.MTU},
			{Name: req.IfName, Mac: ep.podMAC.String(), Mtu: s.cfg.MTU, Sandbox: req.Netns},
		},
	}
	linkScope := int(netlink.SCOPE_LINK)
	for _, ip := range ep.addrs {
		gw := podGatewayV4
		if ip.Is6() {
			gw = podGatewayV6
		}
		res.IPs = append(res.IPs, &types100.IPConfig{Interface: types100.Int(1), Address: *hostPrefix(ip), Gateway: gw})
	}
	if hasFamily(ep.addrs, false) {
		res.Routes = append(res.Routes,
			&types.Route{Dst: *hostPrefix(netip.MustParseAddr(datapath.PodGatewayIPv4)), Scope: &linkScope},
			&types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: podGatewayV4})
	}
	if hasFamily(ep.addrs, true) {
		res.Routes = append(res.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: podGatewayV6})
	}
	return res
}

// DeleteEndpoint removes an attachment's host veth (and with it the pod's end, routes and
// neighbours) and releases its addresses. It is idempotent: an attachment already gone, or
// never made, is not an error. The agent also calls it to reclaim leaked attachments.
func (s *Server) DeleteEndpoint(ctx context.Context, h ipam.Handle) error {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	unlock := s.locks.lock(h)
	defer unlock()
	return s.deleteLocked(ctx, h)
}

func (s *Server) deleteLocked(ctx context.Context, h ipam.Handle) error {
	if err := s.removeHostVeth(h); err != nil {
		return err
	}
	if err := s.alloc.Release(ctx, h); err != nil {
		return fmt.Errorf("release addresses of %s/%s: %w", h.ContainerID, h.IfName, err)
	}
	// This DEL supersedes one the plugin may have spooled for the same attachment.
	if s.cfg.PendingDeleteDir != "" {
		if err := spool.Remove(filepath.Join(s.cfg.PendingDeleteDir, spool.FileName(h.ContainerID, h.IfName))); err != nil {
			return err
		}
	}
	return nil
}

// removeHostVeth deletes the attachment's host veth if it is there.
func (s *Server) removeHostVeth(h ipam.Handle) error {
	host, err := s.hostHandle()
	if err != nil {
		return err
	}
	defer host.Close()
	return deleteLinkIfPresent(host, HostVethName(h))
}

func deleteLinkIfPresent(host *netlink.Handle, name string) error {
	link, err := host.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("look up host veth %s: %w", name, err)
	}
	// The pod's netns may be going away at the same moment, taking the pair with it.
	if err := host.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete host veth %s: %w", name, err)
	}
	return nil
}

// releaseSuperseded frees the attachments of older sandboxes of the pod an ADD is for. The
// kubelet tears a pod's sandbox down before it makes a new one, so an older attachment of the
// same pod (same UID) and interface is dead even when its DEL never arrived (a runtime that
// crashed mid-teardown, a plugin killed): reclaiming it here, rather than at the next GC, keeps
// a crash-looping sandbox from draining the node's addresses.
func (s *Server) releaseSuperseded(ctx context.Context, req cniproto.Request) {
	if req.PodUID == "" {
		return
	}
	done := map[ipam.Handle]bool{}
	for _, al := range s.alloc.Allocations() {
		o := al.Owner
		if o.PodUID != req.PodUID || o.IfName != req.IfName || o.ContainerID == req.ContainerID || done[o.Handle] {
			continue
		}
		done[o.Handle] = true
		if err := s.DeleteEndpoint(ctx, o.Handle); err != nil {
			s.log.Warn("releasing a superseded sandbox of the pod", "pod", req.PodNamespace+"/"+req.PodName,
				"containerID", o.ContainerID, "err", err)
			continue
		}
		s.log.Info("released the addresses of a superseded sandbox of the pod", "pod", req.PodNamespace+"/"+req.PodName,
			"old", o.ContainerID, "new", req.ContainerID)
	}
}
