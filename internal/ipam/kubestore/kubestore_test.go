package kubestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/fake"

	"github.com/twill-net/twill/api/v1alpha1"
	"github.com/twill-net/twill/internal/ipam"
)

func newStore(t *testing.T) (*Store, *fake.FakeDynamicClient) {
	t.Helper()
	// An empty scheme: the fake then keeps objects unstructured, as a real server's answers are.
	dyn := fake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		v1alpha1.IPPoolResource:    "IPPoolList",
		v1alpha1.IPAMBlockResource: "IPAMBlockList",
	})
	s := New(dyn)
	s.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	return s, dyn
}

func TestPoolsRoundTrip(t *testing.T) {
	s, dyn := newStore(t)
	ctx := context.Background()
	for _, p := range ipam.DefaultPools(true) {
		if err := s.EnsurePool(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// EnsurePool leaves an existing pool as it is.
	changed := ipam.DefaultPools(false)[0]
	changed.Disabled = true
	if err := s.EnsurePool(ctx, changed); err != nil {
		t.Fatal(err)
	}
	// A pool with a bad CIDR is left out, not fatal.
	bad, _ := toUnstructured(&v1alpha1.IPPool{
		TypeMeta:   metav1.TypeMeta{APIVersion: "twill.dev/v1alpha1", Kind: "IPPool"},
		ObjectMeta: metav1.ObjectMeta{Name: "bad"},
		Spec:       v1alpha1.IPPoolSpec{CIDR: "10.0.0.1/8"},
	})
	if _, err := dyn.Resource(v1alpha1.IPPoolResource).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pools, err := s.ListPools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := ipam.DefaultPools(true)
	if len(pools) != 2 || pools[0] != want[0] || pools[1] != want[1] {
		t.Fatalf("pools %+v, want %+v", pools, want)
	}
}

func TestBlockOwnership(t *testing.T) {
	s, dyn := newStore(t)
	ctx := context.Background()
	b := ipam.Block{CIDR: netip.MustParsePrefix("10.244.0.64/26"), Pool: "default-ipv4", Node: "node-a"}
	if err := s.ClaimBlock(ctx, b); err != nil {
		t.Fatal(err)
	}
	theirs := b
	theirs.Node = "node-b"
	if err := s.ClaimBlock(ctx, theirs); !errors.Is(err, ipam.ErrBlockTaken) {
		t.Fatalf("second claim: %v, want ErrBlockTaken", err)
	}
	obj, err := dyn.Resource(v1alpha1.IPAMBlockResource).Get(ctx, "10-244-0-64-26", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("block object not named from its CIDR: %v", err)
	}
	if c, _, _ := unstructuredInt(obj.Object, "status", "capacity"); c != 64 {
		t.Errorf("status.capacity = %d, want 64", c)
	}

	b.Allocated = 5
	if err := s.SetBlockUsage(ctx, b); err != nil {
		t.Fatal(err)
	}
	theirs.Allocated = 9
	if err := s.SetBlockUsage(ctx, theirs); !errors.Is(err, ipam.ErrBlockNotFound) {
		t.Fatalf("usage write by a node that does not own the block: %v, want ErrBlockNotFound", err)
	}
	blocks, err := s.ListBlocks(ctx)
	if err != nil || len(blocks) != 1 || blocks[0] != b {
		t.Fatalf("blocks %+v (%v), want %+v", blocks, err, b)
	}

	if err := s.ReleaseBlock(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	if blocks, _ := s.ListBlocks(ctx); len(blocks) != 1 {
		t.Fatal("a node that does not own the block released it")
	}
	if err := s.ReleaseBlock(ctx, b); err != nil {
		t.Fatal(err)
	}
	if blocks, _ := s.ListBlocks(ctx); len(blocks) != 0 {
		t.Fatalf("block still there after its owner released it: %+v", blocks)
	}
	if err := s.ReleaseBlock(ctx, b); err != nil {
		t.Fatalf("releasing a block that is gone: %v", err)
	}
	if err := s.SetBlockUsage(ctx, b); !errors.Is(err, ipam.ErrBlockNotFound) {
		t.Fatalf("usage write to a block that is gone: %v, want ErrBlockNotFound", err)
	}
}

// The node allocator over this store: blocks appear as objects and their status follows.
func TestNodeAllocatorOverKubeStore(t *testing.T) {
	s, _ := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, p := range ipam.DefaultPools(true) {
		if err := s.EnsurePool(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	a, err := ipam.NewNodeAllocator(ipam.NodeAllocatorConfig{Node: "node-a", StateDir: t.TempDir(), Store: s, UsageInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for i := range 3 {
		got, err := a.Allocate(ctx, ipam.Owner{Handle: ipam.Handle{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}})
		if err != nil || len(got) != 2 {
			t.Fatalf("allocate: %+v %v", got, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		blocks, err := s.ListBlocks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(blocks) == 2 && blocks[0].Allocated == 3 && blocks[1].Allocated == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("blocks %+v; want one per family with 3 in use each", blocks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func unstructuredInt(obj map[string]any, path ...string) (int64, bool, error) {
	cur := any(obj)
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return 0, false, nil
		}
		cur = m[p]
	}
	n, ok := cur.(int64)
	return n, ok, nil
}
