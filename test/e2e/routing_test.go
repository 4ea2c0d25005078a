package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/underlay"
)

const echoPort = 7000

// TestRoutingModes runs every routing mode on the same three nodes (n1 and n2 share a subnet,
// n3 is in another): pods on every node reach each other, the nodes reach the pods and back,
// and the largest packet the pod MTU allows crosses nodes with don't-fragment set.
func TestRoutingModes(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t.Cleanup(func() { restartAgents(t, context.Background(), c) }) // back to the default mode

	for _, tc := range []struct {
		mode string
		mtu  int // the underlay's veths have 1500
		// via is the device n1 routes each peer's IPv4 pods through ("" = no route).
		via map[string]string
		// ipv6Across: IPv6 pods reach other nodes (over this IPv4 underlay that takes the tunnel).
		ipv6Across bool
	}{
		{mode: "vxlan", mtu: 1450, via: map[string]string{"n2": datapath.VXLANDevice, "n3": datapath.VXLANDevice}, ipv6Across: true},
		// Native routing needs L2 adjacency: n3, behind a router, is out of reach.
		{mode: "native", mtu: 1500, via: map[string]string{"n2": "eth0", "n3": ""}},
		{mode: "auto", mtu: 1450, via: map[string]string{"n2": "eth0", "n3": datapath.VXLANDevice}, ipv6Across: true},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			restartAgents(t, ctx, c, "--routing", tc.mode)
			reachable := func(a, b *cluster.Node) bool {
				return tc.mode != "native" || a.Prefix == b.Prefix
			}
			var pods []*cluster.Pod
			for _, n := range c.Nodes() {
				p, err := c.AddPod(ctx, n, fmt.Sprintf("route-%s-%s", tc.mode, n.Name))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = c.Remove(context.Background(), p) })
				serveEcho(t, p.Sandbox, netip.Addr{})
				pods = append(pods, p)
			}

			for _, to := range pods[1:] {
				checkRouteDevice(t, c.Node("n1"), to.IPv4(), tc.via[to.Node.Name])
			}
			for _, from := range pods {
				if got := linkMTU(t, from.Sandbox, "eth0"); got != tc.mtu {
					t.Errorf("%s: pod MTU %d, want %d", from.Name, got, tc.mtu)
				}
				for _, to := range pods {
					if from == to || !reachable(from.Node, to.Node) {
						continue
					}
					eventuallyEcho(t, ctx, from.Sandbox, to.IPv4(), from.Name+" -> "+to.Name)
					if tc.ipv6Across || from.Node == to.Node {
						eventuallyEcho(t, ctx, from.Sandbox, to.IPv6(), from.Name+" -> "+to.Name+" (IPv6)")
					}
				}
			}

			// Nodes reach pods on other nodes, and pods reach other nodes.
			n1, n2 := c.Node("n1"), c.Node("n2")
			serveEcho(t, n2.Node, n2.IP)
			eventuallyEcho(t, ctx, n2.Node, pods[0].IPv4(), "node n2 -> pod on n1")
			eventuallyEcho(t, ctx, pods[0].Sandbox, n2.IP, "pod on n1 -> node n2")
			if reachable(n1, c.Node("n3")) {
				eventuallyEcho(t, ctx, c.Node("n3").Node, pods[0].IPv4(), "node n3 -> pod on n1")
			}

			// The largest packet the pod MTU allows arrives with don't-fragment set; one byte
			// more does not leave the pod.
			for _, to := range pods[1:] {
				if !reachable(n1, to.Node) {
					continue
				}
				payload := tc.mtu - 28 // IPv4 and ICMP headers
				if err := ping(ctx, pods[0], to.IPv4(), payload); err != nil {
					t.Errorf("%s -> %s: largest packet (%d bytes) with don't-fragment: %v", pods[0].Name, to.Name, tc.mtu, err)
				}
				if err := ping(ctx, pods[0], to.IPv4(), payload+1); err == nil {
					t.Errorf("%s -> %s: a %d-byte packet with don't-fragment passed a %d MTU", pods[0].Name, to.Name, tc.mtu+1, tc.mtu)
				}
			}
			if tc.ipv6Across {
				payload := tc.mtu - 48 // IPv6 and ICMPv6 headers
				if err := ping(ctx, pods[0], pods[2].IPv6(), payload); err != nil {
					t.Errorf("largest IPv6 packet (%d bytes) n1 -> n3: %v", tc.mtu, err)
				}
			}
		})
	}
}

