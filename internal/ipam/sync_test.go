package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunReportsUsageAndReturnsEmptyBlocks(t *testing.T) {
	store := NewMemoryStore(Pool{Name: "p", CIDR: netip.MustParsePrefix("10.1.0.0/24"), BlockSize: 28}) // 16 per block
	a := newAllocator(t, store, "node-a", t.TempDir())
	runAllocator(t, a)
	for i := range 40 {
		allocate(t, a, fmt.Sprint("c", i))
	}
	usage := func() (blocks, used int) {
		for _, b := range storeBlocks(t, store) {
			blocks++
			used += b.Allocated
		}
		return
	}
	eventually(t, "store shows 3 blocks with 40 addresses", func() bool { b, u := usage(); return b == 3 && u == 40 })

	// Release everything but c0: two blocks empty and go back; the one holding c0 stays.
	for i := 1; i < 40; i++ {
		if err := a.Release(context.Background(), owner(fmt.Sprint("c", i)).Handle); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "store shows 1 block with 1 address", func() bool { b, u := usage(); return b == 1 && u == 1 })
	if own := a.Blocks(); len(own) != 1 || !own[0].CIDR.Contains(a.Allocations()[0].IP) {
		t.Fatalf("own blocks %+v", own)
	}
	// The last block stays even when empty: the next pod needs no claim.
	if err := a.Release(context.Background(), owner("c0").Handle); err != nil {
		t.Fatal(err)
	}
	eventually(t, "store shows 1 block with 0 addresses", func() bool { b, u := usage(); return b == 1 && u == 0 })
	time.Sleep(50 * time.Millisecond)
	if b, _ := usage(); b != 1 {
		t.Fatalf("the node's only block was returned")
	}
}

// countingStore counts usage writes and can make the next claim fail after it succeeded.
type countingStore struct {
	*MemoryStore
	usageWrites   atomic.Int64
	loseNextClaim atomic.Bool
}

func (s *countingStore) SetBlockUsage(ctx context.Context, b Block) error {
	s.usageWrites.Add(1)
	return s.MemoryStore.SetBlockUsage(ctx, b)
}

func (s *countingStore) ClaimBlock(ctx context.Context, b Block) error {
	err := s.MemoryStore.ClaimBlock(ctx, b)
	if err == nil && s.loseNextClaim.CompareAndSwap(true, false) {
		return errors.New("timeout awaiting response (the claim went through)")
	}
	return err
}

