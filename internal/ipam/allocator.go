package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// NodeAllocatorConfig is what a NodeAllocator needs.
type NodeAllocatorConfig struct {
	// Node is this node's name: the owner written into the blocks it claims.
	Node string
	// StateDir holds one record file per allocated address (created if missing).
	StateDir string
	Store    BlockStore
	Log      *slog.Logger
	// UsageInterval is the least time between two writes of a block's usage to the store
	// (default 1s), so a burst of pods costs one write per block.
	UsageInterval time.Duration
	// PoolRefresh is how long a listed set of pools is reused before Allocate lists them again
	// (0: on every allocation). The agent sets seconds, so that a pod ADD does not wait for an
	// API round trip; a pool created or disabled takes effect within that time.
	PoolRefresh time.Duration
}

// startupTimeout bounds the store calls NewNodeAllocator makes.
const startupTimeout = time.Minute

// maxClaimAttempts bounds how often one allocation retries a block claim that lost a race.
// Every lost race means another node got a block, so the pool runs out long before this.
const maxClaimAttempts = 64

// NodeAllocator hands out this node's pod addresses from blocks it owns, claiming blocks from
// the pools as needed (Cilium-like node-local allocation over Calico-like blocks). Addresses
// are recorded on local disk, so allocation never waits for the API once the node has a block
// with room, and allocations survive agent restarts.
type NodeAllocator struct {
	node          string
	dir           stateDir
	store         BlockStore
	log           *slog.Logger
	usageInterval time.Duration

	// opMu serialises every change (allocation, release, block claim and return). It is held
	// across store calls, so that a block being returned cannot be allocated from meanwhile.
	opMu  sync.Mutex
	pools []Pool // last good list from the store (valid pools, defaults applied); under opMu
	// poolsListed is when pools was last listed; under opMu.
	poolsListed time.Time
	poolRefresh time.Duration

	// mu guards the maps for readers; writers hold opMu too, so holders of opMu may read
	// without it. It is never held across a store call.
	mu       sync.RWMutex
	blocks   map[netip.Prefix]*ownBlock
	byHandle map[Handle][]Allocation
	byIP     map[netip.Addr]Allocation

	changed  chan struct{}        // kicks Run after a change
	reported map[netip.Prefix]int // usage last written to the store; Run's own
}

type ownBlock struct {
	Block // Allocated is kept current
	// next is where the search for a free address starts: after the last address given, so a
	// just-released address is not handed to the next pod while stale routes or conntrack
	// entries may still name it.
	next netip.Addr
}

var _ Allocator = (*NodeAllocator)(nil)

