package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/ipam/kubestore"
	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// This file holds what the IPAM, leak and node tests read back from the lab: the allocations a
// node's agent recorded on disk, the IPAMBlocks in the API, the node's host veths; and a way to
// wait for an eventual state with a deadline.

// pollUntil calls check until it reports done or timeout passes; then the test fails with what
// check last said. check's message describes the state it saw (for the failure report).
func pollUntil(t *testing.T, timeout time.Duration, what string, check func() (done bool, state string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done, state := check()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after %s; last seen: %s", what, timeout, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// recordedAllocations reads the allocations a node's agent recorded on disk (one file per
// address under StateDir/ipam, named by the address), whether or not the agent runs.
// Records that do not parse are left out (see recordFiles).
func recordedAllocations(t *testing.T, n *cluster.Node) map[netip.Addr]ipam.Allocation {
	t.Helper()
	dir := filepath.Join(n.StateDir, "ipam")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("reading %s's IPAM state: %v", n.Name, err)
	}
	out := map[netip.Addr]ipam.Allocation{}
	for _, e := range entries {
		ip, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // released while we listed
		}
		if err != nil {
			t.Fatalf("reading %s's record of %s: %v", n.Name, ip, err)
		}
		var al ipam.Allocation
		if err := json.Unmarshal(data, &al); err != nil {
			// Being written right now, or torn by a crash (the agent removes it at start).
			t.Logf("%s's record of %s does not parse (yet): %v", n.Name, ip, err)
			continue
		}
		out[ip] = al
	}
	return out
}

// recordFiles lists the names of every file in the node's IPAM state directory, records that
// do not parse included.
func recordFiles(t *testing.T, n *cluster.Node) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(n.StateDir, "ipam"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reading %s's IPAM state: %v", n.Name, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// apiBlocks lists the IPAMBlocks through the same store the agents use.
func apiBlocks(t *testing.T, ctx context.Context, c *cluster.Cluster) []ipam.Block {
	t.Helper()
	blocks, err := kubestore.New(c.Clients.Dynamic).ListBlocks(ctx)
	if err != nil {
		t.Fatalf("listing IPAMBlocks: %v", err)
	}
	return blocks
}

// nodeBlocks returns the blocks the API shows as owned by node.
func nodeBlocks(blocks []ipam.Block, node string) []ipam.Block {
	return slices.DeleteFunc(slices.Clone(blocks), func(b ipam.Block) bool { return b.Node != node })
}

// allocatedOn sums status.allocated over the node's blocks.
func allocatedOn(blocks []ipam.Block, node string) int {
	sum := 0
	for _, b := range nodeBlocks(blocks, node) {
		sum += b.Allocated
	}
	return sum
}

// requireNoAllocations fails the test when a node has allocations before it starts: every test
// removes its pods, so anything left is a leak of an earlier test (or of twill), and the counts
// this test checks would be off by it.
func requireNoAllocations(t *testing.T, nodes ...*cluster.Node) {
	t.Helper()
	for _, n := range nodes {
		if files := recordFiles(t, n); len(files) > 0 {
			t.Fatalf("%s has allocations before the test starts (leaked by an earlier test?): %v", n.Name, files)
		}
	}
}

// waitNoAllocations waits until the nodes' agents have released every address: no record on
// disk, and the API's blocks of the nodes report 0 allocated.
func waitNoAllocations(t *testing.T, ctx context.Context, c *cluster.Cluster, timeout time.Duration, nodes ...*cluster.Node) {
	t.Helper()
	for _, n := range nodes {
		pollUntil(t, timeout, n.Name+"'s allocation records all gone", func() (bool, string) {
			files := recordFiles(t, n)
			return len(files) == 0, fmt.Sprint(files)
		})
	}
	pollUntil(t, timeout, "IPAMBlocks of the nodes report 0 allocated", func() (bool, string) {
		blocks := apiBlocks(t, ctx, c)
		var busy []string
		for _, n := range nodes {
			for _, b := range nodeBlocks(blocks, n.Name) {
				if b.Allocated != 0 {
					busy = append(busy, fmt.Sprintf("%s %s allocated=%d", n.Name, b.CIDR, b.Allocated))
				}
			}
		}
		return len(busy) == 0, strings.Join(busy, ", ")
	})
}

// waitAllocatedOn waits until the node's blocks report want addresses allocated in total.
func waitAllocatedOn(t *testing.T, ctx context.Context, c *cluster.Cluster, n *cluster.Node, want int) {
	t.Helper()
	pollUntil(t, 10*time.Second, fmt.Sprintf("%s's IPAMBlocks report %d allocated", n.Name, want), func() (bool, string) {
		got := allocatedOn(apiBlocks(t, ctx, c), n.Name)
		return got == want, fmt.Sprintf("%d allocated", got)
	})
}

// hostVeth is the node-side veth of a pod's eth0.
func hostVeth(p *cluster.Pod) string {
	return cniserver.HostVethName(ipam.Handle{ContainerID: p.ContainerID, IfName: "eth0"})
}

// hasLink says whether the node's namespace has a link of that name.
func hasLink(t *testing.T, n *cluster.Node, name string) bool {
	t.Helper()
	found := false
	err := n.Do(func() error {
		_, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		t.Fatalf("looking up link %s on %s: %v", name, n.Name, err)
	}
	return found
}

// podTracker removes the pods a test made, once each, however the test ends.
type podTracker struct {
	c    *cluster.Cluster
	mu   sync.Mutex
	pods map[string]*cluster.Pod
}

// trackPods returns a tracker whose pods are removed when the test ends (DEL, sandbox, Pod
// object, as kubelet does; DEL errors of pods whose agent is gone are ignored).
func trackPods(t *testing.T, c *cluster.Cluster) *podTracker {
	pt := &podTracker{c: c, pods: map[string]*cluster.Pod{}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := pt.removeAll(ctx); err != nil {
			t.Errorf("removing the test's pods: %v", err)
		}
	})
	return pt
}

func (pt *podTracker) add(p *cluster.Pod) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.pods[p.Name] = p
}

