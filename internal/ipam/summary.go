package ipam

import (
	"cmp"
	"fmt"
	"io"
	"math/big"
	"slices"
	"text/tabwriter"
)

// Summary is the cluster's IPAM at a glance, for `twill ipam status`.
type Summary struct {
	Pools    []PoolSummary   // by name
	Nodes    []NodeSummary   // by name
	Families []FamilySummary // IPv4, then IPv6; only families that have a pool
}

// PoolSummary is one pool's use.
type PoolSummary struct {
	Pool           Pool
	BlocksClaimed  int
	BlocksTotal    *big.Int
	AddressesUsed  int
	AddressesTotal *big.Int
}

// AddressesFree is how many of the pool's addresses no pod has.
func (p PoolSummary) AddressesFree() *big.Int {
	return new(big.Int).Sub(p.AddressesTotal, big.NewInt(int64(p.AddressesUsed)))
}

// NodeSummary is one node's blocks (by CIDR) and how much of them is used.
type NodeSummary struct {
	Node          string
	Blocks        []Block
	AddressesUsed int
	Capacity      int
}

// FamilySummary says how many more pods of one address family fit, counting what enabled pools
// can still give: free addresses in claimed blocks (each only on the node owning its block) and
// the addresses of unclaimed blocks.
type FamilySummary struct {
	Family              int // 4 or 6
	FreeInClaimedBlocks int
	UnclaimedBlocks     *big.Int
	Room                *big.Int
}

// Summarize computes the summary from the store's pools and blocks. Block usage is as each node
// last reported it.
func Summarize(pools []Pool, blocks []Block) Summary {
	var s Summary
	enabled := map[string]Pool{}
	families := map[int]*FamilySummary{}
	for _, p := range pools {
		p = p.WithDefaults()
		if p.Validate() != nil {
			continue
		}
		ps := PoolSummary{Pool: p, BlocksTotal: p.BlockCount(), AddressesTotal: p.AddressCount()}
		for _, b := range blocks {
			if b.Pool == p.Name && p.Contains(b.CIDR) {
				ps.BlocksClaimed++
				ps.AddressesUsed += b.Allocated
			}
		}
		s.Pools = append(s.Pools, ps)
		f := families[p.Family()]
		if f == nil {
			f = &FamilySummary{Family: p.Family(), UnclaimedBlocks: new(big.Int), Room: new(big.Int)}
			families[p.Family()] = f
		}
		if p.Disabled {
			continue
		}
		enabled[p.Name] = p
		unclaimed := new(big.Int).Sub(ps.BlocksTotal, big.NewInt(int64(ps.BlocksClaimed)))
		f.UnclaimedBlocks.Add(f.UnclaimedBlocks, unclaimed)
		f.Room.Add(f.Room, unclaimed.Mul(unclaimed, big.NewInt(int64(p.BlockAddresses()))))
	}
	slices.SortFunc(s.Pools, func(x, y PoolSummary) int { return cmp.Compare(x.Pool.Name, y.Pool.Name) })

	nodes := map[string]*NodeSummary{}
	for _, b := range blocks {
		n := nodes[b.Node]
		if n == nil {
			n = &NodeSummary{Node: b.Node}
			nodes[b.Node] = n
		}
		n.Blocks = append(n.Blocks, b)
		n.AddressesUsed += b.Allocated
		n.Capacity += b.Capacity()
		if p, ok := enabled[b.Pool]; ok && p.Contains(b.CIDR) {
			f := families[p.Family()]
			free := max(b.Capacity()-b.Allocated, 0)
			f.FreeInClaimedBlocks += free
			f.Room.Add(f.Room, big.NewInt(int64(free)))
		}
	}
	for _, n := range nodes {
		slices.SortFunc(n.Blocks, func(x, y Block) int { return comparePrefix(x.CIDR, y.CIDR) })
		s.Nodes = append(s.Nodes, *n)
	}
	slices.SortFunc(s.Nodes, func(x, y NodeSummary) int { return cmp.Compare(x.Node, y.Node) })
	for _, fam := range []int{4, 6} {
		if f := families[fam]; f != nil {
			s.Families = append(s.Families, *f)
		}
	}
	return s
}

// Write prints the summary as aligned tables: pools, then each node's blocks, then how many more
// pods fit per address family.
func (s Summary) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	if len(s.Pools) == 0 {
		fmt.Fprintln(tw, "No IP pools: pods get no addresses until an IPPool exists.")
	} else {
		fmt.Fprintln(tw, "POOL\tCIDR\tBLOCK SIZE\tBLOCKS CLAIMED/TOTAL\tADDRESSES USED/FREE")
		for _, p := range s.Pools {
			name := p.Pool.Name
			if p.Pool.Disabled {
				name += " (disabled)"
			}
			fmt.Fprintf(tw, "%s\t%s\t/%d\t%d/%s\t%d/%s\n", name, p.Pool.CIDR, p.Pool.BlockSize,
				p.BlocksClaimed, formatCount(p.BlocksTotal), p.AddressesUsed, formatCount(p.AddressesFree()))
		}
	}
	fmt.Fprintln(tw)
	if len(s.Nodes) == 0 {
		fmt.Fprintln(tw, "No blocks claimed yet: a node claims its first block when its first pod starts.")
	} else {
		fmt.Fprintln(tw, "NODE\tBLOCK\tPOOL\tADDRESSES USED/TOTAL")
		for _, n := range s.Nodes {
			name := n.Node
			for _, b := range n.Blocks {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\n", name, b.CIDR, b.Pool, b.Allocated, b.Capacity())
				name = ""
			}
		}
	}
	if len(s.Families) > 0 {
		fmt.Fprintln(tw)
	}
	for _, f := range s.Families {
		fmt.Fprintf(tw, "%s: room for %s more pods (%d free in claimed blocks, %s unclaimed blocks)\n",
			familyName(f.Family), formatCount(f.Room), f.FreeInClaimedBlocks, formatCount(f.UnclaimedBlocks))
	}
	return tw.Flush()
}
