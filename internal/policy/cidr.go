package policy

import (
	"net/netip"
	"slices"

	"github.com/twill-net/twill/internal/datapath"
)

// subtractPrefixes returns base minus every except, as disjoint prefixes. Datapaths then need
// no "except" logic: an nftables interval set or an eBPF LPM trie holds the result directly.
// Excepts outside base, or of the other family, change nothing.
func subtractPrefixes(base netip.Prefix, excepts []netip.Prefix) []netip.Prefix {
	base = base.Masked()
	var inside []netip.Prefix
	for _, e := range excepts {
		if !e.IsValid() || e.Addr().Is4() != base.Addr().Is4() || !e.Overlaps(base) {
			continue
		}
		if e.Bits() <= base.Bits() {
			return nil // the except covers all of base
		}
		inside = append(inside, e.Masked())
	}
	if len(inside) == 0 {
		return []netip.Prefix{base}
	}
	// Split base in halves and subtract from each: the depth is at most the excepts' length.
	lo, hi := halves(base)
	return append(subtractPrefixes(lo, inside), subtractPrefixes(hi, inside)...)
}

// halves splits a prefix into its two sub-prefixes one bit longer.
func halves(p netip.Prefix) (netip.Prefix, netip.Prefix) {
	bits := p.Bits() + 1
	lo := netip.PrefixFrom(p.Addr(), bits)
	b := p.Addr().AsSlice()
	i := (bits - 1) / 8
	b[i] |= 0x80 >> ((bits - 1) % 8)
	a, _ := netip.AddrFromSlice(b)
	return lo, netip.PrefixFrom(a, bits)
}

// normalizePrefixes sorts prefixes and drops those inside another, so a set's elements never
// overlap (nftables refuses overlapping interval elements).
func normalizePrefixes(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	for i := range ps {
		ps[i] = ps[i].Masked()
	}
	slices.SortFunc(ps, datapath.ComparePrefixes)
	out := ps[:0]
	for _, p := range ps {
		// Sorted by address then length, a prefix containing p comes before it, and the
		// prefixes kept are disjoint, so only the last kept can contain p.
		if n := len(out); n > 0 && out[n-1].Overlaps(p) {
			continue
		}
		out = append(out, p)
	}
	return out
}
