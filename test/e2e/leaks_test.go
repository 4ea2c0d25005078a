package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/twill-net/twill/internal/cni/spool"
	"github.com/twill-net/twill/internal/lab/cluster"
)

// TestAddressOfVanishedPodIsReclaimed: a pod's sandbox and Pod object disappear and no DEL ever
// comes (the runtime lost it); the agent's periodic reconcile (every 2s in the lab) releases the
// address and the host veth is gone.
func TestAddressOfVanishedPodIsReclaimed(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := c.Node("n2")
	pods := trackPods(t, c)
	p, err := c.AddPod(ctx, n, "vanish")
	if err != nil {
		t.Fatal(err)
	}
	pods.add(p)
	veth := hostVeth(p)
	if !hasLink(t, n, veth) {
		t.Fatalf("host veth %s missing right after ADD", veth)
	}
	if err := dropSandbox(ctx, c, p); err != nil {
		t.Fatal(err)
	}
	pods.forget(p)

	pollUntil(t, 10*time.Second, "the vanished pod's addresses released", func() (bool, string) {
		recs := recordedAllocations(t, n)
		var held []string
		for _, ip := range p.IPs {
			if _, ok := recs[ip]; ok {
				held = append(held, ip.String())
			}
		}
		return len(held) == 0, "still recorded: " + strings.Join(held, ", ")
	})
	pollUntil(t, 5*time.Second, "the vanished pod's host veth removed", func() (bool, string) {
		return !hasLink(t, n, veth), veth + " exists"
	})
}