// restartAgents restarts every node's agent with the given extra flags and waits for them.
func restartAgents(t *testing.T, ctx context.Context, c *cluster.Cluster, args ...string) {
	t.Helper()
	for _, n := range c.Nodes() {
		if err := n.RestartAgent(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}
}

// serveEcho echoes what a TCP client sends on echoPort, from inside ns, until the test ends:
// on ip, or on every IPv4 and IPv6 address when ip is invalid. (Two listeners: whether Go's
// ":port" is dual-stack depends on what it probed in whichever namespace it first ran in.)
func serveEcho(t *testing.T, ns *underlay.Node, ip netip.Addr) {
	t.Helper()
	if ip.IsValid() {
		listenEcho(t, ns, "tcp", netip.AddrPortFrom(ip, echoPort).String())
		return
	}
	listenEcho(t, ns, "tcp4", "0.0.0.0:"+strconv.Itoa(echoPort))
	listenEcho(t, ns, "tcp6", "[::]:"+strconv.Itoa(echoPort))
}

func listenEcho(t *testing.T, ns *underlay.Node, network, addr string) {
	t.Helper()
	listenAndServe(t, ns, network, addr, func(conn net.Conn) {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.Copy(conn, io.LimitReader(conn, 64))
	})
}

// listenAndServe accepts connections on addr in ns until the test ends, each served by handle
// (which need not close it).
func listenAndServe(t *testing.T, ns *underlay.Node, network, addr string, handle func(net.Conn)) {
	t.Helper()
	l, err := ns.Listen(network, addr)
	if err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				handle(conn)
			}()
		}
	}()
}

// eventuallyEcho connects from ns to ip's echo server and checks the answer. Routes to a block
// claimed a moment ago may take a moment to reach every node, so it retries for a few seconds.
func eventuallyEcho(t *testing.T, ctx context.Context, from *underlay.Node, ip netip.Addr, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = echo(ctx, from, ip); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("%s (%s): %v", what, ip, err)
}

func echo(ctx context.Context, from *underlay.Node, ip netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := from.DialContext(ctx, "tcp", netip.AddrPortFrom(ip, echoPort).String())
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	const msg = "twill\n"
	if _, err := io.WriteString(conn, msg); err != nil {
		return err
	}
	conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo answered %q", got)
	}
	return nil
}

// ping sends one ICMP echo with don't-fragment and the given payload size from the pod.
func ping(ctx context.Context, from *cluster.Pod, to netip.Addr, payload int) error {
	out, err := from.Exec(ctx, "ping", "-M", "do", "-c", "1", "-W", "2", "-s", strconv.Itoa(payload), to.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func linkMTU(t *testing.T, ns *underlay.Node, name string) int {
	t.Helper()
	var mtu int
	err := ns.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err == nil {
			mtu = l.Attrs().MTU
		}
		return err
	})
	if err != nil {
		t.Fatalf("reading %s's MTU in %s: %v", name, ns.Name, err)
	}
	return mtu
}

// checkRouteDevice checks which device n routes ip through ("" = no route at all). Routes to a
// block claimed a moment ago may take a moment to arrive, so it waits a few seconds.
func checkRouteDevice(t *testing.T, n *cluster.Node, ip netip.Addr, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var got string
	for {
		got = routeDevice(t, n, ip)
		if got == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != want {
		t.Errorf("%s routes %s via device %q, want %q", n.Name, ip, got, want)
	}
}

func routeDevice(t *testing.T, n *cluster.Node, ip netip.Addr) string {
	var dev string
	err := n.Do(func() error {
		routes, err := netlink.RouteGet(ip.AsSlice())
		if err != nil || len(routes) == 0 || routes[0].Type == unix.RTN_BLACKHOLE {
			return nil // unreachable
		}
		l, err := netlink.LinkByIndex(routes[0].LinkIndex)
		if err != nil {
			return err
		}
		dev = l.Attrs().Name
		return nil
	})
	if err != nil {
		t.Fatalf("route lookup in %s: %v", n.Name, err)
	}
	return dev
}

// A node that has no pods (so no blocks, and no peer has a route to it) still reaches pods on
// other nodes through the tunnel: the receiving node must have its VXLAN device although none of
// its own routes use it.
func TestNodeWithoutPodsReachesPodsAcrossSubnets(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := c.AddPod(ctx, c.Node("n1"), "reached-from-empty-node")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Remove(context.Background(), p) })
	serveEcho(t, p.Sandbox, netip.Addr{})
	empty, err := c.AddNode(ctx, cluster.NodeSpec{Name: "n6", Subnet: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.RemoveNode(context.Background(), "n6") })
	if err := empty.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	eventuallyEcho(t, ctx, empty.Node, p.IPv4(), "node n6 (no pods, other subnet) -> pod on n1")
}
