package cniserver_test

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/twill-net/twill/internal/cni/spool"
	"github.com/twill-net/twill/internal/cniproto"
	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/cniserver/cnitest"
	"github.com/twill-net/twill/internal/testutil"
)

func TestCheckNamesWhatDrifted(t *testing.T) {
	f := newFixture(t, nil)
	node := handleIn(t, f.node)

	cases := []struct {
		name    string
		breakIt func(t *testing.T, pod *netlink.Handle, hostVeth string)
		want    string
	}{
		{"address removed", func(t *testing.T, pod *netlink.Handle, _ string) {
			eth0 := mustLink(t, pod, "eth0")
			addrs, _ := pod.AddrList(eth0, netlink.FAMILY_V4)
			if err := pod.AddrDel(eth0, &addrs[0]); err != nil {
				t.Fatal(err)
			}
		}, "pod eth0 is missing address 192.0.2."},
		{"extra address", func(t *testing.T, pod *netlink.Handle, _ string) {
			addr, _ := netlink.ParseAddr("203.0.113.9/32")
			if err := pod.AddrAdd(mustLink(t, pod, "eth0"), addr); err != nil {
				t.Fatal(err)
			}
		}, "pod eth0 has extra address 203.0.113.9"},
		{"default route removed", func(t *testing.T, pod *netlink.Handle, _ string) {
			eth0 := mustLink(t, pod, "eth0")
			routes, _ := pod.RouteList(eth0, netlink.FAMILY_V6)
			for _, r := range routes {
				if r.Gw != nil {
					if err := pod.RouteDel(&r); err != nil {
						t.Fatal(err)
					}
				}
			}
		}, `pod is missing route "default via fe80::1 dev eth0"`},
		{"wrong MTU", func(t *testing.T, pod *netlink.Handle, _ string) {
			if err := pod.LinkSetMTU(mustLink(t, pod, "eth0"), 1300); err != nil {
				t.Fatal(err)
			}
		}, "pod interface eth0 has MTU 1300, want 1400"},
		{"host veth removed", func(t *testing.T, _ *netlink.Handle, hostVeth string) {
			if err := node.LinkDel(mustLink(t, node, hostVeth)); err != nil {
				t.Fatal(err)
			}
		}, "host veth tw"},
		{"pod interface renamed", func(t *testing.T, pod *netlink.Handle, _ string) {
			eth0 := mustLink(t, pod, "eth0")
			_ = pod.LinkSetDown(eth0)
			if err := pod.LinkSetName(eth0, "eth9"); err != nil {
				t.Fatal(err)
			}
		}, "pod interface eth0 is missing"},
		{"node route removed", func(t *testing.T, _ *netlink.Handle, hostVeth string) {
			routes, _ := node.RouteList(mustLink(t, node, hostVeth), netlink.FAMILY_V4)
			for _, r := range routes {
				if err := node.RouteDel(&r); err != nil {
					t.Fatal(err)
				}
			}
		}, "node is missing route"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := cnitest.NewNetns(t, "pod")
			req := request(fmt.Sprintf("drift%d", i), pod)
			res := f.add(req)
			req.PrevResult = mustJSON(t, res)
			if status, body := f.call(cniproto.PathCheck, req); status != http.StatusOK {
				t.Fatalf("CHECK before breaking anything: %d %s", status, body)
			}
			tc.breakIt(t, handleIn(t, pod), cniserver.HostVethName(handleOf(req)))
			status, body := f.call(cniproto.PathCheck, req)
			expectCNIError(t, status, body, types.ErrInternal, tc.want)
		})
	}

	t.Run("prevResult disagrees with IPAM", func(t *testing.T) {
		pod := cnitest.NewNetns(t, "pod")
		req := request("prevdiff", pod)
		res := f.add(req)
		res.IPs = res.IPs[:1]
		req.PrevResult = mustJSON(t, res)
		status, body := f.call(cniproto.PathCheck, req)
		expectCNIError(t, status, body, types.ErrInternal, "prevResult lists addresses")
	})
}