// NewNodeAllocator loads the node's allocations from cfg.StateDir (removing broken records) and
// its blocks from the store.
func NewNodeAllocator(cfg NodeAllocatorConfig) (*NodeAllocator, error) {
	if cfg.Node == "" || cfg.StateDir == "" || cfg.Store == nil {
		return nil, errors.New("ipam: NodeAllocatorConfig needs Node, StateDir and Store")
	}
	a := &NodeAllocator{
		node:          cfg.Node,
		dir:           stateDir(cfg.StateDir),
		store:         cfg.Store,
		log:           cfg.Log,
		usageInterval: cfg.UsageInterval,
		poolRefresh:   cfg.PoolRefresh,
		blocks:        map[netip.Prefix]*ownBlock{},
		byHandle:      map[Handle][]Allocation{},
		byIP:          map[netip.Addr]Allocation{},
		changed:       make(chan struct{}, 1),
		reported:      map[netip.Prefix]int{},
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.usageInterval <= 0 {
		a.usageInterval = time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), startupTimeout)
	defer cancel()
	if err := a.load(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *NodeAllocator) load(ctx context.Context) error {
	records, broken, err := a.dir.load()
	if err != nil {
		return err
	}
	for _, name := range broken {
		a.log.Warn("removing broken IPAM record (left by a crash during allocation); its address is free again", "file", name)
		if err := a.dir.discard(name); err != nil {
			return fmt.Errorf("removing broken IPAM record: %w", err)
		}
	}
	all, err := a.store.ListBlocks(ctx)
	if err != nil {
		return fmt.Errorf("listing IPAM blocks: %w", err)
	}
	for _, b := range all {
		if b.Node == a.node {
			a.reported[b.CIDR] = b.Allocated
			b.Allocated = 0
			a.blocks[b.CIDR] = &ownBlock{Block: b}
		}
	}
	stray := map[netip.Prefix]string{} // block -> pool, for records outside our blocks
	for _, r := range records {
		a.byIP[r.IP] = r
		a.byHandle[r.Owner.Handle] = append(a.byHandle[r.Owner.Handle], r)
		if ob := a.blocks[r.Block]; ob != nil {
			ob.Allocated++
		} else {
			stray[r.Block] = r.Pool
		}
	}
	for cidr, pool := range stray {
		a.reclaimLostBlock(ctx, Block{CIDR: cidr, Pool: pool, Node: a.node}, all)
	}
	if _, err := a.listPools(ctx); err != nil {
		a.log.Warn("listing IP pools", "err", err)
	}
	a.log.Info("IPAM state loaded", "node", a.node, "blocks", len(a.blocks), "allocations", len(a.byIP))
	return nil
}

// reclaimLostBlock claims again a block that addresses recorded here lie in but that the store
// does not show as ours: its IPAMBlock was deleted while this agent was away (for example as an
// orphan while the Node object was being re-created).
func (a *NodeAllocator) reclaimLostBlock(ctx context.Context, b Block, all []Block) {
	for _, other := range all {
		if other.CIDR.Overlaps(b.CIDR) {
			a.log.Error("addresses recorded here lie in a block another node owns; no new addresses will come from it",
				"block", b.CIDR, "owner", other.Node)
			return
		}
	}
	if err := a.store.ClaimBlock(ctx, b); err != nil {
		a.log.Error("re-claiming a block that holds addresses recorded here", "block", b.CIDR, "err", err)
		return
	}
	a.log.Warn("re-claimed a block that had been deleted while addresses in it were in use", "block", b.CIDR)
	ob := &ownBlock{Block: b}
	for ip := range a.byIP {
		if b.CIDR.Contains(ip) {
			ob.Allocated++
		}
	}
	a.mu.Lock()
	a.blocks[b.CIDR] = ob
	a.mu.Unlock()
}

// listPools refreshes the pool list (valid pools, defaults applied). When the store cannot be
// reached it returns the last good list, so a node with room in its blocks keeps giving
// addresses while the API is away. Holds opMu or runs before the allocator is shared.
func (a *NodeAllocator) listPools(ctx context.Context) ([]Pool, error) {
	if a.pools != nil && a.poolRefresh > 0 && time.Since(a.poolsListed) < a.poolRefresh {
		return a.pools, nil
	}
	listed, err := a.store.ListPools(ctx)
	if err != nil {
		if a.pools != nil {
			a.log.Warn("listing IP pools failed; using the last list", "err", err)
			return a.pools, nil
		}
		return nil, fmt.Errorf("listing IP pools: %w", err)
	}
	pools := make([]Pool, 0, len(listed))
	for _, p := range listed {
		p = p.WithDefaults()
		if err := p.Validate(); err != nil {
			a.log.Warn("ignoring invalid IP pool", "err", err)
			continue
		}
		pools = append(pools, p)
	}
	a.pools, a.poolsListed = pools, time.Now()
	return pools, nil
}

// Allocate implements Allocator.
func (a *NodeAllocator) Allocate(ctx context.Context, owner Owner) ([]Allocation, error) {
	if owner.ContainerID == "" {
		return nil, errors.New("ipam: allocate: empty container ID")
	}
	a.opMu.Lock()
	defer a.opMu.Unlock()
	if have := a.byHandle[owner.Handle]; len(have) > 0 {
		return slices.Clone(have), nil
	}
	pools, err := a.listPools(ctx)
	if err != nil {
		return nil, err
	}
	var got []Allocation
	for _, fam := range []int{4, 6} {
		enabled := slices.DeleteFunc(slices.Clone(pools), func(p Pool) bool { return p.Disabled || p.Family() != fam })
		if len(enabled) == 0 {
			continue
		}
		al, err := a.allocateFamily(ctx, owner, enabled)
		if err != nil {
			for _, g := range got {
				if rerr := a.dir.remove(g.IP); rerr != nil {
					a.log.Warn("undoing a partial allocation", "err", rerr)
				}
			}
			return nil, err
		}
		got = append(got, al)
	}
	if len(got) == 0 {
		return nil, fmt.Errorf("%w: create an IPPool (or enable one)", ErrNoPool)
	}
	a.mu.Lock()
	for _, al := range got {
		a.byIP[al.IP] = al
		a.blocks[al.Block].Allocated++
	}
	a.byHandle[owner.Handle] = got
	a.mu.Unlock()
	a.kick()
	a.log.Debug("allocated", "container", owner.ContainerID, "ifname", owner.IfName, "ips", ips(got))
	return slices.Clone(got), nil
}

// allocateFamily gives one address from the pools (all of one family, enabled): from the fullest
// own block with room, else from a newly claimed block of the first pool that has one free.
func (a *NodeAllocator) allocateFamily(ctx context.Context, owner Owner, pools []Pool) (Allocation, error) {
	var candidates []*ownBlock
	for _, ob := range a.blocks {
		if ob.Allocated < ob.Capacity() && slices.ContainsFunc(pools, func(p Pool) bool { return p.Name == ob.Pool && p.Contains(ob.CIDR) }) {
			candidates = append(candidates, ob)
		}
	}
	// Fullest first: packing pods into few blocks lets the others empty and go back to the pool.
	slices.SortFunc(candidates, func(x, y *ownBlock) int {
		if x.Allocated != y.Allocated {
			return y.Allocated - x.Allocated
		}
		return comparePrefix(x.CIDR, y.CIDR)
	})
	for _, ob := range candidates {
		if al, ok, err := a.takeAddress(ob, owner); err != nil || ok {
			return al, err
		}
	}
	var full []PoolUsage
	for _, p := range pools {
		ob, usage, err := a.claimBlock(ctx, p)
		if err != nil {
			return Allocation{}, err
		}
		if ob == nil {
			full = append(full, usage)
			continue
		}
		if al, ok, err := a.takeAddress(ob, owner); err != nil || ok {
			return al, err
		}
	}
	return Allocation{}, &PoolExhaustedError{Pools: full}
}

// takeAddress records the next free address of the block for the owner; false when the block
// has none.
func (a *NodeAllocator) takeAddress(ob *ownBlock, owner Owner) (Allocation, bool, error) {
	if ob.Allocated >= ob.Capacity() {
		return Allocation{}, false, nil
	}
	ip := ob.next
	if !ob.CIDR.Contains(ip) {
		ip = ob.CIDR.Addr()
	}
	for range ob.Capacity() {
		if _, used := a.byIP[ip]; !used {
			al := Allocation{Owner: owner, IP: ip, Block: ob.CIDR, Pool: ob.Pool}
			err := a.dir.write(al)
			if err == nil {
				ob.next = ip.Next()
				return al, true, nil
			}
			if !errors.Is(err, errRecorded) {
				return Allocation{}, false, err
			}
			// Recorded by someone else sharing the directory: not ours to give, skip it.
			a.log.Warn("address has a record this allocator did not write; skipping it", "ip", ip)
		}
		ip = ip.Next()
		if !ob.CIDR.Contains(ip) {
			ip = ob.CIDR.Addr()
		}
	}
	return Allocation{}, false, nil
}

// claimBlock claims a free block of the pool for this node. It returns a nil block and the
// pool's usage when the pool has no free block.
func (a *NodeAllocator) claimBlock(ctx context.Context, pool Pool) (*ownBlock, PoolUsage, error) {
	for range maxClaimAttempts {
		all, err := a.store.ListBlocks(ctx)
		if err != nil {
			return nil, PoolUsage{}, fmt.Errorf("listing IPAM blocks: %w", err)
		}
		// A block the store says is ours but we do not know: a claim whose answer was lost.
		for _, b := range all {
			if b.Node == a.node && b.Pool == pool.Name && pool.Contains(b.CIDR) && a.blocks[b.CIDR] == nil {
				a.log.Info("adopting a block the store shows as this node's", "block", b.CIDR, "pool", pool.Name)
				return a.addBlock(b), PoolUsage{}, nil
			}
		}
		cidr, ok := NextFreeBlock(pool, all, a.node)
		if !ok {
			return nil, a.poolUsage(pool, all), nil
		}
		b := Block{CIDR: cidr, Pool: pool.Name, Node: a.node}
		err = a.store.ClaimBlock(ctx, b)
		if errors.Is(err, ErrBlockTaken) {
			a.log.Debug("lost a race for a block; trying the next", "block", cidr)
			continue
		}
		if err != nil {
			return nil, PoolUsage{}, fmt.Errorf("claiming block %s of pool %q: %w", cidr, pool.Name, err)
		}
		a.log.Info("claimed block", "block", cidr, "pool", pool.Name)
		return a.addBlock(b), PoolUsage{}, nil
	}
	return nil, PoolUsage{}, fmt.Errorf("claiming a block of pool %q: lost %d races in a row", pool.Name, maxClaimAttempts)
}

func (a *NodeAllocator) addBlock(b Block) *ownBlock {
	ob := &ownBlock{Block: b}
	ob.Allocated = 0
	for ip := range a.byIP {
		if b.CIDR.Contains(ip) {
			ob.Allocated++
		}
	}
	a.mu.Lock()
	a.blocks[b.CIDR] = ob
	a.mu.Unlock()
	return ob
}

// poolUsage counts the pool's claimed blocks and used addresses: this node's from memory, other
// nodes' from their last report.
func (a *NodeAllocator) poolUsage(pool Pool, all []Block) PoolUsage {
	u := PoolUsage{Pool: pool}
	for _, b := range all {
		if !pool.Contains(b.CIDR) {
			continue
		}
		u.BlocksClaimed++
		if ob := a.blocks[b.CIDR]; ob != nil && b.Node == a.node {
			u.AddressesUsed += ob.Allocated
		} else {
			u.AddressesUsed += b.Allocated
		}
	}
	return u
}

// Release implements Allocator.
func (a *NodeAllocator) Release(_ context.Context, h Handle) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	for _, al := range slices.Clone(a.byHandle[h]) {
		if err := a.releaseOne(al); err != nil {
			return err
		}
	}
	return nil
}

