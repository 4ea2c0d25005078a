package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/lab/cluster"
)

// TestConcurrentAddsGetDistinctAddressesFromOwnBlocks runs 200 pod ADDs over the three nodes,
// 50 at a time: every ADD succeeds, no address goes to two pods, every address lies in a block
// the API shows as owned by the pod's node, and the blocks' reported usage follows the pods up
// and back down to zero once they are removed.
func TestConcurrentAddsGetDistinctAddressesFromOwnBlocks(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes := []*cluster.Node{c.Node("n1"), c.Node("n2"), c.Node("n3")}
	requireNoAllocations(t, nodes...)
	pods := trackPods(t, c)

	const total, parallel = 200, 50
	added := make([]*cluster.Pod, total)
	errs := make([]error, total)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p, err := c.AddPod(ctx, nodes[i%len(nodes)], fmt.Sprintf("burst-%03d", i))
			if err == nil {
				pods.add(p)
			}
			added[i], errs[i] = p, err
		}()
	}
	wg.Wait()
	t.Logf("%d ADDs, %d at a time, took %s", total, parallel, time.Since(start).Round(time.Millisecond))
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("some ADDs failed: %v", err)
	}

	owner := map[netip.Addr]string{}
	perNode := map[string]int{}
	blocks := apiBlocks(t, ctx, c)
	for _, p := range added {
		if !p.IPv4().IsValid() || !p.IPv6().IsValid() || len(p.IPs) != 2 {
			t.Errorf("pod %s got %v, want one IPv4 and one IPv6 address", p.Name, p.IPs)
		}
		perNode[p.Node.Name] += len(p.IPs)
		for _, ip := range p.IPs {
			if other, taken := owner[ip]; taken {
				t.Errorf("address %s given to both %s and %s", ip, other, p.Name)
			}
			owner[ip] = p.Name
			i := slices.IndexFunc(blocks, func(b ipam.Block) bool { return b.CIDR.Contains(ip) })
			switch {
			case i < 0:
				t.Errorf("pod %s's address %s lies in no IPAMBlock", p.Name, ip)
			case blocks[i].Node != p.Node.Name:
				t.Errorf("pod %s on %s has %s from block %s of node %s", p.Name, p.Node.Name, ip, blocks[i].CIDR, blocks[i].Node)
			}
		}
	}
	for _, n := range nodes {
		recs := recordedAllocations(t, n)
		if len(recs) != perNode[n.Name] {
			t.Errorf("%s recorded %d allocations, its pods hold %d addresses", n.Name, len(recs), perNode[n.Name])
		}
		waitAllocatedOn(t, ctx, c, n, perNode[n.Name])
	}
	if t.Failed() {
		return
	}

	start = time.Now()
	if err := pods.removeAll(ctx); err != nil {
		t.Fatalf("removing the pods: %v", err)
	}
	t.Logf("removing %d pods took %s", total, time.Since(start).Round(time.Millisecond))
	waitNoAllocations(t, ctx, c, 10*time.Second, nodes...)
}

// TestAllocationsSurviveAgentKill kills an agent (SIGKILL, as a crash would) and starts it
// again: the runtime's repeated ADD of a running pod gets the same addresses, CHECK finds the
// endpoint intact, and a new pod gets other addresses.
func TestAllocationsSurviveAgentKill(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := c.Node("n1")
	pods := trackPods(t, c)
	ensureAgentRunning(t, n)

	a, err := c.AddPod(ctx, n, "restart-a")
	if err != nil {
		t.Fatal(err)
	}
	pods.add(a)
	before := slices.Clone(a.IPs)

	if err := n.KillAgent(); err != nil {
		t.Fatal(err)
	}
	if err := n.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	if err := a.Add(ctx); err != nil {
		t.Fatalf("repeating the ADD after the restart: %v", err)
	}
	if !slices.Equal(a.IPs, before) {
		t.Errorf("the repeated ADD gave %v, the first %v", a.IPs, before)
	}
	if err := a.Check(ctx); err != nil {
		t.Errorf("CHECK after the restart: %v", err)
	}
	b, err := c.AddPod(ctx, n, "restart-b")
	if err != nil {
		t.Fatal(err)
	}
	pods.add(b)
	for _, ip := range b.IPs {
		if slices.Contains(a.IPs, ip) {
			t.Errorf("new pod got %s, which pod %s holds", ip, a.Name)
		}
	}
	// The endpoint the repeated ADD made works.
	if out, err := b.Exec(ctx, "ping", "-c", "1", "-W", "2", a.IPv4().String()).CombinedOutput(); err != nil {
		t.Errorf("ping %s -> %s: %v\n%s", b.Name, a.Name, err, out)
	}
}

