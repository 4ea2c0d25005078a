package ipam

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
)

// Pool is a range of pod addresses that nodes claim blocks of (the IPPool resource).
type Pool struct {
	Name string
	CIDR netip.Prefix
	// BlockSize is the prefix length of the pool's blocks; 0 means the family's default.
	BlockSize int
	// Disabled: no new blocks and no new addresses come from the pool; addresses already given
	// stay until released, and its blocks go back as they empty.
	Disabled bool
}

// Block is one block of a pool, owned by one node (the IPAMBlock resource). Allocated is the
// owner's last report of how many of its addresses are in use.
type Block struct {
	CIDR      netip.Prefix
	Pool      string
	Node      string
	Allocated int
}

// Default block sizes: 64 addresses per block in either family, as Calico does. A node starts
// with one block and claims more as its pods need them, so the size trades API writes per pod
// burst against addresses stranded on nodes with few pods.
const (
	DefaultBlockSizeIPv4 = 26
	DefaultBlockSizeIPv6 = 122
)

// maxBlockHostBits bounds a block at 65536 addresses. A block is one node's share and its
// allocator keeps the block's state in memory; no kubelet runs anywhere near that many pods,
// so bigger blocks would only strand pool space on one node.
const maxBlockHostBits = 16

// Every address of a block is given to pods, the first and the last included. Pods get a /32
// (/128) with a link-local gateway (datapath.PodGatewayIPv4/IPv6), and hosts route to single
// pods and to whole blocks; no link is ever configured with a block's prefix, so no address of
// a block acts as a network or broadcast address for anyone. Reserving one would cost 1/64 of
// every block and give capacity a second formula. (Should a node need an address of its own in
// a block, e.g. for a tunnel device, it allocates one under a handle of its own.)

// DefaultPools are the pools an empty cluster gets: 10.244.0.0/16 in /26 blocks (1024 blocks
// of 64), and with ipv6 also fd00:10:244::/56 in /122 blocks.
func DefaultPools(ipv6 bool) []Pool {
	pools := []Pool{{Name: "default-ipv4", CIDR: netip.MustParsePrefix("10.244.0.0/16"), BlockSize: DefaultBlockSizeIPv4}}
	if ipv6 {
		pools = append(pools, Pool{Name: "default-ipv6", CIDR: netip.MustParsePrefix("fd00:10:244::/56"), BlockSize: DefaultBlockSizeIPv6})
	}
	return pools
}

// WithDefaults returns the pool with its block size filled in when it was left 0.
func (p Pool) WithDefaults() Pool {
	if p.BlockSize == 0 && p.CIDR.IsValid() {
		p.BlockSize = DefaultBlockSizeIPv6
		if p.CIDR.Addr().Is4() {
			p.BlockSize = DefaultBlockSizeIPv4
		}
	}
	return p
}

// Validate says what is wrong with the pool (after WithDefaults), if anything.
func (p Pool) Validate() error {
	if p.Name == "" {
		return errors.New("pool has no name")
	}
	if !p.CIDR.IsValid() {
		return fmt.Errorf("pool %q: no valid CIDR", p.Name)
	}
	if p.CIDR.Addr().Is4In6() {
		return fmt.Errorf("pool %q: CIDR %s is an IPv4-mapped IPv6 range; write it as IPv4", p.Name, p.CIDR)
	}
	if p.CIDR != p.CIDR.Masked() {
		return fmt.Errorf("pool %q: CIDR %s has host bits set (did you mean %s?)", p.Name, p.CIDR, p.CIDR.Masked())
	}
	maxBits := p.CIDR.Addr().BitLen()
	if p.BlockSize < p.CIDR.Bits() || p.BlockSize > maxBits {
		return fmt.Errorf("pool %q: block size /%d must be between the pool's /%d and /%d", p.Name, p.BlockSize, p.CIDR.Bits(), maxBits)
	}
	if maxBits-p.BlockSize > maxBlockHostBits {
		return fmt.Errorf("pool %q: block size /%d is too big: at most %d addresses per block (/%d)", p.Name, p.BlockSize, 1<<maxBlockHostBits, maxBits-maxBlockHostBits)
	}
	return nil
}

// Family is 4 or 6.
func (p Pool) Family() int { return family(p.CIDR) }

// BlockAddresses is how many addresses one block of the pool has (all usable, see above).
func (p Pool) BlockAddresses() int { return 1 << (p.CIDR.Addr().BitLen() - p.BlockSize) }

// BlockCount is how many blocks the pool has. It is a big.Int because an IPv6 pool can hold
// more than 2^64 blocks (the default /56 in /122 blocks has 2^66).
func (p Pool) BlockCount() *big.Int { return pow2(p.BlockSize - p.CIDR.Bits()) }

// AddressCount is how many addresses the pool has.
func (p Pool) AddressCount() *big.Int { return pow2(p.CIDR.Addr().BitLen() - p.CIDR.Bits()) }

// Contains says whether the block lies inside the pool.
func (p Pool) Contains(block netip.Prefix) bool {
	return block.Bits() >= p.CIDR.Bits() && p.CIDR.Contains(block.Addr())
}

// Capacity is how many addresses the block has.
func (b Block) Capacity() int {
	// Clamped so that a malformed block read from the API cannot overflow the count.
	return 1 << min(b.CIDR.Addr().BitLen()-b.CIDR.Bits(), 62)
}

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 4
	}
	return 6
}

func familyName(f int) string {
	if f == 4 {
		return "IPv4"
	}
	return "IPv6"
}

func pow2(n int) *big.Int { return new(big.Int).Lsh(big.NewInt(1), uint(n)) }