// TestAgentKilledMidBurstLeaksNothing kills the agent (SIGKILL) while 30 ADDs are under way on
// its node. Each ADD that failed gets what a runtime gives it, a DEL, which the plugin spools
// while the agent is down. Once the agent is back, the node holds exactly the addresses of the
// pods whose ADD succeeded, and none once those are removed.
func TestAgentKilledMidBurstLeaksNothing(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := c.Node("n3")
	requireNoAllocations(t, n)
	pods := trackPods(t, c)
	ensureAgentRunning(t, n)

	const total = 30
	burst := make([]*cluster.Pod, total)
	for i := range total {
		name := fmt.Sprintf("killed-%02d", i)
		obj, err := c.CreatePodObject(ctx, n, name)
		if err != nil {
			t.Fatal(err)
		}
		p, err := c.NewSandbox(n, name, string(obj.UID))
		if err != nil {
			_ = c.DeletePodObject(ctx, name)
			t.Fatal(err)
		}
		pods.add(p)
		burst[i] = p
	}

	// The kill comes once a third of the ADDs are done: the rest are in flight in the agent
	// (their connection drops), or still dialing (they give up after the plugin's agentTimeout).
	addErrs := make([]error, total)
	succeeded := make(chan struct{}, total)
	var wg sync.WaitGroup
	for i, p := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addErrs[i] = p.Add(ctx)
			if addErrs[i] == nil {
				succeeded <- struct{}{}
			}
		}()
	}
	for range total / 3 {
		select {
		case <-succeeded:
		case <-time.After(30 * time.Second):
			t.Fatal("the burst's ADDs stopped succeeding before the kill")
		}
	}
	if err := n.KillAgent(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	var ok, failed []*cluster.Pod
	var firstErr error
	for i, p := range burst {
		if addErrs[i] == nil {
			ok = append(ok, p)
		} else {
			failed = append(failed, p)
			firstErr = cmp.Or(firstErr, addErrs[i])
		}
	}
	t.Logf("%d ADDs succeeded, %d failed (first failure: %v)", len(ok), len(failed), firstErr)
	if len(failed) == 0 {
		t.Log("every ADD finished before the kill: the spool path was not exercised this time")
	}
	// What the dead agent left recorded for pods that have no address as far as the runtime
	// knows: the spooled DELs must release it.
	orphaned := 0
	for _, al := range recordedAllocations(t, n) {
		if slices.ContainsFunc(failed, func(p *cluster.Pod) bool { return p.ContainerID == al.Owner.ContainerID }) {
			orphaned++
		}
	}
	t.Logf("%d addresses recorded for pods whose ADD failed", orphaned)

	// The runtime's DEL of each failed ADD: the plugin cannot reach the agent and spools it.
	delErrs := make([]error, len(failed))
	for i, p := range failed {
		wg.Add(1)
		go func() {
			defer wg.Done()
			delErrs[i] = p.Del(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(delErrs...); err != nil {
		t.Fatalf("DEL with the agent down: %v", err)
	}
	for _, p := range failed {
		if _, err := os.Stat(filepath.Join(n.PendingDir, spool.FileName(p.ContainerID, "eth0"))); err != nil {
			t.Errorf("DEL of %s while the agent is down left no spool file: %v", p.Name, err)
		}
	}

	if err := n.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 10*time.Second, "the spooled DELs completed", func() (bool, string) {
		entries, err := spool.List(n.PendingDir)
		if err != nil {
			return false, err.Error()
		}
		return len(entries) == 0, fmt.Sprintf("%d spooled DELs", len(entries))
	})

	// Exactly the addresses of the pods that got them.
	want := map[netip.Addr]string{} // address -> pod
	for _, p := range ok {
		for _, ip := range p.IPs {
			want[ip] = p.Name
		}
	}
	recs := recordedAllocations(t, n)
	if files := recordFiles(t, n); len(files) != len(recs) {
		t.Errorf("%s's IPAM state holds %d files, %d of them records: %v", n.Name, len(files), len(recs), files)
	}
	for ip, al := range recs {
		if _, ok := want[ip]; !ok {
			t.Errorf("%s is still allocated to pod %s, whose ADD failed", ip, al.Owner.PodName)
		}
	}
	for ip, pod := range want {
		if _, ok := recs[ip]; !ok {
			t.Errorf("pod %s's address %s is not recorded any more", pod, ip)
		}
	}
	for _, p := range failed {
		if hasLink(t, n, hostVeth(p)) {
			t.Errorf("host veth %s of %s, whose ADD failed, is still there", hostVeth(p), p.Name)
		}
	}
	for _, p := range ok {
		if err := p.Check(ctx); err != nil {
			t.Errorf("CHECK of %s, added before the kill: %v", p.Name, err)
		}
	}
	waitAllocatedOn(t, ctx, c, n, len(want))

	if err := pods.removeAll(ctx); err != nil {
		t.Fatal(err)
	}
	waitNoAllocations(t, ctx, c, 10*time.Second, n)
}

// TestCNIGCReleasesInvalidAttachments runs the CNI GC verb through libcni, as a runtime does
// after a restart: the attachment missing from cni.dev/valid-attachments is released (addresses
// and host veth), the valid one is kept intact.
func TestCNIGCReleasesInvalidAttachments(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := c.Node("n3")
	pods := trackPods(t, c)
	keep, err := c.AddPod(ctx, n, "gc-keep")
	if err != nil {
		t.Fatal(err)
	}
	pods.add(keep)
	stale, err := c.AddPod(ctx, n, "gc-stale")
	if err != nil {
		t.Fatal(err)
	}
	pods.add(stale)

	cni, list := n.CNI()
	// libcni itself DELs the cached attachments missing from the valid list before it calls the
	// plugin's GC. Forget the stale one's cache entry (a runtime that lost it), so that only
	// the plugin's GC can release it.
	cached := filepath.Join(n.Dir, "cni-cache", "results", fmt.Sprintf("%s-%s-eth0", list.Name, stale.ContainerID))
	if err := os.Remove(cached); err != nil {
		t.Fatalf("removing the stale attachment's libcni cache entry: %v", err)
	}
	// Every attachment the node has is valid except the stale one: the GC must leave the rest
	// of the lab alone.
	var valid []types.GCAttachment
	for _, al := range recordedAllocations(t, n) {
		a := types.GCAttachment{ContainerID: al.Owner.ContainerID, IfName: al.Owner.IfName}
		if a.ContainerID != stale.ContainerID && !slices.Contains(valid, a) {
			valid = append(valid, a)
		}
	}
	if !slices.Contains(valid, types.GCAttachment{ContainerID: keep.ContainerID, IfName: "eth0"}) {
		t.Fatalf("the kept pod's attachment is not recorded on %s", n.Name)
	}
	err = n.Do(func() error {
		return cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid})
	})
	if err != nil {
		t.Fatalf("CNI GC: %v", err)
	}

	recs := recordedAllocations(t, n)
	for _, ip := range stale.IPs {
		if _, held := recs[ip]; held {
			t.Errorf("GC left %s of the invalid attachment allocated", ip)
		}
	}
	if hasLink(t, n, hostVeth(stale)) {
		t.Errorf("GC left the invalid attachment's host veth %s", hostVeth(stale))
	}
	for _, ip := range keep.IPs {
		if _, held := recs[ip]; !held {
			t.Errorf("GC released %s of the valid attachment", ip)
		}
	}
	if err := keep.Check(ctx); err != nil {
		t.Errorf("CHECK of the valid attachment after GC: %v", err)
	}
}