func TestManyConcurrentAdds(t *testing.T) {
	f := newFixture(t, nil)
	const pods = 60
	netnss := make([]ns.NetNS, pods)
	for i := range netnss {
		netnss[i] = cnitest.NewNetns(t, fmt.Sprintf("p%d", i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, pods)
	start := time.Now()
	for i := range pods {
		wg.Go(func() {
			if status, body := f.call(cniproto.PathAdd, request(fmt.Sprintf("many%d", i), netnss[i])); status != http.StatusOK {
				errs <- fmt.Errorf("ADD %d: %d %s", i, status, body)
			}
		})
	}
	wg.Wait()
	t.Logf("%d concurrent ADDs took %s", pods, time.Since(start))
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	node := handleIn(t, f.node)
	seen := map[string]bool{}
	for i := range pods {
		req := request(fmt.Sprintf("many%d", i), netnss[i])
		if !linkExists(node, cniserver.HostVethName(handleOf(req))) {
			t.Errorf("pod %d has no host veth", i)
		}
		for _, ip := range allocatedIPs(f.alloc, handleOf(req)) {
			if seen[ip.String()] {
				t.Errorf("address %s given twice", ip)
			}
			seen[ip.String()] = true
		}
		if status, body := f.call(cniproto.PathCheck, req); status != http.StatusOK {
			t.Errorf("CHECK pod %d: %d %s", i, status, body)
		}
	}
	for i := range pods {
		wg.Go(func() {
			if status, body := f.call(cniproto.PathDel, request(fmt.Sprintf("many%d", i), netnss[i])); status != http.StatusOK {
				t.Errorf("DEL %d: %d %s", i, status, body)
			}
		})
	}
	wg.Wait()
	if n := len(f.alloc.Allocations()); n != 0 {
		t.Errorf("%d addresses still allocated after deleting every pod", n)
	}
}

func TestGCReleasesStaleAttachments(t *testing.T) {
	f := newFixture(t, nil)
	node := handleIn(t, f.node)
	var reqs []cniproto.Request
	for i := range 3 {
		req := request(fmt.Sprintf("gc%d", i), cnitest.NewNetns(t, "pod"))
		f.add(req)
		reqs = append(reqs, req)
	}
	// A host veth named like ours that no allocation explains, and a foreign veth to leave alone.
	for _, name := range []string{"tw0123456789a", "keepme0"} {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		if err := node.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: name + "p"}); err != nil {
			t.Fatal(err)
		}
	}

	valid := cniproto.GCRequest{ValidAttachments: []types.GCAttachment{{ContainerID: reqs[0].ContainerID, IfName: "eth0"}}}
	status, body := f.call(cniproto.PathGC, valid)
	if status != http.StatusOK {
		t.Fatalf("GC: %d %s", status, body)
	}
	var resp cniproto.GCResponse
	if err := jsonUnmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.Released) != 2 {
		t.Errorf("GC released %v, want gc1 and gc2", resp.Released)
	}
	if !f.alloc.Holds(handleOf(reqs[0])) || !linkExists(node, cniserver.HostVethName(handleOf(reqs[0]))) {
		t.Error("GC removed the valid attachment")
	}
	for _, req := range reqs[1:] {
		if f.alloc.Holds(handleOf(req)) || linkExists(node, cniserver.HostVethName(handleOf(req))) {
			t.Errorf("GC kept stale attachment %s", req.ContainerID)
		}
	}
	if linkExists(node, "tw0123456789a") {
		t.Error("GC kept a leftover host veth")
	}
	if !linkExists(node, "keepme0") {
		t.Error("GC removed a veth that is not twill's")
	}
}

func TestStatusAndNotReady(t *testing.T) {
	var mu sync.Mutex
	notReady := errors.New("waiting for the node's pod CIDR")
	readyErr := notReady
	f := newFixture(t, func(c *cniserver.Config) {
		c.Ready = func() error { mu.Lock(); defer mu.Unlock(); return readyErr }
	})
	status, body := f.call(cniproto.PathStatus, struct{}{})
	expectCNIError(t, status, body, types.ErrPluginNotAvailable, "waiting for the node's pod CIDR")

	pod := cnitest.NewNetns(t, "pod")
	status, body = f.call(cniproto.PathAdd, request("early", pod))
	expectCNIError(t, status, body, types.ErrTryAgainLater, "not ready")
	if len(f.alloc.Allocations()) != 0 {
		t.Error("an ADD refused as not ready still allocated addresses")
	}

	mu.Lock()
	readyErr = nil
	mu.Unlock()
	if status, body := f.call(cniproto.PathStatus, struct{}{}); status != http.StatusOK {
		t.Errorf("STATUS when ready: %d %s", status, body)
	}
	f.add(request("early", pod))
}

