// Package underlay builds the lab's physical network: an isolated L2/L3 network made only of
// network namespaces. One namespace ("<name>-ul") holds a bridge per subnet and routes between
// them, so lab nodes can sit on one segment or in different subnets (the case twill's auto
// routing mode must handle); every lab node is a namespace with an "eth0" on one of the bridges.
// Nothing is created in the machine's root network namespace and nothing in the lab has a route
// out of it: lab traffic never leaves the lab. Processes in the root namespace reach lab servers
// through Node.DialContext, which opens its socket inside a node.
package underlay

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NodeLink is the name of every node's underlay interface.
const NodeLink = "eth0"

// gatewayHost is the host part of each subnet's gateway: the router namespace's address on the
// subnet's bridge.
const gatewayHost = 254

// Network is an underlay: the router namespace with its bridges, and the nodes attached to it.
type Network struct {
	// Name prefixes every namespace the network creates.
	Name string
	// Netns is the path of the router namespace that holds the bridges (for tcpdump and the like).
	Netns   string
	Subnets []netip.Prefix

	mu     sync.Mutex
	nodes  []*Node
	closed bool
}

// New creates the router namespace "<name>-ul" with one bridge ("br0", "br1", ...) per subnet,
// each holding the subnet's .254 address, and IPv4 forwarding on, so that nodes in different
// subnets reach each other through it. Subnets must be IPv4, /24 or larger, and distinct.
func New(name string, subnets ...netip.Prefix) (*Network, error) {
	if name == "" || strings.ContainsRune(name, '/') {
		return nil, fmt.Errorf("underlay: invalid name %q", name)
	}
	if len(subnets) == 0 {
		return nil, errors.New("underlay: at least one subnet is needed")
	}
	for i, s := range subnets {
		if !s.Addr().Is4() || s.Bits() > 24 || s.Masked() != s {
			return nil, fmt.Errorf("underlay: subnet %s: want an IPv4 network address with a prefix of /24 or shorter", s)
		}
		for _, other := range subnets[:i] {
			if other.Overlaps(s) {
				return nil, fmt.Errorf("underlay: subnets %s and %s overlap", other, s)
			}
		}
	}
	n := &Network{Name: name, Netns: NetnsPath(name + "-ul"), Subnets: slices.Clone(subnets)}
	if err := createNetns(name + "-ul"); err != nil {
		return nil, fmt.Errorf("underlay %s: %w", name, err)
	}
	if err := n.setupRouter(); err != nil {
		return nil, errors.Join(fmt.Errorf("underlay %s: %w", name, err), deleteNetns(name+"-ul"))
	}
	return n, nil
}

// Gateway is the router's address in subnet i.
func (n *Network) Gateway(i int) netip.Addr {
	return hostAddr(n.Subnets[i], gatewayHost)
}

func (n *Network) setupRouter() error {
	h, closeHandle, err := handleAt(n.Netns)
	if err != nil {
		return err
	}
	defer closeHandle()
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	for i, subnet := range n.Subnets {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("br%d", i)}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("adding bridge %s: %w", br.Name, err)
		}
		gw := netip.PrefixFrom(n.Gateway(i), subnet.Bits())
		if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(gw)}); err != nil {
			return fmt.Errorf("adding %s to %s: %w", gw, br.Name, err)
		}
		if err := h.LinkSetUp(br); err != nil {
			return fmt.Errorf("setting %s up: %w", br.Name, err)
		}
	}
	// /proc/sys/net belongs to the network namespace of the thread that opens it, hence Do.
	return ns.WithNetNSPath(n.Netns, func(ns.NetNS) error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enabling IPv4 forwarding in %s: %w", n.Netns, err)
		}
		return nil
	})
}

