package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// The datapath suite's networks besides twill's: the bare veth pair (the limit within a node)
// and the reference baseline, two lab nodes on the same underlay as twill's with Debian's
// bridge + host-local and a route to each other's pod subnet via the other node (the
// "flannel host-gw" shape). Everything lives in namespaces of the run.

// vethLimitSubnet addresses the bare veth pair; it exists only inside its two namespaces.
var (
	vethClientAddr = netip.MustParsePrefix("10.249.0.1/30")
	vethServerAddr = netip.MustParsePrefix("10.249.0.2/30")
)

// newVethPair makes namespaces "<name>-va" and "<name>-vb" joined by one veth pair with an
// address on each end: nothing else is on the path.
func newVethPair(name string) (client, server *underlay.Node, remove func() error, err error) {
	client = &underlay.Node{Name: name + "-va", IP: vethClientAddr.Addr()}
	server = &underlay.Node{Name: name + "-vb", IP: vethServerAddr.Addr()}
	var made []string
	remove = func() error {
		var errs []error
		for _, n := range made {
			errs = append(errs, underlay.DeleteNetns(n))
		}
		return errors.Join(errs...)
	}
	for _, n := range []*underlay.Node{client, server} {
		if n.Netns, err = underlay.CreateNetns(n.Name); err != nil {
			return nil, nil, remove, err
		}
		made = append(made, n.Name)
	}
	serverNs, err := netns.GetFromPath(server.Netns)
	if err != nil {
		return nil, nil, remove, err
	}
	defer serverNs.Close()
	err = client.Do(func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(serverNs)}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding the veth pair: %w", err)
		}
		return configureLink("eth0", vethClientAddr)
	})
	if err == nil {
		err = server.Do(func() error { return configureLink("eth0", vethServerAddr) })
	}
	return client, server, remove, err
}

// configureLink sets lo and link up and gives link addr (in the calling thread's namespace).
func configureLink(link string, addr netip.Prefix) error {
	for _, name := range []string{"lo", link} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("finding %s: %w", name, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("setting %s up: %w", name, err)
		}
		if name == link {
			ipn := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
				return fmt.Errorf("adding %s to %s: %w", addr, name, err)
			}
		}
	}
	return nil
}

// referenceNode is a lab node wired by the reference plugins, with its pods.
type referenceNode struct {
	node   *underlay.Node
	subnet netip.Prefix
	cni    *libcni.CNIConfig
	list   *libcni.NetworkConfigList
	pods   []*referencePod
}

type referencePod struct {
	sandbox *underlay.Node
	rt      *libcni.RuntimeConf
}

// newReferenceNodes attaches one node per pod subnet to lab's underlay (first subnet, like
// twill's nodes), each wiring podsPerNode pods with bridge + host-local, and routes each
// node's pod subnet via that node on every other node.
func newReferenceNodes(ctx context.Context, lab *cluster.Cluster, name, dir, pluginDir string, subnets []netip.Prefix, podsPerNode int) ([]*referenceNode, func() error, error) {
	var nodes []*referenceNode
	remove := func() error {
		var errs []error
		for _, n := range nodes {
			for _, p := range n.pods {
				_ = n.node.Do(func() error { return n.cni.DelNetworkList(context.WithoutCancel(ctx), n.list, p.rt) })
				errs = append(errs, underlay.DeleteNetns(p.sandbox.Name))
			}
		}
		// The nodes' namespaces (bridge, veths, routes) go with the underlay.
		return errors.Join(errs...)
	}
	for i, subnet := range subnets {
		un, err := lab.Net.AddNode(fmt.Sprintf("ref%d", i+1), 0)
		if err != nil {
			return nil, remove, err
		}
		n := &referenceNode{node: un, subnet: subnet}
		nodes = append(nodes, n)
		if err := enableForwarding(un); err != nil {
			return nil, remove, err
		}
		conf, err := referenceConfList("cni0", subnet, filepath.Join(dir, un.Name, "host-local"))
		if err != nil {
			return nil, remove, err
		}
		if n.list, err = libcni.NetworkConfFromBytes(conf); err != nil {
			return nil, remove, fmt.Errorf("the reference CNI config does not parse: %w", err)
		}
		n.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, filepath.Join(dir, un.Name, "cni-cache"), nil)
		for j := range podsPerNode {
			sb := fmt.Sprintf("%s-r%d-%d", name, i+1, j)
			path, err := underlay.CreateNetns(sb)
			if err != nil {
				return nil, remove, err
			}
			p := &referencePod{sandbox: &underlay.Node{Name: sb, Netns: path},
				rt: &libcni.RuntimeConf{ContainerID: sb, NetNS: path, IfName: "eth0"}}
			n.pods = append(n.pods, p)
			if err := n.add(ctx, p); err != nil {
				return nil, remove, err
			}
		}
	}
	for _, n := range nodes {
		for _, peer := range nodes {
			if peer == n {
				continue
			}
			if err := n.node.Do(func() error { return routeVia(peer.subnet, peer.node.IP) }); err != nil {
				return nil, remove, fmt.Errorf("routing %s via %s on %s: %w", peer.subnet, peer.node.Name, n.node.Name, err)
			}
		}
	}
	return nodes, remove, nil
}

// add wires p and records its address as the sandbox's IP.
func (n *referenceNode) add(ctx context.Context, p *referencePod) error {
	var res *types100.Result
	err := n.node.Do(func() error {
		r, err := n.cni.AddNetworkList(ctx, n.list, p.rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return fmt.Errorf("reference ADD of %s on %s: %w", p.sandbox.Name, n.node.Name, err)
	}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			p.sandbox.IP = a.Unmap()
			return nil
		}
	}
	return fmt.Errorf("reference ADD of %s gave no IPv4 address", p.sandbox.Name)
}

// routeVia adds a route to dst via gw in the calling thread's namespace.
func routeVia(dst netip.Prefix, gw netip.Addr) error {
	ipn := &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)}
	return netlink.RouteAdd(&netlink.Route{Dst: ipn, Gw: gw.AsSlice()})
}

// referenceConfList is what flannel hands its bridge delegate on a node: the node as the pods'
// default gateway, no masquerade (flannel does that itself), host-local for the node's subnet.
// Debian's plugins speak CNI up to 1.0.0.
func referenceConfList(bridge string, subnet netip.Prefix, dataDir string) ([]byte, error) {
	return json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "twill-bench-reference",
		"plugins": []any{map[string]any{
			"type":             "bridge",
			"bridge":           bridge,
			"isDefaultGateway": true,
			"hairpinMode":      true,
			"ipMasq":           false,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": subnet.String()}}},
				"dataDir": dataDir,
			},
		}},
	})
}
