package ipam

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Errors a BlockStore and the allocator return; check them with errors.Is.
var (
	// ErrBlockTaken: the block exists already (another node, or this one, claimed it).
	ErrBlockTaken = errors.New("block already claimed")
	// ErrBlockNotFound: the block does not exist (any more).
	ErrBlockNotFound = errors.New("block not found")
	// ErrPoolExhausted: every enabled pool of an address family has no free block left and the
	// node's own blocks are full.
	ErrPoolExhausted = errors.New("IP pool exhausted")
	// ErrNoPool: no enabled pool exists, so there is nothing to allocate from.
	ErrNoPool = errors.New("no enabled IP pool")
)

// BlockStore is where pools and block ownership live: the Kubernetes API in a cluster
// (kubestore), memory in tests (MemoryStore).
type BlockStore interface {
	ListPools(ctx context.Context) ([]Pool, error)
	ListBlocks(ctx context.Context) ([]Block, error)
	// ClaimBlock creates the block for block.Node, atomically; ErrBlockTaken when it exists.
	ClaimBlock(ctx context.Context, block Block) error
	// ReleaseBlock deletes the block, but only while it is still owned by block.Node; a block
	// that is gone or owned by another node is left alone without error.
	ReleaseBlock(ctx context.Context, block Block) error
	// SetBlockUsage records block.Allocated as the block's usage, but only while the block is
	// owned by block.Node: ErrBlockNotFound when it is gone or another node owns it now (it
	// takes the Block rather than a CIDR so that a node can never overwrite the usage of a
	// block that changed hands).
	SetBlockUsage(ctx context.Context, block Block) error
	// EnsurePool creates the pool unless a pool of that name exists (which is left as it is).
	EnsurePool(ctx context.Context, pool Pool) error
}

// MemoryStore is a BlockStore in memory, safe for concurrent use, for tests of anything that
// needs IPAM without an API server. It behaves like kubestore: a claim fails on any overlap.
type MemoryStore struct {
	mu     sync.Mutex
	pools  map[string]Pool
	blocks map[netip.Prefix]Block
}

// NewMemoryStore returns a store holding the given pools and no blocks.
func NewMemoryStore(pools ...Pool) *MemoryStore {
	s := &MemoryStore{pools: map[string]Pool{}, blocks: map[netip.Prefix]Block{}}
	for _, p := range pools {
		s.pools[p.Name] = p
	}
	return s
}

// ListPools implements BlockStore; pools come sorted by name.
func (s *MemoryStore) ListPools(context.Context) ([]Pool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Pool, 0, len(s.pools))
	for _, p := range s.pools {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Pool) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// ListBlocks implements BlockStore; blocks come sorted by CIDR.
func (s *MemoryStore) ListBlocks(context.Context) ([]Block, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Block, 0, len(s.blocks))
	for _, b := range s.blocks {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b Block) int { return comparePrefix(a.CIDR, b.CIDR) })
	return out, nil
}

// ClaimBlock implements BlockStore.
func (s *MemoryStore) ClaimBlock(_ context.Context, b Block) error {
	if !b.CIDR.IsValid() || b.CIDR != b.CIDR.Masked() || b.Node == "" {
		return fmt.Errorf("invalid block %+v", b)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for cidr, other := range s.blocks {
		if cidr.Overlaps(b.CIDR) {
			return fmt.Errorf("%s overlaps %s of node %q: %w", b.CIDR, cidr, other.Node, ErrBlockTaken)
		}
	}
	s.blocks[b.CIDR] = b
	return nil
}

// ReleaseBlock implements BlockStore.
func (s *MemoryStore) ReleaseBlock(_ context.Context, b Block) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.blocks[b.CIDR]; ok && cur.Node == b.Node {
		delete(s.blocks, b.CIDR)
	}
	return nil
}

// SetBlockUsage implements BlockStore.
func (s *MemoryStore) SetBlockUsage(_ context.Context, b Block) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.blocks[b.CIDR]
	if !ok || cur.Node != b.Node {
		return fmt.Errorf("block %s of node %q: %w", b.CIDR, b.Node, ErrBlockNotFound)
	}
	cur.Allocated = b.Allocated
	s.blocks[b.CIDR] = cur
	return nil
}

// EnsurePool implements BlockStore.
func (s *MemoryStore) EnsurePool(_ context.Context, p Pool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pools[p.Name]; !ok {
		s.pools[p.Name] = p
	}
	return nil
}

// PutPool creates or replaces a pool (to disable one in a test, say).
func (s *MemoryStore) PutPool(p Pool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pools[p.Name] = p
}

// DeletePool removes a pool; its blocks stay, as they would in the API.
func (s *MemoryStore) DeletePool(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pools, name)
}

// comparePrefix orders prefixes by address, then by length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