func TestUsageWritesAreCoalesced(t *testing.T) {
	store := &countingStore{MemoryStore: NewMemoryStore(DefaultPools(false)...)}
	const interval = 200 * time.Millisecond
	a, err := NewNodeAllocator(NodeAllocatorConfig{Node: "node-a", StateDir: t.TempDir(), Store: store, UsageInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	runAllocator(t, a)
	start := time.Now()
	for i := range 50 {
		allocate(t, a, fmt.Sprint("c", i))
	}
	took := time.Since(start)
	eventually(t, "usage 50 in the store", func() bool { b := storeBlocks(t, store); return len(b) == 1 && b[0].Allocated == 50 })
	// One write at the first change, then at most one per interval while the burst lasts, and
	// one after it.
	if n, limit := store.usageWrites.Load(), int64(2+took/interval); n > limit {
		t.Fatalf("%d usage writes for a burst of 50 allocations in %v; want at most %d", n, took, limit)
	}
}

func TestLostClaimAnswerIsAdopted(t *testing.T) {
	store := &countingStore{MemoryStore: NewMemoryStore(DefaultPools(false)...)}
	a := newAllocator(t, store, "node-a", t.TempDir())
	store.loseNextClaim.Store(true)
	if _, err := a.Allocate(context.Background(), owner("c1")); err == nil {
		t.Fatal("allocation should fail when the claim's answer is lost")
	}
	al := allocate(t, a, "c1")[0]
	blocks := storeBlocks(t, store)
	if len(blocks) != 1 || blocks[0].CIDR != al.Block || blocks[0].Node != "node-a" {
		t.Fatalf("store blocks %+v; want the one block claimed before, now in use (%v)", blocks, al)
	}
}

func TestVanishedBlockIsClaimedAgain(t *testing.T) {
	store := NewMemoryStore(DefaultPools(false)...)
	dir := t.TempDir()
	a := newAllocator(t, store, "node-a", dir)
	ctx := context.Background()
	al := allocate(t, a, "c1")[0]
	a.syncOnce(ctx)
	// Another agent took node-a for deleted and returned its block.
	if _, err := ReleaseOrphanBlocks(ctx, store, map[string]bool{"node-b": true}); err != nil {
		t.Fatal(err)
	}
	allocate(t, a, "c2")
	a.syncOnce(ctx)
	blocks := storeBlocks(t, store)
	if len(blocks) != 1 || blocks[0].CIDR != al.Block || blocks[0].Node != "node-a" || blocks[0].Allocated != 2 {
		t.Fatalf("store blocks %+v; want %s of node-a with 2 in use", blocks, al.Block)
	}

	// While the agent is down its block is deleted again: the restarted agent claims it back.
	store.ReleaseBlock(ctx, blocks[0])
	b := newAllocator(t, store, "node-a", dir)
	if own := b.Blocks(); len(own) != 1 || own[0].CIDR != al.Block || own[0].Allocated != 2 {
		t.Fatalf("blocks after restart %+v", own)
	}
	if blocks := storeBlocks(t, store); len(blocks) != 1 || blocks[0].Node != "node-a" {
		t.Fatalf("store blocks after restart %+v", blocks)
	}
}

func TestBlockTakenByAnotherNodeGivesNoMoreAddresses(t *testing.T) {
	store := NewMemoryStore(Pool{Name: "p", CIDR: netip.MustParsePrefix("10.1.0.0/24"), BlockSize: 28})
	a := newAllocator(t, store, "node-a", t.TempDir())
	ctx := context.Background()
	first := allocate(t, a, "c1")[0]
	store.ReleaseBlock(ctx, Block{CIDR: first.Block, Node: "node-a"})
	if err := store.ClaimBlock(ctx, Block{CIDR: first.Block, Pool: "p", Node: "node-b"}); err != nil {
		t.Fatal(err)
	}
	a.syncOnce(ctx)
	if got := allocate(t, a, "c2")[0]; got.Block == first.Block {
		t.Fatalf("allocated %s from a block node-b owns", got.IP)
	}
	if own := a.Blocks(); len(own) != 1 || own[0].CIDR == first.Block {
		t.Fatalf("own blocks %+v", own)
	}
	if !slices.ContainsFunc(a.Allocations(), func(x Allocation) bool { return x.IP == first.IP }) {
		t.Fatal("the address already given must stay recorded until released")
	}
}

func TestReleaseOrphanBlocks(t *testing.T) {
	store := NewMemoryStore(DefaultPools(false)...)
	ctx := context.Background()
	for i, node := range []string{"node-a", "node-b", "gone", "gone"} {
		b := Block{CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 26), Pool: "default-ipv4", Node: node}
		if err := store.ClaimBlock(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ReleaseOrphanBlocks(ctx, store, nil); err == nil {
		t.Fatal("an empty node set must be refused")
	}
	if n := len(storeBlocks(t, store)); n != 4 {
		t.Fatalf("refused call released blocks: %d left", n)
	}
	live := map[string]bool{"node-a": true, "node-b": true}
	released, err := ReleaseOrphanBlocks(ctx, store, live)
	if err != nil || len(released) != 2 || released[0].Node != "gone" || released[1].Node != "gone" {
		t.Fatalf("released %+v, %v", released, err)
	}
	if released, err := ReleaseOrphanBlocks(ctx, store, live); err != nil || len(released) != 0 {
		t.Fatalf("second call released %+v, %v", released, err)
	}
	left := storeBlocks(t, store)
	if len(left) != 2 || left[0].Node != "node-a" || left[1].Node != "node-b" {
		t.Fatalf("left %+v", left)
	}
	// A release racing with a re-claim by another node loses nothing: the block is only
	// deleted while its owner is still the one listed.
	stale := released0(t, left, "node-a")
	store.ReleaseBlock(ctx, stale)
	store.ClaimBlock(ctx, Block{CIDR: stale.CIDR, Pool: stale.Pool, Node: "node-c"})
	if err := store.ReleaseBlock(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(storeBlocks(t, store), func(b Block) bool { return b.CIDR == stale.CIDR && b.Node == "node-c" }) {
		t.Fatal("a stale release deleted another node's block")
	}
}

func released0(t *testing.T, blocks []Block, node string) Block {
	t.Helper()
	i := slices.IndexFunc(blocks, func(b Block) bool { return b.Node == node })
	if i < 0 {
		t.Fatalf("no block of %s", node)
	}
	return blocks[i]
}
