package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func newAllocator(t *testing.T, store BlockStore, node, dir string) *NodeAllocator {
	t.Helper()
	a, err := NewNodeAllocator(NodeAllocatorConfig{Node: node, StateDir: dir, Store: store, UsageInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func owner(id string) Owner {
	return Owner{Handle: Handle{ContainerID: id, IfName: "eth0"}, PodNamespace: "default", PodName: "pod-" + id}
}

func allocate(t *testing.T, a *NodeAllocator, id string) []Allocation {
	t.Helper()
	got, err := a.Allocate(context.Background(), owner(id))
	if err != nil {
		t.Fatalf("allocate %s: %v", id, err)
	}
	return got
}

func storeBlocks(t *testing.T, s BlockStore) []Block {
	t.Helper()
	b, err := s.ListBlocks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func recordFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func runAllocator(t *testing.T, a *NodeAllocator) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestAllocateDualStackIsIdempotent(t *testing.T) {
	store := NewMemoryStore(DefaultPools(true)...)
	a := newAllocator(t, store, "node-a", t.TempDir())
	first := allocate(t, a, "c1")
	if len(first) != 2 || !first[0].IP.Is4() || !first[1].IP.Is6() {
		t.Fatalf("want an IPv4 then an IPv6 address, got %+v", first)
	}
	for _, al := range first {
		if !al.Block.Contains(al.IP) || al.Owner != owner("c1") {
			t.Errorf("allocation %+v: address outside its block or wrong owner", al)
		}
	}
	if again := allocate(t, a, "c1"); !slices.Equal(again, first) {
		t.Fatalf("second Allocate for the same handle gave %+v, first gave %+v", again, first)
	}
	other := allocate(t, a, "c2")
	if other[0].IP == first[0].IP || other[1].IP == first[1].IP {
		t.Fatalf("two handles share an address: %+v %+v", first, other)
	}
	if n := len(a.Allocations()); n != 4 {
		t.Fatalf("%d allocations, want 4", n)
	}
	// The node owns exactly one block per family, in the store too.
	blocks := storeBlocks(t, store)
	if len(blocks) != 2 || blocks[0].Node != "node-a" || blocks[1].Node != "node-a" {
		t.Fatalf("store blocks %+v", blocks)
	}
	if own := a.Blocks(); len(own) != 2 || own[0].Allocated != 2 || own[1].Allocated != 2 {
		t.Fatalf("Blocks() = %+v", own)
	}
}

func TestReleaseIsIdempotentAndFreesTheRecord(t *testing.T) {
	store := NewMemoryStore(DefaultPools(false)...)
	dir := t.TempDir()
	a := newAllocator(t, store, "node-a", dir)
	ctx := context.Background()
	ip := allocate(t, a, "c1")[0].IP
	if _, err := os.Stat(filepath.Join(dir, ip.String())); err != nil {
		t.Fatalf("no record of %s: %v", ip, err)
	}
	if err := a.Release(ctx, owner("c1").Handle); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, owner("c1").Handle); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if err := a.Release(ctx, Handle{ContainerID: "never", IfName: "eth0"}); err != nil {
		t.Fatalf("release of unknown handle: %v", err)
	}
	if n := len(a.Allocations()); n != 0 {
		t.Fatalf("%d allocations left", n)
	}
	if files := recordFiles(t, dir); len(files) != 0 {
		t.Fatalf("records left: %v", files)
	}
	// The address just freed is not the next one given (stale state elsewhere may still name it).
	if next := allocate(t, a, "c2")[0].IP; next == ip {
		t.Fatalf("freed address %s handed out again at once", ip)
	}
}

func TestRestartKeepsAllocationsAndNeverReusesThem(t *testing.T) {
	store := NewMemoryStore(Pool{Name: "p", CIDR: netip.MustParsePrefix("10.1.0.0/24"), BlockSize: 28})
	dir := t.TempDir()
	a := newAllocator(t, store, "node-a", dir)
	for i := range 20 {
		allocate(t, a, fmt.Sprint("c", i))
	}
	// Free a few in the middle so the restarted allocator sees holes.
	for _, i := range []int{3, 7} {
		if err := a.Release(context.Background(), owner(fmt.Sprint("c", i)).Handle); err != nil {
			t.Fatal(err)
		}
	}
	before, blocksBefore := a.Allocations(), a.Blocks()

	b := newAllocator(t, store, "node-a", dir)
	if after := b.Allocations(); !slices.Equal(after, before) {
		t.Fatalf("after restart:\n%+v\nbefore:\n%+v", after, before)
	}
	if after := b.Blocks(); !slices.Equal(after, blocksBefore) {
		t.Fatalf("blocks after restart %+v, before %+v", after, blocksBefore)
	}
	if again := allocate(t, b, "c5"); again[0].IP != before[slices.IndexFunc(before, func(al Allocation) bool { return al.Owner.ContainerID == "c5" })].IP {
		t.Fatalf("restarted allocator gave c5 a new address %v", again)
	}
	used := map[netip.Addr]bool{}
	for _, al := range before {
		used[al.IP] = true
	}
	for i := range 30 {
		ip := allocate(t, b, fmt.Sprint("new", i))[0].IP
		if used[ip] {
			t.Fatalf("restarted allocator handed out %s, which is in use", ip)
		}
		used[ip] = true
	}
}

func TestBrokenRecordsAreReclaimedOnStart(t *testing.T) {
	store := NewMemoryStore(Pool{Name: "p", CIDR: netip.MustParsePrefix("10.1.0.0/24"), BlockSize: 30}) // 4 per block
	dir := t.TempDir()
	a := newAllocator(t, store, "node-a", dir)
	good := allocate(t, a, "good")[0]
	block := good.Block
	// What a crash mid-write leaves: a truncated record, an empty file, and a record whose
	// content names another address.
	var others []netip.Addr
	for ip := block.Addr(); block.Contains(ip); ip = ip.Next() {
		if ip != good.IP {
			others = append(others, ip)
		}
	}
	write := func(ip netip.Addr, content string) {
		if err := os.WriteFile(filepath.Join(dir, ip.String()), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(others[0], `{"owner":{"containerID":"x","ifName":"eth0"},"ip":"`+others[0].String())
	write(others[1], "")
	write(others[2], fmt.Sprintf(`{"owner":{"containerID":"y","ifName":"eth0"},"ip":"%s","block":"%s","pool":"p"}`+"\n", good.IP, block))
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a record"), 0o600)

	b := newAllocator(t, store, "node-a", dir)
	if got := b.Allocations(); len(got) != 1 || got[0] != good {
		t.Fatalf("allocations after restart: %+v", got)
	}
	if files := recordFiles(t, dir); !slices.Equal(files, []string{good.IP.String(), "notes.txt"}) {
		t.Fatalf("files left: %v (broken records must be removed, foreign files kept)", files)
	}
	// The block's three other addresses are free again.
	for i := range 3 {
		if al := allocate(t, b, fmt.Sprint("n", i))[0]; al.Block != block {
			t.Fatalf("allocation %d went to %s, but %s has room", i, al.Block, block)
		}
	}
}

func TestFullPoolErrorNamesThePoolAndCounts(t *testing.T) {
	store := NewMemoryStore(Pool{Name: "tiny", CIDR: netip.MustParsePrefix("10.9.0.0/30"), BlockSize: 31})
	a := newAllocator(t, store, "node-a", t.TempDir())
	bDir := t.TempDir()
	b := newAllocator(t, store, "node-b", bDir)
	allocate(t, a, "a1")
	allocate(t, a, "a2")
	a.syncOnce(context.Background()) // node-a reports its usage, as Run would
	allocate(t, b, "b1")
	allocate(t, b, "b2")
	_, err := b.Allocate(context.Background(), owner("b3"))
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("err = %v, want ErrPoolExhausted", err)
	}
	want := `pool "tiny" (10.9.0.0/30, /31 blocks) is full: 2 of 2 blocks claimed, 4 of 4 addresses in use by this and other nodes`
	if err.Error() != want {
		t.Fatalf("error text:\n%s\nwant:\n%s", err, want)
	}
	if files := recordFiles(t, bDir); len(files) != 2 {
		t.Fatalf("a failed allocation left records: %v", files)
	}
	// Freeing one address makes room again.
	if err := b.Release(context.Background(), owner("b1").Handle); err != nil {
		t.Fatal(err)
	}
	allocate(t, b, "b3")
}

func TestFailedSecondFamilyUndoesTheFirst(t *testing.T) {
	store := NewMemoryStore(
		Pool{Name: "v4", CIDR: netip.MustParsePrefix("10.9.0.0/24"), BlockSize: 28},
		Pool{Name: "v6", CIDR: netip.MustParsePrefix("fd00:9::/127"), BlockSize: 128}, // two addresses
	)
	dir := t.TempDir()
	a := newAllocator(t, store, "node-a", dir)
	allocate(t, a, "c1")
	allocate(t, a, "c2")
	_, err := a.Allocate(context.Background(), owner("c3"))
	if !errors.Is(err, ErrPoolExhausted) || !strings.Contains(err.Error(), `pool "v6"`) {
		t.Fatalf("err = %v", err)
	}
	if n := len(a.Allocations()); n != 4 {
		t.Fatalf("%d allocations, want the 4 of c1 and c2", n)
	}
	if files := recordFiles(t, dir); len(files) != 4 {
		t.Fatalf("the IPv4 address of the failed allocation is still recorded: %v", files)
	}
}

func TestNoEnabledPool(t *testing.T) {
	store := NewMemoryStore()
	a := newAllocator(t, store, "node-a", t.TempDir())
	if _, err := a.Allocate(context.Background(), owner("c1")); !errors.Is(err, ErrNoPool) {
		t.Fatalf("err = %v, want ErrNoPool", err)
	}
	store.PutPool(Pool{Name: "off", CIDR: netip.MustParsePrefix("10.9.0.0/24"), Disabled: true})
	if _, err := a.Allocate(context.Background(), owner("c1")); !errors.Is(err, ErrNoPool) {
		t.Fatalf("with only a disabled pool: err = %v, want ErrNoPool", err)
	}
}

func TestDisabledPoolGivesNoNewAddresses(t *testing.T) {
	old := Pool{Name: "old", CIDR: netip.MustParsePrefix("10.8.0.0/24"), BlockSize: 26}
	store := NewMemoryStore(old)
	a := newAllocator(t, store, "node-a", t.TempDir())
	kept := allocate(t, a, "c1")[0]
	old.Disabled = true
	store.PutPool(old)
	store.PutPool(Pool{Name: "new", CIDR: netip.MustParsePrefix("10.9.0.0/24"), BlockSize: 26})
	got := allocate(t, a, "c2")[0]
	if got.Pool != "new" {
		t.Fatalf("allocation came from pool %q although %q is disabled", got.Pool, "old")
	}
	if again := allocate(t, a, "c1")[0]; again != kept {
		t.Fatalf("existing allocation changed: %+v", again)
	}
}

func TestReleaseExceptAndReleaseWhere(t *testing.T) {
	store := NewMemoryStore(DefaultPools(true)...)
	a := newAllocator(t, store, "node-a", t.TempDir())
	ctx := context.Background()
	for _, id := range []string{"c1", "c2", "c3", "c4"} {
		allocate(t, a, id)
	}
	released, err := a.ReleaseExcept(ctx, []Handle{owner("c1").Handle, owner("c2").Handle, owner("c3").Handle})
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 2 || released[0].Owner.ContainerID != "c4" || released[1].Owner.ContainerID != "c4" {
		t.Fatalf("ReleaseExcept released %+v, want both addresses of c4", released)
	}
	released, err = a.ReleaseWhere(ctx, func(al Allocation) bool { return al.Owner.PodName == "pod-c2" })
	if err != nil || len(released) != 2 {
		t.Fatalf("ReleaseWhere released %+v (%v), want both addresses of c2", released, err)
	}
	var left []string
	for _, al := range a.Allocations() {
		left = append(left, al.Owner.ContainerID)
	}
	slices.Sort(left)
	if !slices.Equal(left, []string{"c1", "c1", "c3", "c3"}) {
		t.Fatalf("left: %v", left)
	}
	if released, _ := a.ReleaseExcept(ctx, nil); len(released) != 4 || len(a.Allocations()) != 0 {
		t.Fatalf("ReleaseExcept(nil) released %d, left %d", len(released), len(a.Allocations()))
	}
}
