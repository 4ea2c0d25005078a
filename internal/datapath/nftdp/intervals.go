package nftdp

import (
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
)

// nftables refuses overlapping elements in an interval set, and a concatenation of intervals
// (the NetworkPolicy maps) overlaps as soon as two rules allow overlapping ports or address
// ranges to the same pod. So elements are cut into disjoint pieces first, each piece taking
// the verdict of the earliest rule covering it. Ports and addresses are both handled as
// 128-bit numbers (IPv4 in its IPv4-mapped IPv6 form).

// u128 is an unsigned 128-bit number.
type u128 struct{ hi, lo uint64 }

var maxU128 = u128{^uint64(0), ^uint64(0)}

func (a u128) cmp(b u128) int {
	switch {
	case a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo):
		return -1
	case a == b:
		return 0
	}
	return 1
}

func (a u128) next() u128 {
	if a.lo == ^uint64(0) {
		return u128{a.hi + 1, 0}
	}
	return u128{a.hi, a.lo + 1}
}

func (a u128) prev() u128 {
	if a.lo == 0 {
		return u128{a.hi - 1, ^uint64(0)}
	}
	return u128{a.hi, a.lo - 1}
}

func addrU128(a netip.Addr) u128 {
	b := a.As16()
	var v u128
	for i := range 8 {
		v.hi = v.hi<<8 | uint64(b[i])
		v.lo = v.lo<<8 | uint64(b[i+8])
	}
	return v
}

func u128Addr(v u128, f family) netip.Addr {
	var b [16]byte
	for i := range 8 {
		b[7-i] = byte(v.hi >> (8 * i))
		b[15-i] = byte(v.lo >> (8 * i))
	}
	a := netip.AddrFrom16(b)
	if f == ipv4 {
		return a.Unmap()
	}
	return a
}

// span is an inclusive range with a rank: where spans overlap, the lowest rank wins.
type span struct {
	lo, hi u128
	rank   int
}

func prefixSpan(p netip.Prefix, rank int) span {
	p = p.Masked()
	lo := addrU128(p.Addr())
	hostBits := 128 - p.Bits()
	if p.Addr().Is4() {
		hostBits = 32 - p.Bits()
	}
	var mask u128
	switch {
	case hostBits >= 64:
		mask = u128{^uint64(0) >> (128 - hostBits), ^uint64(0)}
	case hostBits > 0:
		mask = u128{0, ^uint64(0) >> (64 - hostBits)}
	}
	return span{lo: lo, hi: u128{lo.hi | mask.hi, lo.lo | mask.lo}, rank: rank}
}

func portSpan(first, last uint16, rank int) span {
	return span{lo: u128{0, uint64(first)}, hi: u128{0, uint64(last)}, rank: rank}
}

// partition cuts spans into disjoint spans covering the same values; each value keeps the
// lowest rank of the spans that held it. Neighbours of equal rank are joined.
func partition(spans []span) []span {
	var out []span
	for _, piece := range pieces(spans) {
		rank := -1
		for _, s := range spans {
			if covers(s, piece) && (rank < 0 || s.rank < rank) {
				rank = s.rank
			}
		}
		if n := len(out); n > 0 && out[n-1].rank == rank && out[n-1].hi.next() == piece.lo {
			out[n-1].hi = piece.hi
			continue
		}
		out = append(out, span{lo: piece.lo, hi: piece.hi, rank: rank})
	}
	return out
}

// pieces returns the elementary ranges the spans' ends cut their union into: every span
// covers each piece whole or not at all.
func pieces(spans []span) []span {
	var cuts []u128
	for _, s := range spans {
		cuts = append(cuts, s.lo)
		if s.hi != maxU128 {
			cuts = append(cuts, s.hi.next())
		}
	}
	slices.SortFunc(cuts, u128.cmp)
	cuts = slices.Compact(cuts)
	var out []span
	for i, start := range cuts {
		piece := span{lo: start, hi: maxU128}
		if i+1 < len(cuts) {
			piece.hi = cuts[i+1].prev()
		}
		for _, s := range spans {
			if covers(s, piece) {
				out = append(out, piece)
				break
			}
		}
	}
	return out
}

func covers(s, piece span) bool { return s.lo.cmp(piece.lo) <= 0 && s.hi.cmp(piece.hi) >= 0 }

// rect is an address range by a port range, an element of a map keyed by both; the rank is
// the port span's.
type rect struct {
	addr, port span
}

// partition2 cuts rects into disjoint ones: the address ranges into pieces, and within each
// piece the ports of the rects covering it; neighbouring pieces with the same ports are
// joined.
func partition2(rects []rect) []rect {
	addrs := make([]span, len(rects))
	for i, r := range rects {
		addrs[i] = r.addr
	}
	type group struct {
		addr  span
		ports []span
	}
	var groups []group
	for _, piece := range pieces(addrs) {
		var ports []span
		for _, r := range rects {
			if covers(r.addr, piece) {
				ports = append(ports, r.port)
			}
		}
		ports = partition(ports)
		if n := len(groups); n > 0 && groups[n-1].addr.hi.next() == piece.lo && slices.Equal(groups[n-1].ports, ports) {
			groups[n-1].addr.hi = piece.hi
			continue
		}
		groups = append(groups, group{addr: piece, ports: ports})
	}
	var out []rect
	for _, g := range groups {
		for _, p := range g.ports {
			out = append(out, rect{addr: g.addr, port: p})
		}
	}
	return out
}

// formatAddrs writes an address range as nft reads it: one address, a prefix when the range
// is exactly one, else first-last.
func formatAddrs(s span, f family) string {
	lo := u128Addr(s.lo, f)
	if s.lo == s.hi {
		return lo.String()
	}
	x := u128{s.lo.hi ^ s.hi.hi, s.lo.lo ^ s.hi.lo}
	// x has only low bits set (x & (x+1) == 0) and lo has none of them: a prefix.
	x1 := x.next()
	aligned := x.hi&x1.hi == 0 && x.lo&x1.lo == 0 && s.lo.hi&x.hi == 0 && s.lo.lo&x.lo == 0
	if aligned {
		hostBits := bits.OnesCount64(x.hi) + bits.OnesCount64(x.lo)
		total := 128
		if f == ipv4 {
			total = 32
		}
		return netip.PrefixFrom(lo, total-hostBits).String()
	}
	return lo.String() + "-" + u128Addr(s.hi, f).String()
}

func formatPorts(s span) string {
	if s.lo == s.hi {
		return strconv.FormatUint(s.lo.lo, 10)
	}
	return strconv.FormatUint(s.lo.lo, 10) + "-" + strconv.FormatUint(s.hi.lo, 10)
}
