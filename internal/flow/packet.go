package flow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// packet is what a drop event needs of a packet: its addresses, protocol and ports.
type packet struct {
	src, dst         netip.Addr
	proto            uint8
	srcPort, dstPort uint16
	icmpType         uint8
	icmpCode         uint8
}

// IP protocol numbers the decoder knows.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoSCTP   = 132
	protoICMPv6 = 58
)

var errShort = errors.New("packet too short")

// decodePacket reads an IPv4 or IPv6 packet as nflog hands it (from the network header on,
// possibly cut at the log's snaplen). Addresses are required; ports or ICMP type are read
// when the transport header is there (not in a non-first fragment, nor past the snaplen).
func decodePacket(b []byte) (packet, error) {
	if len(b) < 1 {
		return packet{}, errShort
	}
	switch b[0] >> 4 {
	case 4:
		return decodeIPv4(b)
	case 6:
		return decodeIPv6(b)
	}
	return packet{}, fmt.Errorf("IP version %d", b[0]>>4)
}

func decodeIPv4(b []byte) (packet, error) {
	if len(b) < 20 {
		return packet{}, errShort
	}
	headerLen := int(b[0]&0x0f) * 4
	if headerLen < 20 {
		return packet{}, fmt.Errorf("IPv4 header length %d", headerLen)
	}
	p := packet{
		src:   netip.AddrFrom4([4]byte(b[12:16])),
		dst:   netip.AddrFrom4([4]byte(b[16:20])),
		proto: b[9],
	}
	fragmentOffset := binary.BigEndian.Uint16(b[6:8]) & 0x1fff
	if fragmentOffset == 0 && len(b) > headerLen {
		p.transport(b[headerLen:])
	}
	return p, nil
}

// IPv6 extension headers the decoder steps over to find the transport header.
const (
	ipv6HopByHop    = 0
	ipv6Routing     = 43
	ipv6Fragment    = 44
	ipv6AuthHeader  = 51
	ipv6DestOptions = 60
)

func decodeIPv6(b []byte) (packet, error) {
	if len(b) < 40 {
		return packet{}, errShort
	}
	p := packet{
		src: netip.AddrFrom16([16]byte(b[8:24])),
		dst: netip.AddrFrom16([16]byte(b[24:40])),
	}
	next, rest := b[6], b[40:]
	for {
		switch next {
		case ipv6HopByHop, ipv6Routing, ipv6DestOptions, ipv6AuthHeader, ipv6Fragment:
		default:
			p.proto = next
			p.transport(rest)
			return p, nil
		}
		if len(rest) < 8 {
			// The transport protocol is past the snaplen: keep the addresses.
			p.proto = next
			return p, nil
		}
		length := (int(rest[1]) + 1) * 8
		switch next {
		case ipv6Fragment:
			length = 8
			if binary.BigEndian.Uint16(rest[2:4])>>3 != 0 { // not the first fragment: no ports
				p.proto = rest[0]
				return p, nil
			}
		case ipv6AuthHeader:
			length = (int(rest[1]) + 2) * 4
		}
		if len(rest) < length {
			p.proto = next
			return p, nil
		}
		next, rest = rest[0], rest[length:]
	}
}

// transport reads ports or ICMP type and code from the start of the transport header.
func (p *packet) transport(b []byte) {
	switch p.proto {
	case protoTCP, protoUDP, protoSCTP:
		if len(b) >= 4 {
			p.srcPort = binary.BigEndian.Uint16(b[0:2])
			p.dstPort = binary.BigEndian.Uint16(b[2:4])
		}
	case protoICMP, protoICMPv6:
		if len(b) >= 2 {
			p.icmpType, p.icmpCode = b[0], b[1]
		}
	}
}

// protocolName spells an IP protocol number as nft and Kubernetes do, in lower case.
func protocolName(proto uint8) string {
	switch proto {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoSCTP:
		return "sctp"
	case protoICMP:
		return "icmp"
	case protoICMPv6:
		return "icmpv6"
	}
	return strconv.Itoa(int(proto))
}