func TestSpooledDeletesCompletedAtStart(t *testing.T) {
	testutil.RequireRoot(t)
	node := cnitest.NewNetns(t, "node")
	pod := cnitest.NewNetns(t, "pod")
	alloc := cnitest.NewFakeAllocator(testPoolV4, testPoolV6)
	dir := filepath.Join(t.TempDir(), "pending")
	socket := filepath.Join(cnitest.ShortTempDir(t), "cni.sock")

	// First life of the agent: a pod is added, then the agent goes away.
	cfg := cniserver.Config{SocketPath: socket, PendingDeleteDir: dir, HostNetns: node.Path(), MTU: testMTU}
	first := &fixture{t: t, node: node, alloc: alloc, cfg: cfg}
	_, _, stop := cnitest.StartServer(t, cfg, alloc)
	req := request("spooled", pod)
	first.add(req)
	stop()
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after Run returned: %v", err)
	}

	// While it is away the plugin spools the DEL (as twill-cni does).
	if err := spool.Write(dir, req); err != nil {
		t.Fatal(err)
	}
	// A stale socket file from a crash must not stop the next start.
	if l, err := net.Listen("unix", socket); err == nil {
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}

	cnitest.StartServer(t, cfg, alloc)
	info, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket permissions %o, want 600", perm)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alloc.Holds(handleOf(req)) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alloc.Holds(handleOf(req)) {
		t.Fatal("spooled DEL not completed: addresses still allocated")
	}
	if entries, _ := spool.List(dir); len(entries) != 0 {
		t.Errorf("spool still holds %d entries", len(entries))
	}
	if linkExists(handleIn(t, node), cniserver.HostVethName(handleOf(req))) {
		t.Error("spooled DEL did not remove the host veth")
	}
}

func TestSecondServerOnLiveSocketRefused(t *testing.T) {
	f := newFixture(t, nil)
	srv := cniserver.New(f.cfg, f.alloc, nil)
	err := srv.Run(t.Context())
	if err == nil {
		t.Fatal("a second server took over a live socket")
	}
	if status, _ := f.call(cniproto.PathStatus, struct{}{}); status != http.StatusOK {
		t.Error("the first server stopped answering")
	}
}

func TestAddAfterSpooledDelAndRetriedAdd(t *testing.T) {
	f := newFixture(t, nil)
	pod := cnitest.NewNetns(t, "pod")
	req := request("again", pod)
	first := f.add(req)

	// The runtime retries the ADD (it timed out waiting for the first answer): same addresses,
	// one working endpoint.
	second := f.add(req)
	if first.IPs[0].Address.String() != second.IPs[0].Address.String() {
		t.Errorf("retried ADD changed the address: %s then %s", first.IPs[0].Address.String(), second.IPs[0].Address.String())
	}
	if status, body := f.call(cniproto.PathCheck, req); status != http.StatusOK {
		t.Errorf("CHECK after a retried ADD: %d %s", status, body)
	}

	// A DEL spooled while the agent was unreachable, then a new ADD of the same attachment:
	// the old DEL is done first, and the new endpoint survives it.
	if err := spool.Write(f.cfg.PendingDeleteDir, req); err != nil {
		t.Fatal(err)
	}
	f.add(req)
	if entries, _ := spool.List(f.cfg.PendingDeleteDir); len(entries) != 0 {
		t.Errorf("the spooled DEL is still pending: %+v", entries)
	}
	if f.alloc.ReleaseCount(handleOf(req)) != 1 || !f.alloc.Holds(handleOf(req)) {
		t.Errorf("want the old attachment released once and the new one holding addresses; releases %d", f.alloc.ReleaseCount(handleOf(req)))
	}
	if status, body := f.call(cniproto.PathCheck, req); status != http.StatusOK {
		t.Errorf("CHECK of the new endpoint: %d %s", status, body)
	}
}

// A new sandbox of the same pod means the old one is gone (the kubelet tears it down first), so
// its addresses and host veth are released even though its DEL never came.
func TestAddReleasesSupersededSandboxOfSamePod(t *testing.T) {
	f := newFixture(t, nil)
	node := handleIn(t, f.node)
	old := request("sandbox1", cnitest.NewNetns(t, "pod"))
	old.PodUID = "uid-1"
	f.add(old)
	other := request("other", cnitest.NewNetns(t, "pod"))
	other.PodUID = "uid-2"
	f.add(other)

	renewed := request("sandbox2", cnitest.NewNetns(t, "pod"))
	renewed.PodName, renewed.PodUID = old.PodName, old.PodUID
	f.add(renewed)

	if f.alloc.Holds(handleOf(old)) || linkExists(node, cniserver.HostVethName(handleOf(old))) {
		t.Error("the superseded sandbox kept its addresses or host veth")
	}
	for _, keep := range []cniproto.Request{renewed, other} {
		if !f.alloc.Holds(handleOf(keep)) || !linkExists(node, cniserver.HostVethName(handleOf(keep))) {
			t.Errorf("%s lost its addresses or host veth", keep.ContainerID)
		}
	}
}
