package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/routing"
)

// TestDeletedNodeIsForgotten deletes a node that has a pod (its agent stopped first, as when a
// machine is taken away): the other agents give its blocks back to the pool, and a peer drops
// its routes, FDB and neighbour entries for it, whether the peer was running at the time or
// down and reconciling at its start.
func TestDeletedNodeIsForgotten(t *testing.T) {
	c := needLab(t)
	n1 := c.Node("n1")

	t.Run("peer down meanwhile", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		gone := addNodeWithPod(t, ctx, c, "n4")
		ensureAgentRunning(t, n1)
		if err := n1.StopAgent(); err != nil {
			t.Fatal(err)
		}
		deleteNode(t, ctx, c, gone)
		waitBlocksReleased(t, ctx, c, gone.node)
		// The stopped agent left its routes behind: what removes them is its start.
		if left := peerEntries(t, n1, gone); len(left) == 0 {
			t.Fatalf("%s's entries for %s vanished while its agent was stopped", n1.Name, gone.node.Name)
		}
		if err := n1.StartAgent(); err != nil {
			t.Fatal(err)
		}
		if err := n1.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		// Ready means the first full apply is done: no waiting.
		if left := peerEntries(t, n1, gone); len(left) > 0 {
			t.Errorf("after its restart %s still has entries for deleted node %s:\n%s", n1.Name, gone.node.Name, strings.Join(left, "\n"))
		}
	})

	t.Run("peer running", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		gone := addNodeWithPod(t, ctx, c, "n5")
		deleteNode(t, ctx, c, gone)
		waitBlocksReleased(t, ctx, c, gone.node)
		pollUntil(t, 10*time.Second, n1.Name+" drops its entries for "+gone.node.Name, func() (bool, string) {
			left := peerEntries(t, n1, gone)
			return len(left) == 0, strings.Join(left, "; ")
		})
	})
}

// doomedNode is a node added for a test, with one pod and the blocks it claimed.
type doomedNode struct {
	node   *cluster.Node
	pod    *cluster.Pod
	blocks []netip.Prefix
}

// addNodeWithPod adds a node on the second subnet (so n1 reaches it through the tunnel in the
// vxlan and auto modes) with a pod, and waits until n1 routes to the pod's blocks. The node and
// the pod are removed from the lab when the test ends.
func addNodeWithPod(t *testing.T, ctx context.Context, c *cluster.Cluster, name string) *doomedNode {
	t.Helper()
	n, err := c.AddNode(ctx, cluster.NodeSpec{Name: name, Subnet: 1})
	t.Cleanup(func() {
		if err := c.RemoveNode(context.Background(), name); err != nil {
			t.Errorf("removing node %s: %v", name, err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := c.AddPod(ctx, n, "on-"+name)
	if err != nil {
		t.Fatal(err)
	}
	// Its DEL could not reach a node that is gone: drop the sandbox and Pod object directly
	// (kubelet's sandbox and the pod garbage collector's job in a real cluster).
	t.Cleanup(func() { _ = dropSandbox(context.Background(), c, p) })
	d := &doomedNode{node: n, pod: p}
	for _, b := range nodeBlocks(apiBlocks(t, ctx, c), name) {
		d.blocks = append(d.blocks, b.CIDR)
	}
	if len(d.blocks) != 2 {
		t.Fatalf("%s owns blocks %v after its first pod, want one IPv4 and one IPv6", name, d.blocks)
	}
	n1 := c.Node("n1")
	pollUntil(t, 10*time.Second, "n1 routes to "+name+"'s blocks", func() (bool, string) {
		routes := remoteRoutes(t, n1)
		for _, b := range d.blocks {
			if !slices.Contains(routes, b) {
				return false, fmt.Sprintf("n1's twill routes go to %v", routes)
			}
		}
		return true, ""
	})
	return d
}

// deleteNode stops the node's agent and deletes its Node object.
func deleteNode(t *testing.T, ctx context.Context, c *cluster.Cluster, d *doomedNode) {
	t.Helper()
	if err := d.node.StopAgent(); err != nil {
		t.Fatal(err)
	}
	err := c.Clients.Kube.CoreV1().Nodes().Delete(ctx, d.node.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

// waitBlocksReleased waits until the API has no block of the node any more.
func waitBlocksReleased(t *testing.T, ctx context.Context, c *cluster.Cluster, n *cluster.Node) {
	t.Helper()
	pollUntil(t, 10*time.Second, "the deleted node "+n.Name+"'s blocks given back to the pool", func() (bool, string) {
		left := nodeBlocks(apiBlocks(t, ctx, c), n.Name)
		return len(left) == 0, fmt.Sprint(left)
	})
}

// remoteRoutes lists the destinations of the routes twill owns on a node (RouteProtocolRemote).
func remoteRoutes(t *testing.T, n *cluster.Node) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	err := n.Do(func() error {
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{Protocol: datapath.RouteProtocolRemote}, netlink.RT_FILTER_PROTOCOL)
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			if p, err := netip.ParsePrefix(r.Dst.String()); err == nil {
				out = append(out, p)
			}
		}
		return err
	})
	if err != nil {
		t.Fatalf("listing routes on %s: %v", n.Name, err)
	}
	return out
}

// peerEntries lists what the node's kernel holds for the peer: routes to its blocks, FDB
// entries for its VTEP (by MAC or by address), neighbour entries with its VTEP MAC.
func peerEntries(t *testing.T, n *cluster.Node, peer *doomedNode) []string {
	t.Helper()
	var out []string
	for _, dst := range remoteRoutes(t, n) {
		for _, b := range peer.blocks {
			if dst.Overlaps(b) {
				out = append(out, "route "+dst.String())
			}
		}
	}
	mac := routing.VTEPMAC(peer.node.IP).String()
	err := n.Do(func() error {
		vx, err := netlink.LinkByName(datapath.VXLANDevice)
		if err != nil {
			return nil // no tunnel device: no FDB or neighbour entries at all
		}
		for _, family := range []int{unix.AF_BRIDGE, unix.AF_INET, unix.AF_INET6} {
			entries, err := netlink.NeighList(vx.Attrs().Index, family)
			if err != nil {
				return err
			}
			for _, e := range entries {
				dst, _ := netip.AddrFromSlice(e.IP)
				if e.HardwareAddr.String() == mac || (family == unix.AF_BRIDGE && dst.Unmap() == peer.node.IP) {
					out = append(out, fmt.Sprintf("neigh family %d %s lladdr %s", family, e.IP, e.HardwareAddr))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listing neighbours on %s: %v", n.Name, err)
	}
	return out
}
