package cni_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/cniserver/cnitest"
	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/testutil"
)

// referencePluginDir is where Debian's containernetworking-plugins puts the reference plugins.
const referencePluginDir = "/usr/lib/cni"

// chainDir is a CNI_PATH holding twill and symlinks to the reference plugins we chain after it.
func chainDir(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"portmap", "bandwidth", "tuning"} {
		if _, err := os.Stat(filepath.Join(referencePluginDir, p)); err != nil {
			t.Fatalf("reference plugin %s missing (apt-get install containernetworking-plugins): %v", p, err)
		}
	}
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(pluginDir(t), "twill-cni"), filepath.Join(dir, "twill-cni")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"portmap", "bandwidth", "tuning"} {
		if err := os.Symlink(filepath.Join(referencePluginDir, p), filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// conflist is twill followed by portmap, bandwidth and tuning. Debian's reference plugins
// (1.1.x) speak CNI up to 1.0.0 and libcni hands every plugin the list's version, so a 1.1.0
// list can hold twill alone.
func conflist(version, socket, pending string) string {
	twill := fmt.Sprintf(`{"type":"twill-cni","agentSocket":%q,"pendingDeleteDir":%q,"agentTimeout":"5s"}`, socket, pending)
	plugins := []string{twill}
	if version != "1.1.0" {
		plugins = append(plugins,
			`{"type":"portmap","capabilities":{"portMappings":true}}`,
			`{"type":"bandwidth","ingressRate":100000000,"ingressBurst":1000000,"egressRate":100000000,"egressBurst":1000000}`,
			`{"type":"tuning","sysctl":{"net.core.somaxconn":"777"}}`)
	}
	return fmt.Sprintf(`{"cniVersion":%q,"name":"twill-chain","plugins":[%s]}`, version, strings.Join(plugins, ","))
}

// inNode runs f on a thread inside the node netns. The plugins libcni execs inherit it, so
// portmap, bandwidth and tuning change the node namespace the test made, never the machine's.
func inNode(t *testing.T, node ns.NetNS, f func() error) error {
	t.Helper()
	return node.Do(func(ns.NetNS) error { return f() })
}

func TestChainThroughLibcni(t *testing.T) {
	testutil.RequireRoot(t)
	path := chainDir(t)
	for _, version := range []string{"1.1.0", "1.0.0", "0.4.0"} {
		t.Run(version, func(t *testing.T) { testChain(t, path, version) })
	}
}

func testChain(t *testing.T, path, version string) {
	node := cnitest.NewNetns(t, "node")
	// Debian's portmap (1.1.x) checks its IPv4 rules in ip6tables too, so its CHECK fails for a
	// dual-stack pod (fixed upstream later); chains with it use IPv4 only.
	v6Pool := ""
	if version == "1.1.0" {
		v6Pool = "2001:db8:1::/64"
	}
	alloc := cnitest.NewFakeAllocator("192.0.2.0/24", v6Pool)
	_, cfg, _ := cnitest.StartServer(t, cniserver.Config{HostNetns: node.Path(), MTU: 1450}, alloc)
	list, err := libcni.NetworkConfFromBytes([]byte(conflist(version, cfg.SocketPath, cfg.PendingDeleteDir)))
	if err != nil {
		t.Fatal(err)
	}
	cniConfig := libcni.NewCNIConfigWithCacheDir([]string{path}, t.TempDir(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	nodeH, err := netlink.NewHandleAt(netns.NsHandle(node.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer nodeH.Close()
	// The node's address, which the port mapping forwards from.
	lo, _ := nodeH.LinkByName("lo")
	if err := nodeH.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	nodeAddr, _ := netlink.ParseAddr("198.51.100.1/32")
	if err := nodeH.AddrAdd(lo, nodeAddr); err != nil {
		t.Fatal(err)
	}

	pod := cnitest.NewNetns(t, "pod")
	rt := &libcni.RuntimeConf{
		ContainerID: "chain" + strings.ReplaceAll(version, ".", ""),
		NetNS:       pod.Path(),
		IfName:      "eth0",
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "web"}, {"K8S_POD_UID", "u1"}},
		CapabilityArgs: map[string]any{
			"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}},
		},
	}
	h := ipam.Handle{ContainerID: rt.ContainerID, IfName: "eth0"}

	if version == "1.1.0" {
		if err := inNode(t, node, func() error { return cniConfig.GetStatusNetworkList(ctx, list) }); err != nil {
			t.Fatalf("STATUS: %v", err)
		}
	}

	var result *types100.Result
	err = inNode(t, node, func() error {
		res, err := cniConfig.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		if res.Version() != version {
			t.Errorf("result version %s, want %s", res.Version(), version)
		}
		result, err = types100.GetResult(res)
		return err
	})
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	want := 1
	if v6Pool != "" {
		want = 2
	}
	if len(result.IPs) != want {
		t.Fatalf("result IPs %v, want %d", result.IPs, want)
	}
	podIP := result.IPs[0].Address.IP
	hostVeth := cniserver.HostVethName(h)

	if version != "1.1.0" {
		// tuning: the sysctl was applied inside the pod, not on the node.
		var somaxconn string
		if err := pod.Do(func(ns.NetNS) error {
			b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
			somaxconn = strings.TrimSpace(string(b))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if somaxconn != "777" {
			t.Errorf("pod net.core.somaxconn = %s, want 777 (tuning)", somaxconn)
		}
		// bandwidth: a token bucket on the host veth.
		link, err := nodeH.LinkByName(hostVeth)
		if err != nil {
			t.Fatal(err)
		}
		qdiscs, _ := nodeH.QdiscList(link)
		hasTbf := false
		for _, q := range qdiscs {
			hasTbf = hasTbf || q.Type() == "tbf"
		}
		if !hasTbf {
			t.Errorf("no tbf qdisc on host veth %s (bandwidth): %v", hostVeth, qdiscs)
		}
		// portmap: a connection to the node's port 8080 reaches the pod's port 80.
		var ln net.Listener
		if err := pod.Do(func(ns.NetNS) error {
			var err error
			ln, err = net.Listen("tcp", net.JoinHostPort(podIP.String(), "80"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, "pod says hi")
				c.Close()
			}
		}()
		var got []byte
		if err := inNode(t, node, func() error {
			c, err := net.DialTimeout("tcp", "198.51.100.1:8080", 3*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			got, err = io.ReadAll(c)
			return err
		}); err != nil {
			t.Errorf("connect to the mapped port 198.51.100.1:8080: %v", err)
		} else if string(got) != "pod says hi" {
			t.Errorf("mapped port answered %q", got)
		}
	}

	// CHECK the list without portmap: Debian's portmap (1.1.x) also looks for its chain in
	// ip6tables, where it never made one, so its CHECK always fails (fixed upstream later).
	// The list keeps its name, so libcni checks against the result it cached at ADD.
	checkList := list
	if version != "1.1.0" {
		checkList, err = libcni.NetworkConfFromBytes([]byte(strings.Replace(conflist(version, cfg.SocketPath, cfg.PendingDeleteDir),
			`{"type":"portmap","capabilities":{"portMappings":true}},`, "", 1)))
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := inNode(t, node, func() error { return cniConfig.CheckNetworkList(ctx, checkList, rt) }); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	// And a CHECK that finds drift reports it: the pod lost its address.
	podH, err := netlink.NewHandleAt(netns.NsHandle(pod.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer podH.Close()
	eth0, _ := podH.LinkByName("eth0")
	lost, _ := netlink.ParseAddr(podIP.String() + "/32")
	if err := podH.AddrDel(eth0, lost); err != nil {
		t.Fatal(err)
	}
	err = inNode(t, node, func() error { return cniConfig.CheckNetworkList(ctx, checkList, rt) })
	if err == nil || !strings.Contains(err.Error(), "missing address "+podIP.String()) {
		t.Errorf("CHECK after removing the pod's address: %v; want it named", err)
	}

	if version == "1.1.0" {
		// GC with our attachment valid releases only a leaked one.
		leaked := ipam.Handle{ContainerID: "leaked", IfName: "eth0"}
		if _, err := alloc.Allocate(ctx, ipam.Owner{Handle: leaked}); err != nil {
			t.Fatal(err)
		}
		args := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: rt.ContainerID, IfName: "eth0"}}}
		if err := inNode(t, node, func() error { return cniConfig.GCNetworkList(ctx, list, args) }); err != nil {
			t.Errorf("GC: %v", err)
		}
		if alloc.Holds(leaked) {
			t.Error("GC kept the leaked allocation")
		}
		if !alloc.Holds(h) {
			t.Error("GC released the valid attachment")
		}
	}

	if err := inNode(t, node, func() error { return cniConfig.DelNetworkList(ctx, list, rt) }); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if alloc.Holds(h) {
		t.Error("DEL did not release the addresses")
	}
	if _, err := nodeH.LinkByName(hostVeth); err == nil {
		t.Error("DEL left the host veth")
	}
	links, _ := nodeH.LinkList()
	for _, l := range links {
		if l.Type() == "ifb" {
			t.Errorf("DEL left bandwidth's ifb device %s", l.Attrs().Name)
		}
	}
	if version != "1.1.0" {
		var rules []byte
		_ = inNode(t, node, func() error {
			rules, _ = exec.Command("iptables", "-t", "nat", "-S").CombinedOutput()
			return nil
		})
		if strings.Contains(string(rules), "8080") {
			t.Errorf("DEL left portmap's rules:\n%s", rules)
		}
	}
	// DEL again, as runtimes do, still succeeds.
	if err := inNode(t, node, func() error { return cniConfig.DelNetworkList(ctx, list, rt) }); err != nil {
		t.Errorf("second DEL: %v", err)
	}
}
