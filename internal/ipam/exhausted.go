package ipam

import (
	"fmt"
	"math/big"
	"strings"
)

// PoolUsage is how much of a pool is taken, cluster-wide.
type PoolUsage struct {
	Pool          Pool
	BlocksClaimed int
	// AddressesUsed counts this node's addresses as of now and other nodes' as last reported.
	AddressesUsed int
}

// PoolExhaustedError says that every enabled pool of an address family is full, with the
// numbers a person needs to decide what to do (add a pool, or free addresses). It matches
// ErrPoolExhausted under errors.Is.
type PoolExhaustedError struct {
	Pools []PoolUsage
}

func (e *PoolExhaustedError) Error() string {
	parts := make([]string, len(e.Pools))
	for i, u := range e.Pools {
		p := u.Pool
		parts[i] = fmt.Sprintf("pool %q (%s, /%d blocks) is full: %d of %s blocks claimed, %d of %s addresses in use by this and other nodes",
			p.Name, p.CIDR, p.BlockSize, u.BlocksClaimed, formatCount(p.BlockCount()), u.AddressesUsed, formatCount(p.AddressCount()))
	}
	return strings.Join(parts, "; ")
}

func (e *PoolExhaustedError) Unwrap() error { return ErrPoolExhausted }

// formatCount prints a count exactly while it is of a size people read (below 10^15), and in
// scientific notation beyond, where only IPv6 pool sizes go.
func formatCount(n *big.Int) string {
	if n.Cmp(big.NewInt(1e15)) < 0 {
		return n.String()
	}
	f, _ := new(big.Float).SetInt(n).Float64()
	return strings.Replace(fmt.Sprintf("~%.2g", f), "e+", "e", 1)
}
