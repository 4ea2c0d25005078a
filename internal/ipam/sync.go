package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// How often Run looks again without being told of a change (a write lost to an API outage gets
// retried sooner, after retryInterval).
const (
	resyncInterval = time.Minute
	retryInterval  = 5 * time.Second
)

// Run keeps the store in step with this node's use of its blocks until ctx ends: each block's
// status.allocated follows the allocations, at most one write per block per UsageInterval however
// many pods come and go, and blocks that emptied go back to their pool (see returnEmptyBlocks).
// It returns nil when ctx ends.
func (a *NodeAllocator) Run(ctx context.Context) error {
	resync := time.NewTicker(resyncInterval)
	defer resync.Stop()
	for {
		failed := a.syncOnce(ctx)
		last := time.Now()
		var retry <-chan time.Time
		if failed {
			retry = time.After(retryInterval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.changed:
		case <-resync.C:
		case <-retry:
		}
		// Coalesce: changes arriving within the interval are written together.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(last.Add(a.usageInterval))):
		}
	}
}

// syncOnce returns blocks that emptied and writes usage that changed; true when something
// failed and should be retried.
func (a *NodeAllocator) syncOnce(ctx context.Context) (failed bool) {
	failed = a.returnEmptyBlocks(ctx)
	own := a.Blocks()
	for _, b := range own {
		if n, ok := a.reported[b.CIDR]; ok && n == b.Allocated {
			continue
		}
		err := a.store.SetBlockUsage(ctx, b)
		switch {
		case err == nil:
			a.reported[b.CIDR] = b.Allocated
		case errors.Is(err, ErrBlockNotFound):
			if !a.blockVanished(ctx, b.CIDR) {
				failed = true
			}
		case ctx.Err() != nil:
			return false
		default:
			a.log.Warn("writing block usage", "block", b.CIDR, "err", err)
			failed = true
		}
	}
	for cidr := range a.reported {
		if !slices.ContainsFunc(own, func(b Block) bool { return b.CIDR == cidr }) {
			delete(a.reported, cidr)
		}
	}
	return failed
}

// returnEmptyBlocks gives empty blocks back to their pools, so that capacity follows the pods:
// of an enabled pool the node keeps one block (the first non-empty one, else the lowest), of a
// disabled or deleted pool none. True when a release failed.
func (a *NodeAllocator) returnEmptyBlocks(ctx context.Context) (failed bool) {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	enabled := map[string]bool{}
	for _, p := range a.pools {
		enabled[p.Name] = !p.Disabled
	}
	byPool := map[string][]*ownBlock{}
	for _, ob := range a.blocks {
		byPool[ob.Pool] = append(byPool[ob.Pool], ob)
	}
	for pool, blocks := range byPool {
		slices.SortFunc(blocks, func(x, y *ownBlock) int { return comparePrefix(x.CIDR, y.CIDR) })
		// Until the pools were listed once, every pool counts as enabled: better keep a block
		// too many than give back the one the next pod needs.
		kept := !(a.pools == nil || enabled[pool]) || slices.ContainsFunc(blocks, func(ob *ownBlock) bool { return ob.Allocated > 0 })
		for _, ob := range blocks {
			if ob.Allocated > 0 {
				continue
			}
			if !kept {
				kept = true
				continue
			}
			a.mu.Lock()
			delete(a.blocks, ob.CIDR)
			a.mu.Unlock()
			if err := a.store.ReleaseBlock(ctx, ob.Block); err != nil {
				a.log.Warn("returning an empty block", "block", ob.CIDR, "err", err)
				a.mu.Lock()
				a.blocks[ob.CIDR] = ob
				a.mu.Unlock()
				failed = true
				continue
			}
			a.log.Info("returned an empty block to its pool", "block", ob.CIDR, "pool", ob.Pool)
		}
	}
	return failed
}

// blockVanished handles one of our blocks that the store no longer has as ours (an
// administrator, or another agent that took this node for deleted, removed it, and maybe
// another node claimed it since). An empty block is simply
// forgotten; one holding addresses is claimed again, and if another node got it first, no
// new address comes from it (the addresses given stay recorded until released). True when
// handled.
func (a *NodeAllocator) blockVanished(ctx context.Context, cidr netip.Prefix) bool {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	ob := a.blocks[cidr]
	if ob == nil {
		return true
	}
	forget := func() {
		a.mu.Lock()
		delete(a.blocks, cidr)
		a.mu.Unlock()
	}
	if ob.Allocated == 0 {
		a.log.Info("an empty block of this node was deleted from the store; forgetting it", "block", cidr)
		forget()
		return true
	}
	err := a.store.ClaimBlock(ctx, Block{CIDR: cidr, Pool: ob.Pool, Node: a.node})
	switch {
	case err == nil:
		a.log.Warn("re-claimed a block that was deleted while addresses in it were in use", "block", cidr, "allocated", ob.Allocated)
		b := ob.Block
		if err := a.store.SetBlockUsage(ctx, b); err != nil {
			delete(a.reported, cidr)
			return false
		}
		a.reported[cidr] = b.Allocated
		return true
	case errors.Is(err, ErrBlockTaken):
		a.log.Error("a block holding addresses of this node's pods now belongs to another node; no new addresses will come from it",
			"block", cidr, "allocated", ob.Allocated, "err", err)
		forget()
		return true
	default:
		a.log.Warn("re-claiming a deleted block", "block", cidr, "err", err)
		return false
	}
}

// ReleaseOrphanBlocks gives back to their pools the blocks of nodes that no longer exist. Any
// agent may call it at any time: a block is only deleted while still owned by the node it was
// listed with, so agents racing here, or a node that just claimed the block again, lose
// nothing; and a live node whose block was deleted under it claims it again (blockVanished).
// An empty liveNodes is refused: it almost always means the node list is not synced yet.
func ReleaseOrphanBlocks(ctx context.Context, store BlockStore, liveNodes map[string]bool) ([]Block, error) {
	if len(liveNodes) == 0 {
		return nil, errors.New("ipam: not releasing orphan blocks: the set of live nodes is empty (node list not synced?)")
	}
	blocks, err := store.ListBlocks(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing IPAM blocks: %w", err)
	}
	var released []Block
	var errs []error
	for _, b := range blocks {
		if liveNodes[b.Node] {
			continue
		}
		if err := store.ReleaseBlock(ctx, b); err != nil {
			errs = append(errs, fmt.Errorf("releasing block %s of deleted node %q: %w", b.CIDR, b.Node, err))
			continue
		}
		released = append(released, b)
	}
	return released, errors.Join(errs...)
}