// TestIPAMStatusShowsPoolsAndBlocks runs `twill ipam status` inside a node, as an operator would,
// and checks that it shows the pools, each node's blocks and the addresses used that the test's
// pods account for.
func TestIPAMStatusShowsPoolsAndBlocks(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes := []*cluster.Node{c.Node("n1"), c.Node("n2"), c.Node("n3")}
	requireNoAllocations(t, nodes...)
	pods := trackPods(t, c)
	want := map[string]int{"n1": 3, "n3": 2} // pods per node
	for node, count := range want {
		for i := range count {
			p, err := c.AddPod(ctx, c.Node(node), fmt.Sprintf("status-%s-%d", node, i))
			if err != nil {
				t.Fatal(err)
			}
			pods.add(p)
		}
	}
	for _, n := range nodes {
		waitAllocatedOn(t, ctx, c, n, 2*want[n.Name]) // one IPv4 and one IPv6 address each
	}
	blocks := apiBlocks(t, ctx, c)

	out, err := c.Node("n1").Command(ctx, twillBin, "ipam", "status", "--kubeconfig", c.Kubeconfig).CombinedOutput()
	if err != nil {
		t.Fatalf("twill ipam status: %v\n%s", err, out)
	}
	t.Logf("twill ipam status:\n%s", out)
	status := parseIPAMStatus(t, string(out))

	pods3 := want["n1"] + want["n3"]
	for _, p := range []struct{ name, cidr, blockSize, free string }{
		{"default-ipv4", "10.244.0.0/16", "/26", fmt.Sprint(1<<16 - pods3)},
		{"default-ipv6", "fd00:10:244::/56", "/122", "~4.7e21"},
	} {
		row, ok := status.pools[p.name]
		if !ok {
			t.Errorf("pool %s not shown", p.name)
			continue
		}
		claimed := 0
		for _, b := range blocks {
			if b.Pool == p.name {
				claimed++
			}
		}
		wantRow := []string{p.cidr, p.blockSize, fmt.Sprintf("%d/", claimed), fmt.Sprintf("%d/%s", pods3, p.free)}
		if len(row) != 4 || row[0] != wantRow[0] || row[1] != wantRow[1] || !strings.HasPrefix(row[2], wantRow[2]) || row[3] != wantRow[3] {
			t.Errorf("pool %s shown as %q, want %q (blocks claimed/total, addresses used/free)", p.name, row, wantRow)
		}
	}
	for _, n := range nodes {
		var wantBlocks []string
		for _, b := range nodeBlocks(blocks, n.Name) {
			wantBlocks = append(wantBlocks, b.CIDR.String())
		}
		shown := status.nodes[n.Name]
		var gotBlocks []string
		used := map[string]int{}
		for _, r := range shown {
			gotBlocks = append(gotBlocks, r.block)
			used[r.pool] += r.used
			if r.total != 64 {
				t.Errorf("%s's block %s shown with %d addresses, want 64", n.Name, r.block, r.total)
			}
		}
		slices.Sort(gotBlocks)
		slices.Sort(wantBlocks)
		if !slices.Equal(gotBlocks, wantBlocks) {
			t.Errorf("%s's blocks shown as %v, the API has %v", n.Name, gotBlocks, wantBlocks)
		}
		if used["default-ipv4"] != want[n.Name] || used["default-ipv6"] != want[n.Name] {
			t.Errorf("%s shown using %v addresses per pool, want %d of each family", n.Name, used, want[n.Name])
		}
	}
	for _, fam := range []string{"IPv4: room for ", "IPv6: room for "} {
		if !strings.Contains(string(out), fam) {
			t.Errorf("no %q line", fam)
		}
	}
}

type statusBlockRow struct {
	block, pool string
	used, total int
}

type ipamStatus struct {
	pools map[string][]string         // pool name -> CIDR, block size, blocks, addresses
	nodes map[string][]statusBlockRow // node -> its block rows
}

// parseIPAMStatus reads the two tables of `twill ipam status`: pools, then nodes' blocks (a
// node's name appears on its first block's row only).
func parseIPAMStatus(t *testing.T, out string) ipamStatus {
	t.Helper()
	s := ipamStatus{pools: map[string][]string{}, nodes: map[string][]statusBlockRow{}}
	section, node := "", ""
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
			section = ""
		case f[0] == "POOL":
			section = "pools"
		case f[0] == "NODE":
			section = "nodes"
		case section == "pools" && len(f) >= 5:
			s.pools[f[0]] = f[1:5]
		case section == "nodes" && (len(f) == 4 || len(f) == 3):
			if len(f) == 4 {
				node, f = f[0], f[1:]
			}
			var r statusBlockRow
			if _, err := fmt.Sscanf(f[2], "%d/%d", &r.used, &r.total); err != nil {
				t.Fatalf("cannot read the usage in %q: %v", line, err)
			}
			r.block, r.pool = f[0], f[1]
			s.nodes[node] = append(s.nodes[node], r)
		}
	}
	if len(s.pools) == 0 || len(s.nodes) == 0 {
		t.Fatalf("no pools or no nodes found in:\n%s", out)
	}
	return s
}
