package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// racingStore counts the claims that lost a race, and answers a list with the latency of an
// API server, so that nodes act on lists that are out of date by the time they claim.
type racingStore struct {
	*MemoryStore
	lost atomic.Int64
}

func (s *racingStore) ListBlocks(ctx context.Context) ([]Block, error) {
	blocks, err := s.MemoryStore.ListBlocks(ctx)
	time.Sleep(2 * time.Millisecond)
	return blocks, err
}

func (s *racingStore) ClaimBlock(ctx context.Context, b Block) error {
	err := s.MemoryStore.ClaimBlock(ctx, b)
	if errors.Is(err, ErrBlockTaken) {
		s.lost.Add(1)
	}
	return err
}

// Three nodes allocate 200 addresses at once from a pool of 16 blocks of 16: blocks run short,
// claims race, and still no address is given twice and each lies in a block its node owns.
func TestConcurrentAllocationAcrossNodes(t *testing.T) {
	store := &racingStore{MemoryStore: NewMemoryStore(Pool{Name: "small", CIDR: netip.MustParsePrefix("10.7.0.0/24"), BlockSize: 28})}
	nodes := sameOffsetNodes(store.MemoryStore, 3) // all three start their search at one block
	allocators := make([]*NodeAllocator, len(nodes))
	for i, n := range nodes {
		allocators[i] = newAllocator(t, store, n, t.TempDir())
		runAllocator(t, allocators[i]) // usage writes and block returns race with the allocations
	}

	const total = 200
	results := make([][]Allocation, total)
	errs := make([]error, total)
	var wg sync.WaitGroup
	for i := range total {
		wg.Go(func() {
			results[i], errs[i] = allocators[i%len(nodes)].Allocate(context.Background(), owner(fmt.Sprint("c", i)))
		})
	}
	wg.Wait()

	owners := map[netip.Prefix]string{}
	for _, b := range storeBlocks(t, store) {
		owners[b.CIDR] = b.Node
	}
	seen := map[netip.Addr]string{}
	for i := range total {
		if errs[i] != nil {
			t.Fatalf("allocation %d: %v", i, errs[i])
		}
		if len(results[i]) != 1 {
			t.Fatalf("allocation %d: %+v", i, results[i])
		}
		al, node := results[i][0], nodes[i%len(nodes)]
		if prev, dup := seen[al.IP]; dup {
			t.Fatalf("%s given to both %s and c%d", al.IP, prev, i)
		}
		seen[al.IP] = fmt.Sprint("c", i)
		if !al.Block.Contains(al.IP) || owners[al.Block] != node {
			t.Fatalf("c%d on %s got %s in block %s, owned by %q", i, node, al.IP, al.Block, owners[al.Block])
		}
	}
	for i, a := range allocators {
		if n := len(a.Allocations()); n != total/len(nodes)+boolInt(i < total%len(nodes)) {
			t.Errorf("%s holds %d allocations", nodes[i], n)
		}
	}
	t.Logf("%d blocks claimed, %d claims lost a race", len(owners), store.lost.Load())
	if store.lost.Load() == 0 {
		t.Error("no claim lost a race: the test did not exercise conflicts")
	}
}

// sameOffsetNodes returns node names whose block search starts at the same block of the store's
// only pool.
func sameOffsetNodes(s *MemoryStore, n int) []string {
	pools, _ := s.ListPools(context.Background())
	byStart := map[netip.Prefix][]string{}
	for i := 0; ; i++ {
		name := fmt.Sprint("node-", i)
		start, _ := NextFreeBlock(pools[0].WithDefaults(), nil, name)
		byStart[start] = append(byStart[start], name)
		if len(byStart[start]) == n {
			return byStart[start]
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
