package kubenode

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/twill-net/twill/internal/lab/underlay"
)

// LoadBalancerRange is the lab's range of load balancer and external addresses: the
// connectivity test gives them to LoadBalancer Services (no controller does in the lab) and
// puts them in externalIPs. It is routed like the service range, and is neither the pod pool
// (10.244.0.0/16) nor the service range (10.96.0.0/16).
var LoadBalancerRange = netip.MustParsePrefix("10.98.0.0/24")

// addServiceRoute routes the cluster's service range (or the load balancer range) out of the
// node's underlay link. A real node has a default route, so a connection from the node itself
// to a ClusterIP finds a route and the service proxy (kube-proxy or twill) translates it in the
// output hook; a lab node has no default route (nothing may leave the lab), so without this
// the connect fails with "network is unreachable" before any proxy sees it. Addresses no proxy
// translates go to the lab's router, which has no route for them either: they never leave the
// lab.
func addServiceRoute(node *underlay.Node, cidr netip.Prefix) error {
	ns, err := netns.GetFromPath(node.Netns)
	if err != nil {
		return fmt.Errorf("opening %s: %w", node.Netns, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(node.Link)
	if err != nil {
		return fmt.Errorf("finding %s: %w", node.Link, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: cidr.Addr().AsSlice(), Mask: net.CIDRMask(cidr.Bits(), cidr.Addr().BitLen())}}
	if node.Gateway.IsValid() && node.Gateway.Is4() == cidr.Addr().Is4() {
		route.Gw, route.Scope = node.Gateway.AsSlice(), netlink.SCOPE_UNIVERSE
	}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("routing %s on %s: %w", cidr, node.Name, err)
	}
	return nil
}