// ReleaseWhere releases every allocation the predicate picks (the periodic reconcile uses it
// against the API's pods) and returns them.
func (a *NodeAllocator) ReleaseWhere(_ context.Context, pick func(Allocation) bool) ([]Allocation, error) {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	var released []Allocation
	var errs []error
	for _, al := range a.sortedAllocations() {
		if !pick(al) {
			continue
		}
		if err := a.releaseOne(al); err != nil {
			errs = append(errs, err)
			continue
		}
		released = append(released, al)
	}
	return released, errors.Join(errs...)
}

// ReleaseExcept releases every allocation whose handle is not among the valid ones (CNI GC).
func (a *NodeAllocator) ReleaseExcept(ctx context.Context, valid []Handle) ([]Allocation, error) {
	keep := make(map[Handle]bool, len(valid))
	for _, h := range valid {
		keep[h] = true
	}
	return a.ReleaseWhere(ctx, func(al Allocation) bool { return !keep[al.Owner.Handle] })
}

// releaseOne forgets one allocation, record first: if the record cannot be removed the address
// stays allocated rather than risk being given twice after a restart. Holds opMu.
func (a *NodeAllocator) releaseOne(al Allocation) error {
	if err := a.dir.remove(al.IP); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.byIP, al.IP)
	rest := slices.DeleteFunc(a.byHandle[al.Owner.Handle], func(x Allocation) bool { return x.IP == al.IP })
	if len(rest) == 0 {
		delete(a.byHandle, al.Owner.Handle)
	} else {
		a.byHandle[al.Owner.Handle] = rest
	}
	if ob := a.blocks[al.Block]; ob != nil {
		ob.Allocated--
	}
	a.mu.Unlock()
	a.kick()
	a.log.Debug("released", "ip", al.IP, "container", al.Owner.ContainerID)
	return nil
}

// Allocations implements Allocator; sorted by address.
func (a *NodeAllocator) Allocations() []Allocation {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.sortedAllocations()
}

func (a *NodeAllocator) sortedAllocations() []Allocation {
	out := make([]Allocation, 0, len(a.byIP))
	for _, al := range a.byIP {
		out = append(out, al)
	}
	slices.SortFunc(out, func(x, y Allocation) int { return x.IP.Compare(y.IP) })
	return out
}

// Blocks returns this node's blocks with their current use, sorted by CIDR.
func (a *NodeAllocator) Blocks() []Block {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]Block, 0, len(a.blocks))
	for _, ob := range a.blocks {
		out = append(out, ob.Block)
	}
	slices.SortFunc(out, func(x, y Block) int { return comparePrefix(x.CIDR, y.CIDR) })
	return out
}

func (a *NodeAllocator) kick() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func ips(als []Allocation) []netip.Addr {
	out := make([]netip.Addr, len(als))
	for i, al := range als {
		out[i] = al.IP
	}
	return out
}