// TestAgentOutage stops an agent: ADD fails within a bounded time with "try again later" (11)
// and names the socket it could not reach; DEL of an existing pod succeeds, spooled; when the
// agent is back it completes the spooled DEL and the pod's addresses are free.
func TestAgentOutage(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := c.Node("n1")
	pods := trackPods(t, c)
	ensureAgentRunning(t, n)

	existing, err := c.AddPod(ctx, n, "outage-existing")
	if err != nil {
		t.Fatal(err)
	}
	pods.add(existing)
	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}

	obj, err := c.CreatePodObject(ctx, n, "outage-new")
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := c.NewSandbox(n, "outage-new", string(obj.UID))
	if err != nil {
		_ = c.DeletePodObject(ctx, "outage-new")
		t.Fatal(err)
	}
	pods.add(fresh)
	start := time.Now()
	err = fresh.Add(ctx)
	took := time.Since(start)
	t.Logf("ADD with the agent down took %s: %v", took.Round(time.Millisecond), err)
	var cniErr *types.Error
	switch {
	case err == nil:
		t.Error("ADD succeeded with the agent down")
	case !errors.As(err, &cniErr):
		t.Errorf("ADD error is not a CNI error: %v", err)
	case cniErr.Code != types.ErrTryAgainLater:
		t.Errorf("ADD error code %d, want %d (try again later)", cniErr.Code, types.ErrTryAgainLater)
	case !strings.Contains(cniErr.Msg, n.Socket):
		t.Errorf("ADD error does not name the socket %s: %q", n.Socket, cniErr.Msg)
	}
	if took >= 8*time.Second {
		t.Errorf("ADD with the agent down took %s, want under 8s (agentTimeout is 5s)", took)
	}

	if err := existing.Del(ctx); err != nil {
		t.Fatalf("DEL with the agent down: %v", err)
	}
	spooled := filepath.Join(n.PendingDir, spool.FileName(existing.ContainerID, "eth0"))
	if _, err := os.Stat(spooled); err != nil {
		t.Fatalf("DEL with the agent down left no spool file: %v", err)
	}
	// Nothing is released while the agent is away: the spool holds the DEL.
	recs := recordedAllocations(t, n)
	for _, ip := range existing.IPs {
		if _, ok := recs[ip]; !ok {
			t.Fatalf("%s was released while the agent was down", ip)
		}
	}

	if err := n.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 10*time.Second, "the spooled DEL completed and the pod's addresses released", func() (bool, string) {
		_, err := os.Stat(spooled)
		recs := recordedAllocations(t, n)
		var held []string
		for _, ip := range existing.IPs {
			if _, ok := recs[ip]; ok {
				held = append(held, ip.String())
			}
		}
		return os.IsNotExist(err) && len(held) == 0, fmt.Sprintf("spool file stat: %v; still recorded: %v", err, held)
	})
	if hasLink(t, n, hostVeth(existing)) {
		t.Errorf("the spooled DEL left the host veth %s", hostVeth(existing))
	}
}