// AddNode creates the node namespace "<network>-<name>" attached to the bridge of subnet
// (an index into Subnets) by a veth whose node end is "eth0". Nodes of a subnet get its
// addresses in order: .1, .2, ... The node has a route to each other subnet via the gateway and
// no default route.
func (n *Network) AddNode(name string, subnet int) (*Node, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("underlay %s: closed", n.Name)
	}
	if name == "" || name == "ul" || strings.ContainsRune(name, '/') {
		return nil, fmt.Errorf("underlay %s: invalid node name %q", n.Name, name)
	}
	if subnet < 0 || subnet >= len(n.Subnets) {
		return nil, fmt.Errorf("underlay %s: node %s: no subnet %d (have %d)", n.Name, name, subnet, len(n.Subnets))
	}
	inSubnet := 0
	for _, other := range n.nodes {
		if other.Name == name {
			return nil, fmt.Errorf("underlay %s: node %s exists", n.Name, name)
		}
		if other.Prefix == n.Subnets[subnet] {
			inSubnet++
		}
	}
	if inSubnet+1 >= gatewayHost {
		return nil, fmt.Errorf("underlay %s: subnet %s is full", n.Name, n.Subnets[subnet])
	}
	node := &Node{
		Name:    name,
		Netns:   NetnsPath(n.Name + "-" + name),
		IP:      hostAddr(n.Subnets[subnet], inSubnet+1),
		Prefix:  n.Subnets[subnet],
		Gateway: n.Gateway(subnet),
		Link:    NodeLink,
	}
	if err := createNetns(filepath.Base(node.Netns)); err != nil {
		return nil, fmt.Errorf("underlay %s: node %s: %w", n.Name, name, err)
	}
	if err := n.plugNode(node, subnet, len(n.nodes)); err != nil {
		return nil, errors.Join(fmt.Errorf("underlay %s: node %s: %w", n.Name, name, err), deleteNetns(filepath.Base(node.Netns)))
	}
	n.nodes = append(n.nodes, node)
	return node, nil
}

// plugNode creates the veth pair from the router namespace (router end "vn<index>" on the
// subnet's bridge, node end moved into the node as eth0) and configures the node's side.
func (n *Network) plugNode(node *Node, subnet, index int) error {
	router, closeRouter, err := handleAt(n.Netns)
	if err != nil {
		return err
	}
	defer closeRouter()
	nodeNs, err := netns.GetFromPath(node.Netns)
	if err != nil {
		return fmt.Errorf("opening %s: %w", node.Netns, err)
	}
	defer nodeNs.Close()

	br, err := router.LinkByName(fmt.Sprintf("br%d", subnet))
	if err != nil {
		return fmt.Errorf("finding bridge of subnet %d: %w", subnet, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: fmt.Sprintf("vn%d", index), MasterIndex: br.Attrs().Index},
		PeerName:      NodeLink,
		PeerNamespace: netlink.NsFd(nodeNs),
	}
	if err := router.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s/%s: %w", veth.Name, NodeLink, err)
	}
	// The alias names the node in `ip link` output of the router namespace.
	if err := router.LinkSetAlias(veth, node.Name); err != nil {
		return fmt.Errorf("naming %s: %w", veth.Name, err)
	}
	if err := router.LinkSetUp(veth); err != nil {
		return fmt.Errorf("setting %s up: %w", veth.Name, err)
	}

	h, closeNode, err := handleAt(node.Netns)
	if err != nil {
		return err
	}
	defer closeNode()
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	if err := linkUp(h, NodeLink); err != nil {
		return err
	}
	eth0, err := h.LinkByName(NodeLink)
	if err != nil {
		return fmt.Errorf("finding %s: %w", NodeLink, err)
	}
	addr := netip.PrefixFrom(node.IP, node.Prefix.Bits())
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("adding %s to %s: %w", addr, NodeLink, err)
	}
	for i, other := range n.Subnets {
		if i == subnet {
			continue
		}
		route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(other), Gw: node.Gateway.AsSlice()}
		if err := h.RouteAdd(route); err != nil {
			return fmt.Errorf("adding route to %s via %s: %w", other, node.Gateway, err)
		}
	}
	return nil
}

// Nodes returns the nodes added so far, in order.
func (n *Network) Nodes() []*Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.nodes)
}

// Close removes every namespace the network created, and with them its links. It may be called
// more than once. Processes still running in a node keep that node's namespace alive in the
// kernel (not under RunDir) until they exit, so stop them first.
func (n *Network) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	var errs []error
	for _, node := range n.nodes {
		errs = append(errs, deleteNetns(filepath.Base(node.Netns)))
	}
	errs = append(errs, deleteNetns(filepath.Base(n.Netns)))
	return errors.Join(errs...)
}

// handleAt opens a netlink handle that works in the namespace at path, without moving any thread.
func handleAt(path string) (*netlink.Handle, func(), error) {
	nsHandle, err := netns.GetFromPath(path)
	if err != nil {
		return nil, nil, fmt.Errorf("opening %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(nsHandle)
	if err != nil {
		nsHandle.Close()
		return nil, nil, fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	return h, func() { h.Close(); nsHandle.Close() }, nil
}

func linkUp(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}

// hostAddr is the address with host part host in subnet (an IPv4 network address).
func hostAddr(subnet netip.Prefix, host int) netip.Addr {
	a := subnet.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(host)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
