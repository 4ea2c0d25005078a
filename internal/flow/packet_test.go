package flow

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

func ipv4Packet(src, dst string, proto uint8, fragOffset uint16, l4 []byte) []byte {
	b := make([]byte, 20, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(b[6:8], fragOffset)
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	return append(b, l4...)
}

// ipv6Packet builds an IPv6 packet whose next header chain is next, with exts (each already
// encoded, its own next header byte first) before l4.
func ipv6Packet(src, dst string, next uint8, exts [][]byte, l4 []byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	b[6], b[7] = next, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	for _, e := range exts {
		b = append(b, e...)
	}
	b = append(b, l4...)
	binary.BigEndian.PutUint16(b[4:6], uint16(len(b)-40))
	return b
}

func ports(src, dst uint16) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:2], src)
	binary.BigEndian.PutUint16(b[2:4], dst)
	return b
}

func TestDecodePacket(t *testing.T) {
	hopByHop := []byte{protoUDP, 0, 0, 0, 0, 0, 0, 0}            // 8 bytes, then UDP
	firstFragment := []byte{protoTCP, 0, 0, 0, 0, 0, 0, 1}       // offset 0: the ports follow
	laterFragment := []byte{protoTCP, 0, 0x05, 0x00, 0, 0, 0, 1} // offset 160 bytes: no ports
	for _, tc := range []struct {
		name string
		in   []byte
		want packet
	}{
		{"IPv4 TCP", ipv4Packet("10.0.0.2", "10.0.0.1", protoTCP, 0, ports(40000, 8080)),
			packet{src: addr("10.0.0.2"), dst: addr("10.0.0.1"), proto: protoTCP, srcPort: 40000, dstPort: 8080}},
		{"IPv4 UDP", ipv4Packet("10.0.0.1", "192.0.2.9", protoUDP, 0, ports(5353, 53)),
			packet{src: addr("10.0.0.1"), dst: addr("192.0.2.9"), proto: protoUDP, srcPort: 5353, dstPort: 53}},
		{"IPv4 ICMP echo", ipv4Packet("10.0.0.1", "10.0.0.2", protoICMP, 0, []byte{8, 0, 0, 0, 0, 1, 0, 1}),
			packet{src: addr("10.0.0.1"), dst: addr("10.0.0.2"), proto: protoICMP, icmpType: 8}},
		{"IPv4 later fragment has no ports", ipv4Packet("10.0.0.1", "10.0.0.2", protoUDP, 20, ports(1, 2)),
			packet{src: addr("10.0.0.1"), dst: addr("10.0.0.2"), proto: protoUDP}},
		{"IPv4 cut before the ports", ipv4Packet("10.0.0.1", "10.0.0.2", protoTCP, 0, []byte{1, 2}),
			packet{src: addr("10.0.0.1"), dst: addr("10.0.0.2"), proto: protoTCP}},
		{"IPv6 TCP", ipv6Packet("fd00::2", "fd00::1", protoTCP, nil, ports(40000, 443)),
			packet{src: addr("fd00::2"), dst: addr("fd00::1"), proto: protoTCP, srcPort: 40000, dstPort: 443}},
		{"IPv6 hop-by-hop then UDP", ipv6Packet("fd00::2", "fd00::1", ipv6HopByHop, [][]byte{hopByHop}, ports(1000, 53)),
			packet{src: addr("fd00::2"), dst: addr("fd00::1"), proto: protoUDP, srcPort: 1000, dstPort: 53}},
		{"IPv6 first fragment", ipv6Packet("fd00::2", "fd00::1", ipv6Fragment, [][]byte{firstFragment}, ports(1, 22)),
			packet{src: addr("fd00::2"), dst: addr("fd00::1"), proto: protoTCP, srcPort: 1, dstPort: 22}},
		{"IPv6 later fragment has no ports", ipv6Packet("fd00::2", "fd00::1", ipv6Fragment, [][]byte{laterFragment}, ports(1, 22)),
			packet{src: addr("fd00::2"), dst: addr("fd00::1"), proto: protoTCP}},
		{"ICMPv6 echo", ipv6Packet("fd00::1", "fd00::2", protoICMPv6, nil, []byte{128, 0, 0, 0}),
			packet{src: addr("fd00::1"), dst: addr("fd00::2"), proto: protoICMPv6, icmpType: 128}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodePacket(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("decoded %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDecodePacketRefusesWhatIsNoIPPacket(t *testing.T) {
	for name, in := range map[string][]byte{
		"empty":              nil,
		"IPv4 header cut":    ipv4Packet("10.0.0.1", "10.0.0.2", protoTCP, 0, nil)[:19],
		"IPv6 header cut":    ipv6Packet("fd00::1", "fd00::2", protoTCP, nil, nil)[:39],
		"version 5":          {0x50, 0, 0, 0},
		"IPv4 header len 12": append([]byte{0x43}, make([]byte, 30)...),
	} {
		if p, err := decodePacket(in); err == nil {
			t.Errorf("%s: decoded %+v, want an error", name, p)
		}
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }
