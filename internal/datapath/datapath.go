// Package datapath holds the desired-state types the calculators produce and the interfaces of
// the reconcilers that make the kernel match them. Implementations live in sub-packages (netlink
// routing today; nftables and eBPF for policy and services later), and a fake records what it
// was asked so control-plane logic is tested without root.
package datapath

// Route protocol numbers mark the kernel routes twill owns, so a reconciler can find and remove
// its own routes without ever touching routes made by anyone else. (Numbers above 99 and below
// 186 are unassigned in iproute2's rt_protos.)
const (
	// RouteProtocolRemote marks routes to other nodes' pod blocks (and blackholes for our own).
	RouteProtocolRemote = 116
	// RouteProtocolPod marks the host's route to one local pod through its host-side veth.
	RouteProtocolPod = 117
)

// Pod-side gateway addresses. A pod's only routes point at these link-local addresses on eth0,
// and a permanent neighbour entry maps them to the host-side veth's MAC, so the pod needs no
// ARP/NDP answer from the host and the host needs no per-pod gateway address.
const (
	PodGatewayIPv4 = "169.254.1.1"
	PodGatewayIPv6 = "fe80::1"
)

// VXLANDevice is the name of the overlay device on every node.
const VXLANDevice = "twill.vxlan"
