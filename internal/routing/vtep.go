package routing

import (
	"crypto/sha256"
	"net"
	"net/netip"

	"github.com/twill-net/twill/internal/datapath"
)

// VTEPMAC is the MAC of the VXLAN device of the node whose tunnel endpoint is nodeIP. Deriving
// it from the address (instead of publishing a random one, as Flannel does in a Node
// annotation) means peers need nothing from the API but the node's address.
//
// Both forms are locally administered unicast addresses. An IPv4 address fits whole:
// 02:74:a:b:c:d ("t" for twill), so two IPv4 nodes never collide. An IPv6 address does not
// fit; it becomes 06 followed by 40 bits of its SHA-256 (a collision needs about a million
// nodes), and the distinct first byte keeps the two forms apart.
func VTEPMAC(nodeIP netip.Addr) net.HardwareAddr {
	return vtepMAC(nodeIP).HardwareAddr()
}

func vtepMAC(nodeIP netip.Addr) datapath.MAC {
	nodeIP = nodeIP.Unmap()
	var m datapath.MAC
	if nodeIP.Is4() {
		a := nodeIP.As4()
		m[0], m[1] = 0x02, 0x74
		copy(m[2:], a[:])
		return m
	}
	a := nodeIP.As16()
	sum := sha256.Sum256(a[:])
	m[0] = 0x06
	copy(m[1:], sum[:5])
	return m
}

// VTEPLinkLocal is the IPv6 link-local address the kernel would form from mac (modified
// EUI-64: fe80::, then the MAC with ff:fe in the middle and the universal/local bit flipped).
// Peers route IPv6 blocks through it, so IPv6 pods work whatever the underlay's family.
func VTEPLinkLocal(mac net.HardwareAddr) netip.Addr {
	m, ok := datapath.MACFrom(mac)
	if !ok {
		return netip.Addr{}
	}
	return linkLocal(m)
}

func linkLocal(m datapath.MAC) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	a[8], a[9], a[10] = m[0]^0x02, m[1], m[2]
	a[11], a[12] = 0xff, 0xfe
	a[13], a[14], a[15] = m[3], m[4], m[5]
	return netip.AddrFrom16(a)
}