// remove removes one pod the way kubelet does and forgets it.
func (pt *podTracker) remove(ctx context.Context, p *cluster.Pod) error {
	pt.mu.Lock()
	delete(pt.pods, p.Name)
	pt.mu.Unlock()
	return pt.c.Remove(ctx, p)
}

// forget drops a pod from the tracker without touching it (its removal was done by hand).
func (pt *podTracker) forget(p *cluster.Pod) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	delete(pt.pods, p.Name)
}

// removeAll removes every tracked pod, 20 at a time.
func (pt *podTracker) removeAll(ctx context.Context) error {
	pt.mu.Lock()
	pods := make([]*cluster.Pod, 0, len(pt.pods))
	for _, p := range pt.pods {
		pods = append(pods, p)
	}
	pt.mu.Unlock()
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	errs := make([]error, len(pods))
	sem := make(chan struct{}, 20)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = pt.remove(ctx, p)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dropSandbox removes a pod's sandbox and Pod object without any CNI call: the runtime (or the
// whole node) vanished and no DEL will come.
func dropSandbox(ctx context.Context, c *cluster.Cluster, p *cluster.Pod) error {
	return errors.Join(underlay.DeleteNetns(p.Sandbox.Name), c.DeletePodObject(ctx, p.Name))
}

// ensureAgentRunning starts the node's agent again if a test stopped it and failed before
// starting it, so later tests find every agent serving.
func ensureAgentRunning(t *testing.T, n *cluster.Node) {
	t.Cleanup(func() {
		_ = n.StartAgent() // "already running" is the good case
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.WaitReady(ctx); err != nil {
			t.Errorf("agent on %s after the test: %v", n.Name, err)
		}
	})
}
