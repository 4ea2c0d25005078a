package cniserver_test

import (
	"net"
	"net/http"
	"net/netip"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/twill-net/twill/internal/cniproto"
	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/cniserver/cnitest"
	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/ipam"
)

func TestHostVethName(t *testing.T) {
	a := cniserver.HostVethName(ipam.Handle{ContainerID: "abc", IfName: "eth0"})
	b := cniserver.HostVethName(ipam.Handle{ContainerID: "abc", IfName: "eth1"})
	if len(a) != 13 || a[:2] != "tw" {
		t.Errorf("HostVethName = %q, want tw + 11 hex digits", a)
	}
	if a == b {
		t.Errorf("two interfaces of one container share host veth name %q", a)
	}
	if a != cniserver.HostVethName(ipam.Handle{ContainerID: "abc", IfName: "eth0"}) {
		t.Error("HostVethName is not stable")
	}
}

func TestAddPlumbsPodAndNode(t *testing.T) {
	f := newFixture(t, nil)
	pod := cnitest.NewNetns(t, "pod")
	req := request("c1", pod)
	res := f.add(req)
	h := handleOf(req)
	hostName := cniserver.HostVethName(h)
	ips := allocatedIPs(f.alloc, h)
	if len(ips) != 2 {
		t.Fatalf("allocator holds %v for the pod, want one IPv4 and one IPv6", ips)
	}

	node := handleIn(t, f.node)
	podH := handleIn(t, pod)
	hostLink := mustLink(t, node, hostName)
	podLink := mustLink(t, podH, "eth0")
	hostMAC, podMAC := hostLink.Attrs().HardwareAddr, podLink.Attrs().HardwareAddr

	// The result says what a runtime and the chained plugins need.
	if res.CNIVersion != "1.1.0" || len(res.Interfaces) != 2 {
		t.Fatalf("result: %+v", res)
	}
	if i := res.Interfaces[0]; i.Name != hostName || i.Mac != hostMAC.String() || i.Sandbox != "" {
		t.Errorf("result host interface %+v, want %s %s", i, hostName, hostMAC)
	}
	if i := res.Interfaces[1]; i.Name != "eth0" || i.Mac != podMAC.String() || i.Sandbox != pod.Path() {
		t.Errorf("result pod interface %+v, want eth0 %s in %s", i, podMAC, pod.Path())
	}
	if len(res.IPs) != 2 {
		t.Fatalf("result IPs %v, want 2", res.IPs)
	}
	for _, ipc := range res.IPs {
		ones, bits := ipc.Address.Mask.Size()
		if ipc.Interface == nil || *ipc.Interface != 1 || ones != bits {
			t.Errorf("result IP %s: want a host prefix on interface 1", ipc)
		}
		wantGW := datapath.PodGatewayIPv4
		if ipc.Address.IP.To4() == nil {
			wantGW = datapath.PodGatewayIPv6
		}
		if ipc.Gateway.String() != wantGW {
			t.Errorf("result IP %s: gateway %s, want %s", ipc.Address.String(), ipc.Gateway, wantGW)
		}
	}

	// Both ends: up, MTU, a veth pair.
	for _, l := range []netlink.Link{hostLink, podLink} {
		if l.Attrs().MTU != testMTU {
			t.Errorf("%s MTU %d, want %d", l.Attrs().Name, l.Attrs().MTU, testMTU)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s is down", l.Attrs().Name)
		}
	}
	if podLink.Attrs().ParentIndex != hostLink.Attrs().Index {
		t.Errorf("pod eth0's peer is ifindex %d, want host veth %d", podLink.Attrs().ParentIndex, hostLink.Attrs().Index)
	}

	// Pod addresses: exactly the allocated ones, as /32 and /128.
	addrs, err := podH.AddrList(podLink, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			got = append(got, a.IPNet.String())
		}
	}
	var want []string
	for _, ip := range ips {
		want = append(want, netip.PrefixFrom(ip, ip.BitLen()).String())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("pod addresses %v, want %v", got, want)
	}

	// Pod routes through the link-local gateways.
	routes4, _ := podH.RouteList(podLink, netlink.FAMILY_V4)
	if !hasRouteTo(routes4, "169.254.1.1/32", nil, int(netlink.SCOPE_LINK)) {
		t.Errorf("pod lacks 169.254.1.1 dev eth0 scope link: %v", routes4)
	}
	if !hasRouteTo(routes4, "", net.ParseIP(datapath.PodGatewayIPv4), -1) {
		t.Errorf("pod lacks default via 169.254.1.1: %v", routes4)
	}
	routes6, _ := podH.RouteList(podLink, netlink.FAMILY_V6)
	if !hasRouteTo(routes6, "", net.ParseIP(datapath.PodGatewayIPv6), -1) {
		t.Errorf("pod lacks default via fe80::1: %v", routes6)
	}
	// Permanent gateway neighbours -> host veth MAC.
	for _, gw := range []string{datapath.PodGatewayIPv4, datapath.PodGatewayIPv6} {
		if !hasPermanentNeigh(t, podH, podLink.Attrs().Index, net.ParseIP(gw), hostMAC) {
			t.Errorf("pod lacks permanent neighbour %s lladdr %s", gw, hostMAC)
		}
	}

	// Node side: a /32 and /128 to the pod through the host veth, our protocol, and neighbours.
	for _, ip := range ips {
		family := netlink.FAMILY_V4
		if ip.Is6() {
			family = netlink.FAMILY_V6
		}
		routes, _ := node.RouteList(hostLink, family)
		found := false
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == netip.PrefixFrom(ip, ip.BitLen()).String() {
				found = true
				// IPv6 routes carry no scope in the kernel; IPv4 ones must be link-scoped.
				if r.Protocol != netlink.RouteProtocol(datapath.RouteProtocolPod) || (ip.Is4() && r.Scope != netlink.SCOPE_LINK) {
					t.Errorf("node route to %s: protocol %d scope %d, want %d link", ip, r.Protocol, r.Scope, datapath.RouteProtocolPod)
				}
			}
		}
		if !found {
			t.Errorf("node lacks route %s dev %s: %v", ip, hostName, routes)
		}
		if !hasPermanentNeigh(t, node, hostLink.Attrs().Index, net.IP(ip.AsSlice()), podMAC) {
			t.Errorf("node lacks permanent neighbour %s lladdr %s dev %s", ip, podMAC, hostName)
		}
	}

	// CHECK agrees with what ADD made, with and without prevResult.
	check := req
	if status, body := f.call(cniproto.PathCheck, check); status != http.StatusOK {
		t.Errorf("CHECK without prevResult: %d %s", status, body)
	}
	check.PrevResult = mustJSON(t, res)
	if status, body := f.call(cniproto.PathCheck, check); status != http.StatusOK {
		t.Errorf("CHECK with prevResult: %d %s", status, body)
	}

	// DEL removes the pair and the addresses; DEL again, and of an unknown container, succeed.
	for i := range 2 {
		if status, body := f.call(cniproto.PathDel, req); status != http.StatusOK {
			t.Fatalf("DEL #%d: %d %s", i+1, status, body)
		}
	}
	if linkExists(node, hostName) || linkExists(podH, "eth0") {
		t.Error("veth pair still there after DEL")
	}
	if f.alloc.Holds(h) {
		t.Error("addresses still allocated after DEL")
	}
	if status, body := f.call(cniproto.PathDel, request("never-added", pod)); status != http.StatusOK {
		t.Errorf("DEL of an unknown container: %d %s", status, body)
	}
}

