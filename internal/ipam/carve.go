package ipam

import (
	"hash/fnv"
	"math/big"
	"net/netip"
	"slices"
)

// Carving: a pool's blocks are numbered 0..BlockCount-1 from its first address. A node looks for
// a free block starting at an index derived from a hash of its name and going up, wrapping at the
// end, so nodes that claim at the same moment mostly look in different places and rarely race
// for the same block, and one node's blocks tend to sit next to each other.

// NextFreeBlock returns the block of the pool that the node should claim next, given every block
// that exists (of any pool: a block overlapping the pool takes the space it overlaps), or false
// when no block of the pool is free.
func NextFreeBlock(pool Pool, existing []Block, node string) (netip.Prefix, bool) {
	total := pool.BlockCount()
	taken := takenRanges(pool, existing)
	start := new(big.Int).Mod(nodeOffset(node), total)
	if idx, ok := firstFree(taken, start, total); ok {
		return blockAt(pool, idx), true
	}
	if idx, ok := firstFree(taken, big.NewInt(0), start); ok {
		return blockAt(pool, idx), true
	}
	return netip.Prefix{}, false
}

// indexRange is an inclusive range of block indices.
type indexRange struct{ first, last *big.Int }

// takenRanges returns the block indices that existing blocks cover, sorted and merged.
func takenRanges(pool Pool, existing []Block) []indexRange {
	hostBits := uint(pool.CIDR.Addr().BitLen() - pool.BlockSize)
	base := addrInt(pool.CIDR.Addr())
	var ranges []indexRange
	for _, b := range existing {
		if !b.CIDR.IsValid() || !b.CIDR.Overlaps(pool.CIDR) {
			continue
		}
		if b.CIDR.Bits() <= pool.CIDR.Bits() { // covers the whole pool
			return []indexRange{{big.NewInt(0), new(big.Int).Sub(pool.BlockCount(), big.NewInt(1))}}
		}
		first := new(big.Int).Sub(addrInt(b.CIDR.Masked().Addr()), base)
		first.Rsh(first, hostBits)
		last := new(big.Int).Set(first)
		if b.CIDR.Bits() < pool.BlockSize { // bigger than one of our blocks
			last.Add(last, pow2(pool.BlockSize-b.CIDR.Bits()))
			last.Sub(last, big.NewInt(1))
		}
		ranges = append(ranges, indexRange{first, last})
	}
	slices.SortFunc(ranges, func(a, b indexRange) int { return a.first.Cmp(b.first) })
	var merged []indexRange
	for _, r := range ranges {
		if n := len(merged); n > 0 {
			prev := &merged[n-1]
			if r.first.Cmp(new(big.Int).Add(prev.last, big.NewInt(1))) <= 0 {
				if r.last.Cmp(prev.last) > 0 {
					prev.last = r.last
				}
				continue
			}
		}
		merged = append(merged, r)
	}
	return merged
}

// firstFree returns the lowest index in [from, limit) that no taken range covers.
func firstFree(taken []indexRange, from, limit *big.Int) (*big.Int, bool) {
	idx := new(big.Int).Set(from)
	for _, r := range taken {
		if r.last.Cmp(idx) < 0 {
			continue
		}
		if r.first.Cmp(idx) > 0 {
			break
		}
		idx.Add(r.last, big.NewInt(1))
	}
	return idx, idx.Cmp(limit) < 0
}

func blockAt(pool Pool, idx *big.Int) netip.Prefix {
	hostBits := uint(pool.CIDR.Addr().BitLen() - pool.BlockSize)
	off := new(big.Int).Lsh(idx, hostBits)
	return netip.PrefixFrom(intAddr(off.Add(off, addrInt(pool.CIDR.Addr())), pool.CIDR.Addr().Is4()), pool.BlockSize)
}

func nodeOffset(node string) *big.Int {
	h := fnv.New64a()
	h.Write([]byte(node))
	return new(big.Int).SetUint64(h.Sum64())
}

func addrInt(a netip.Addr) *big.Int {
	if a.Is4() {
		b := a.As4()
		return new(big.Int).SetBytes(b[:])
	}
	b := a.As16()
	return new(big.Int).SetBytes(b[:])
}

func intAddr(i *big.Int, is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		i.FillBytes(b[:])
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	i.FillBytes(b[:])
	return netip.AddrFrom16(b)
}
