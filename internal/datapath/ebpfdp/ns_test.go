package ebpfdp

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The tests' world: network namespaces named twt-fp-<random>-<role>, made and removed by each
// test; nothing in them routes anywhere but to each other.

type testNS struct {
	t    *testing.T
	name string
}

func requireTools(t *testing.T) {
	t.Helper()
	requireRoot(t)
	for _, tool := range []string{"ip", "nft", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (iproute2, nftables, conntrack): %v", tool, err)
		}
	}
}

// newWorld returns a function making namespaces of one test, all removed when it ends.
func newWorld(t *testing.T) func(role string) *testNS {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	prefix := "twt-fp-" + hex.EncodeToString(b) + "-"
	return func(role string) *testNS {
		t.Helper()
		n := &testNS{t: t, name: prefix + role}
		if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", n.name, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
			}
		})
		n.sh("ip link set lo up")
		return n
	}
}

// sh runs a shell script in the namespace and returns its output; a failure fails the test.
func (n *testNS) sh(script string) string {
	n.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", n.name, "sh", "-ec", script).CombinedOutput()
	if err != nil {
		n.t.Fatalf("in %s: %s: %v: %s", n.name, script, err, out)
	}
	return string(out)
}

// do runs fn on a thread in the namespace; sockets it opens stay in it.
func (n *testNS) do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	h, err := netns.GetFromName(n.name)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return err
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("cannot return to the original namespace: %v", err))
		}
	}()
	return fn()
}

func (n *testNS) ifindex(name string) int {
	n.t.Helper()
	var idx int
	err := n.do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		idx = l.Attrs().Index
		return nil
	})
	if err != nil {
		n.t.Fatalf("finding %s in %s: %v", name, n.name, err)
	}
	return idx
}

// counter reads a named nftables counter's packets.
func (n *testNS) counter(table, name string) uint64 {
	n.t.Helper()
	out := n.sh("nft list counter " + table + " " + name)
	m := regexp.MustCompile(`packets (\d+)`).FindStringSubmatch(out)
	if m == nil {
		n.t.Fatalf("no packet count in %q", out)
	}
	v, _ := strconv.ParseUint(m[1], 10, 64)
	return v
}

// policyTable is what twill's policy table does with established and invalid traffic, with
// counters: established and related packets accepted, invalid ones dropped, the rest (new
// connections) counted and accepted unless a rule added later drops them.
const policyTable = `table inet twt_policy {
	counter established {}
	counter invalid {}
	counter new {}
	counter denied {}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related counter name established accept
		ct state invalid counter name invalid drop
		counter name new
	}
}`

// makeNode readies ns as a node: forwarding on, the policy-like table, liberal TCP tracking.
func makeNode(n *testNS) {
	n.t.Helper()
	n.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
	n.sh("nft -f - <<'EOF'\n" + policyTable + "\nEOF")
	if err := n.do(PrepareConntrack); err != nil {
		n.t.Fatal(err)
	}
}

// addPod wires pod to node with a veth pair: hostIf on the node (gw/24), eth0 in the pod
// (addr/24, default route via gw).
func addPod(node, pod *testNS, hostIf, gw, addr string) {
	node.t.Helper()
	node.sh(fmt.Sprintf("ip link add %s mtu 1400 type veth peer name eth0 netns %s", hostIf, pod.name))
	node.sh(fmt.Sprintf("ip addr add %s/24 dev %s && ip link set %s up", gw, hostIf, hostIf))
	pod.sh(fmt.Sprintf("ip link set eth0 mtu 1400 && ip addr add %s/24 dev eth0 && ip link set eth0 up && ip route add default via %s", addr, gw))
}

// addPodIPv6 gives a pod added by addPod an IPv6 address and route too (prefix::1 on the
// node, prefix::2 in the pod, /64).
func addPodIPv6(node, pod *testNS, hostIf, prefix string) {
	node.t.Helper()
	node.sh(fmt.Sprintf("ip -6 addr add %s::1/64 dev %s nodad", prefix, hostIf))
	pod.sh(fmt.Sprintf("ip -6 addr add %s::2/64 dev eth0 nodad && ip -6 route add default via %s::1", prefix, prefix))
}

// loadOn loads a fast path for node and attaches it to its links (pod says which are pods'),
// and on cleanup closes it and checks that nothing stays attached.
func loadOn(t *testing.T, node *testNS, links map[string]bool) *FastPath {
	t.Helper()
	f, err := Load(testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	idx := map[string]int{}
	for name, pod := range links {
		idx[name] = node.ifindex(name)
		if err := node.do(func() error { return f.Attach(idx[name], pod) }); err != nil {
			f.Close()
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("closing the fast path: %v", err)
		}
		for name, i := range idx {
			var res *link.QueryResult
			err := node.do(func() (err error) {
				res, err = link.QueryPrograms(link.QueryOptions{Target: i, Attach: ebpf.AttachTCXIngress})
				return err
			})
			if err != nil {
				t.Errorf("querying %s's tcx programs: %v", name, err)
			} else if len(res.Programs) != 0 {
				t.Errorf("%s in %s still has %d tcx programs after Close", name, node.name, len(res.Programs))
			}
		}
	})
	return f
}

// listen starts a TCP server in ns on addr whose every connection is handled by serve.
func listen(t *testing.T, ns *testNS, addr string, serve func(net.Conn)) {
	t.Helper()
	var l net.Listener
	if err := ns.do(func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				serve(c)
			}()
		}
	}()
}

func dial(t *testing.T, ns *testNS, addr string) *net.TCPConn {
	t.Helper()
	var c net.Conn
	err := ns.do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("connecting from %s to %s: %v", ns.name, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	return c.(*net.TCPConn)
}

func ctEntries(node *testNS, port int) string {
	return strings.TrimSpace(node.sh(fmt.Sprintf("conntrack -L -p tcp --dport %d 2>/dev/null || true", port)))
}