func TestDelWithPodNetnsGone(t *testing.T) {
	f := newFixture(t, nil)
	pod := cnitest.NewNetns(t, "pod")
	req := request("gone", pod)
	f.add(req)
	// The runtime may delete the netns before DEL: the pair is then gone already.
	gone := req
	gone.Netns = "/var/run/netns/twt-does-not-exist"
	if status, body := f.call(cniproto.PathDel, gone); status != http.StatusOK {
		t.Fatalf("DEL with a missing netns: %d %s", status, body)
	}
	gone.Netns = ""
	if status, body := f.call(cniproto.PathDel, gone); status != http.StatusOK {
		t.Fatalf("DEL with an empty netns: %d %s", status, body)
	}
	if f.alloc.Holds(handleOf(req)) {
		t.Error("addresses still allocated")
	}
}

func TestAddRollsBackOnFailure(t *testing.T) {
	f := newFixture(t, nil)
	node := handleIn(t, f.node)

	t.Run("interface name taken in the pod", func(t *testing.T) {
		pod := cnitest.NewNetns(t, "pod")
		podH := handleIn(t, pod)
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "eth0"
		if err := podH.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "other"}); err != nil {
			t.Fatal(err)
		}
		req := request("taken", pod)
		status, body := f.call(cniproto.PathAdd, req)
		expectCNIError(t, status, body, types.ErrInternal, "eth0")
		if f.alloc.Holds(handleOf(req)) || f.alloc.ReleaseCount(handleOf(req)) == 0 {
			t.Error("failed ADD did not release its addresses")
		}
		if linkExists(node, cniserver.HostVethName(handleOf(req))) {
			t.Error("failed ADD left its host veth")
		}
	})

	t.Run("address cannot be configured", func(t *testing.T) {
		pod := cnitest.NewNetns(t, "pod")
		// The same address twice: the second AddrAdd fails after the veth pair exists.
		f.alloc.Mangle = func(a []ipam.Allocation) []ipam.Allocation { return append(a, a[0]) }
		defer func() { f.alloc.Mangle = nil }()
		req := request("badaddr", pod)
		status, body := f.call(cniproto.PathAdd, req)
		expectCNIError(t, status, body, types.ErrInternal, "add address")
		if f.alloc.Holds(handleOf(req)) {
			t.Error("failed ADD did not release its addresses")
		}
		if linkExists(node, cniserver.HostVethName(handleOf(req))) || linkExists(handleIn(t, pod), "eth0") {
			t.Error("failed ADD left its veth pair")
		}
	})

	t.Run("IPAM fails", func(t *testing.T) {
		pod := cnitest.NewNetns(t, "pod")
		f.alloc.FailWith = cnitest.ErrFake
		defer func() { f.alloc.FailWith = nil }()
		req := request("noipam", pod)
		status, body := f.call(cniproto.PathAdd, req)
		expectCNIError(t, status, body, types.ErrInternal, cnitest.ErrFake.Error())
		if linkExists(node, cniserver.HostVethName(handleOf(req))) {
			t.Error("failed ADD left a host veth")
		}
	})

	t.Run("netns does not exist", func(t *testing.T) {
		req := cniproto.Request{ContainerID: "nons", IfName: "eth0", Netns: "/var/run/netns/twt-missing", CNIVersion: "1.1.0"}
		status, body := f.call(cniproto.PathAdd, req)
		expectCNIError(t, status, body, types.ErrInvalidNetNS, "/var/run/netns/twt-missing")
		if f.alloc.Holds(handleOf(req)) {
			t.Error("addresses allocated for a pod whose netns does not exist")
		}
	})
}

func hasRouteTo(routes []netlink.Route, dst string, gw net.IP, scope int) bool {
	for _, r := range routes {
		isDefault := r.Dst == nil || r.Dst.IP.IsUnspecified()
		if dst == "" && !isDefault || dst != "" && (r.Dst == nil || r.Dst.String() != dst) {
			continue
		}
		if gw != nil && !r.Gw.Equal(gw) {
			continue
		}
		if scope >= 0 && int(r.Scope) != scope {
			continue
		}
		return true
	}
	return false
}

func hasPermanentNeigh(t *testing.T, h *netlink.Handle, idx int, ip net.IP, mac net.HardwareAddr) bool {
	t.Helper()
	family := netlink.FAMILY_V6
	if ip.To4() != nil {
		family = netlink.FAMILY_V4
	}
	neighs, err := h.NeighList(idx, family)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if n.IP.Equal(ip) && n.State == netlink.NUD_PERMANENT && n.HardwareAddr.String() == mac.String() {
			return true
		}
	}
	return false
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := jsonMarshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
