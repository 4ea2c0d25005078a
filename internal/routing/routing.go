// Package routing is the calculator that turns the cluster's nodes (their addresses and pod
// address blocks) into the routes, VXLAN tunnel peers and MTU of this node: nodes -> desired
// datapath.RouteState. Compute is pure and deterministic; a datapath.RouteReconciler makes the
// kernel match its result. DetectUnderlay, the one part that reads the kernel, only reads.
package routing

import (
	"fmt"
	"net/netip"
	"strings"
)

// Mode is how pod traffic crosses from one node to another.
type Mode string

const (
	// ModeVXLAN encapsulates pod traffic to every peer in VXLAN over the node network.
	ModeVXLAN Mode = "vxlan"
	// ModeNative routes pod blocks straight at the peer's node address; the nodes must share
	// an L2 segment (the "host-gw" shape), and there is no encapsulation overhead.
	ModeNative Mode = "native"
	// ModeAuto routes natively to peers on one of this node's subnets and through VXLAN to the
	// others (Calico's CrossSubnet).
	ModeAuto Mode = "auto"
)

// Modes lists the modes in the order help texts show them.
var Modes = []Mode{ModeVXLAN, ModeNative, ModeAuto}

// ParseMode reads a mode as a user writes it (case and surrounding blanks ignored).
func ParseMode(s string) (Mode, error) {
	m := Mode(strings.ToLower(strings.TrimSpace(s)))
	for _, known := range Modes {
		if m == known {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown routing mode %q: want one of vxlan, native, auto", s)
}

// Defaults used when a Config leaves a field at zero.
const (
	DefaultVNI  = 1
	DefaultPort = 8472 // the Linux kernel's and Flannel's VXLAN port, not IANA's 4789
)

// Config is the cluster-wide routing setting; every node must use the same one.
type Config struct {
	Mode Mode // empty means ModeVXLAN
	VNI  int  // VXLAN network identifier; 0 means DefaultVNI
	Port int  // VXLAN UDP port; 0 means DefaultPort
	// MTU, when not 0, is the pod MTU to use instead of the detected one (and the VXLAN
	// device's, so that pods' full-size packets fit into it). IPv6 needs at least 1280.
	MTU int
}

// Validate reports a setting the kernel would refuse, before anything is programmed.
func (c Config) Validate() error {
	if c.Mode != "" {
		if _, err := ParseMode(string(c.Mode)); err != nil {
			return err
		}
	}
	if c.VNI < 0 || c.VNI > 1<<24-1 {
		return fmt.Errorf("VXLAN VNI %d out of range 1..16777215", c.VNI)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("VXLAN port %d out of range 1..65535", c.Port)
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return fmt.Errorf("MTU %d out of range 68..65535 (0 detects it)", c.MTU)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = ModeVXLAN
	}
	if c.VNI == 0 {
		c.VNI = DefaultVNI
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	return c
}

// Node is what the calculator needs of one node.
type Node struct {
	Name string
	// IPs are the node's addresses on the node network, primary first. The local node's
	// first address picks the tunnel family: VXLAN runs over IPv4 when it is IPv4.
	IPs []netip.Addr
	// Blocks are the node's pod address blocks (IPv4 and IPv6).
	Blocks []netip.Prefix
}

// Underlay is the interface that carries node traffic on this node.
type Underlay struct {
	Link    string         // interface name, e.g. eth0
	Index   int            // interface index in the node's network namespace
	MTU     int            // the interface's MTU
	Subnets []netip.Prefix // the (masked) subnets of its global addresses, sorted
}
