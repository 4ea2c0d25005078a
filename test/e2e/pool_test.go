package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/util/retry"

	"github.com/twill-net/twill/api/v1alpha1"
	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/ipam/kubestore"
	"github.com/twill-net/twill/internal/lab/cluster"
)

// TestFullPoolErrorNamesPoolAndCounts makes a 4-address pool the only enabled one (the default
// pools disabled: a disabled pool gives no new addresses, even from blocks with room that the
// node holds already), fills it from one node, and checks that the next ADD fails with an error
// naming the pool and its counts. Everything is put back afterwards: the default pools enabled,
// the small pool and its block gone.
func TestFullPoolErrorNamesPoolAndCounts(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := c.Node("n2")
	store := kubestore.New(c.Clients.Dynamic)
	tiny := ipam.Pool{Name: "e2e-tiny", CIDR: netip.MustParsePrefix("10.99.0.0/30"), BlockSize: 30}

	if err := store.EnsurePool(ctx, tiny); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restorePools(t, c, n, tiny.Name) })
	pods := trackPods(t, c) // registered after restorePools, so it runs first: pods go, then pools
	// A pod from the default pools first: n2 then holds default blocks with room in them, which
	// must give nothing once their pool is disabled.
	before, err := c.AddPod(ctx, n, "tiny-before")
	if err != nil {
		t.Fatal(err)
	}
	pods.add(before)
	if !netip.MustParsePrefix("10.244.0.0/16").Contains(before.IPv4()) || !before.IPv6().IsValid() {
		t.Fatalf("pod %s got %v, want addresses of the default pools", before.Name, before.IPs)
	}
	for _, name := range []string{"default-ipv4", "default-ipv6"} {
		setPoolDisabled(t, ctx, c, name, true)
	}
	// Agents reuse their list of pools for 10s; a restart makes n2 read it now.
	if err := n.RestartAgent(ctx); err != nil {
		t.Fatal(err)
	}

	for i := range 4 {
		p, err := c.AddPod(ctx, n, fmt.Sprintf("tiny-%d", i))
		if err != nil {
			t.Fatalf("ADD %d of 4 into the 4-address pool: %v", i+1, err)
		}
		pods.add(p)
		if len(p.IPs) != 1 || !tiny.CIDR.Contains(p.IPv4()) {
			t.Errorf("pod %s got %v, want one address of %s (no IPv6 pool is enabled)", p.Name, p.IPs, tiny.CIDR)
		}
	}
	// Addresses given before the pool was disabled stay.
	if err := before.Check(ctx); err != nil {
		t.Errorf("CHECK of the pod given addresses before its pool was disabled: %v", err)
	}
	p, err := c.AddPod(ctx, n, "tiny-overflow")
	if err == nil {
		pods.add(p)
		t.Fatalf("ADD into the full pool succeeded with %v", p.IPs)
	}
	t.Logf("ADD into the full pool: %v", err)
	for _, want := range []string{`pool "e2e-tiny"`, "10.99.0.0/30", "1 of 1 blocks claimed", "4 of 4 addresses in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q", want)
		}
	}
}

// setPoolDisabled sets an IPPool's spec.disabled.
func setPoolDisabled(t *testing.T, ctx context.Context, c *cluster.Cluster, name string, disabled bool) {
	t.Helper()
	pools := c.Clients.Dynamic.Resource(v1alpha1.IPPoolResource)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := pools.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := unstructured.SetNestedField(u.Object, disabled, "spec", "disabled"); err != nil {
			return err
		}
		_, err = pools.Update(ctx, u, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("setting IPPool %s disabled=%v: %v", name, disabled, err)
	}
}

// restorePools enables the default pools again, deletes the test's pool and restarts the node's
// agent so it reads the pools at once; the node then gives the emptied block of the deleted pool
// back.
func restorePools(t *testing.T, c *cluster.Cluster, n *cluster.Node, pool string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, name := range []string{"default-ipv4", "default-ipv6"} {
		setPoolDisabled(t, ctx, c, name, false)
	}
	err := c.Clients.Dynamic.Resource(v1alpha1.IPPoolResource).Delete(ctx, pool, metav1.DeleteOptions{})
	if err != nil {
		t.Errorf("deleting IPPool %s: %v", pool, err)
	}
	if err := n.RestartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 10*time.Second, "the deleted pool's block is given back", func() (bool, string) {
		var left []string
		for _, b := range apiBlocks(t, ctx, c) {
			if b.Pool == pool {
				left = append(left, fmt.Sprintf("%s of %s (allocated %d)", b.CIDR, b.Node, b.Allocated))
			}
		}
		return len(left) == 0, strings.Join(left, ", ")
	})
}
