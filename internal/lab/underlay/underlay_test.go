package underlay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/twill-net/twill/internal/testutil"
)

// helperEnv makes the test binary act as a small program run inside a lab node (see
// TestHelperProcess): "serve ADDR" echoes TCP, "spawn NETNS" starts a sleep there and exits.
const helperEnv = "TWILL_UNDERLAY_TEST_HELPER"

// The main goroutine keeps the main thread: the runtime never ends the main thread (it parks it
// instead), so TestStartCommandSurvivesTheStartingThread must not land its goroutine there.
func init() { runtime.LockOSThread() }

var (
	subnetA = netip.MustParsePrefix("10.250.1.0/24")
	subnetB = netip.MustParsePrefix("10.250.2.0/24")
)

// newTestNetwork builds an underlay named after the test process, so leftovers of a crashed run
// never collide with this one, and removes it when the test ends.
func newTestNetwork(t *testing.T, subnets ...netip.Prefix) *Network {
	t.Helper()
	n, err := New(fmt.Sprintf("twt-ul%d", os.Getpid()), subnets...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("closing underlay: %v", err)
		}
	})
	return n
}

func addNode(t *testing.T, n *Network, name string, subnet int) *Node {
	t.Helper()
	node, err := n.AddNode(name, subnet)
	if err != nil {
		t.Fatal(err)
	}
	return node
}

func TestNodesReachEachOtherWithinAndAcrossSubnets(t *testing.T) {
	testutil.RequireRoot(t)
	n := newTestNetwork(t, subnetA, subnetB)
	a1, a2, b1 := addNode(t, n, "a1", 0), addNode(t, n, "a2", 0), addNode(t, n, "b1", 1)

	want := map[*Node]string{a1: "10.250.1.1", a2: "10.250.1.2", b1: "10.250.2.1"}
	for node, ip := range want {
		if node.IP.String() != ip || node.Link != "eth0" {
			t.Errorf("node %s: IP %s link %s, want %s on eth0", node.Name, node.IP, node.Link, ip)
		}
	}
	if b1.Gateway.String() != "10.250.2.254" {
		t.Errorf("gateway of b1 = %s, want 10.250.2.254", b1.Gateway)
	}

	for _, pair := range [][2]*Node{{a1, a2}, {a2, a1}, {a1, b1}, {b1, a2}} {
		if err := ping(pair[0], pair[1].IP); err != nil {
			t.Errorf("ping %s -> %s: %v", pair[0].Name, pair[1].Name, err)
		}
	}

	// TCP: a listener in one node, a connection from another, same subnet and across.
	l, err := b1.Listen("tcp", netip.AddrPortFrom(b1.IP, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	for _, from := range []*Node{a1, a2} {
		checkEcho(t, from, l.Addr().String())
	}
	l2, err := a1.Listen("tcp", netip.AddrPortFrom(a1.IP, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	go echo(l2)
	checkEcho(t, a2, l2.Addr().String())
}

func TestNothingLeavesTheLab(t *testing.T) {
	testutil.RequireRoot(t)
	n := newTestNetwork(t, subnetA, subnetB)
	a1 := addNode(t, n, "a1", 0)
	// No default route: the kernel refuses to send to an address outside the lab, before any
	// packet is built (TEST-NET-1, which nobody owns anyway).
	_, err := a1.DialContext(t.Context(), "tcp", "192.0.2.1:80")
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("dial outside the lab from a node: got %v, want network unreachable", err)
	}
}

func TestDialContextReachesAServerInANode(t *testing.T) {
	testutil.RequireRoot(t)
	n := newTestNetwork(t, subnetA, subnetB)
	addNode(t, n, "a1", 0)
	b1 := addNode(t, n, "b1", 1)

	// The server is a separate process started in b1 by Command; the client is this test, in the
	// root namespace, which has no route to the lab.
	addr := netip.AddrPortFrom(b1.IP, 7001).String()
	cmd := b1.Command(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"=serve "+addr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("helper server did not start: %q, %v", line, err)
	}
	checkEcho(t, b1, addr)
}

func TestCloseLeavesNothing(t *testing.T) {
	testutil.RequireRoot(t)
	rootLinks := rootLinkNames(t)
	ownNetns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(fmt.Sprintf("twt-ulc%d", os.Getpid()), subnetA, subnetB)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for i, name := range []string{"a1", "a2", "b1"} {
		addNode(t, n, name, i/2)
	}
	if got := labNamespaces(t, n.Name+"-"); len(got) != 4 {
		t.Errorf("namespaces of the lab: %v, want the router and 3 nodes", got)
	}
	if got := rootLinkNames(t); !slices.Equal(got, rootLinks) {
		t.Errorf("links in the root namespace changed while the lab is up: before %v, now %v", rootLinks, got)
	}
	// Creating namespaces moves threads around; none, the main thread included, may stay behind
	// (it would keep a lab namespace alive after Close).
	if got, _ := os.Readlink("/proc/self/ns/net"); got != ownNetns {
		t.Errorf("this process's main thread is in %s, was in %s", got, ownNetns)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if got := labNamespaces(t, n.Name+"-"); len(got) != 0 {
		t.Errorf("namespaces left after Close: %v", got)
	}
	if got := rootLinkNames(t); !slices.Equal(got, rootLinks) {
		t.Errorf("links in the root namespace after Close: %v, want %v", got, rootLinks)
	}
	if _, err := n.AddNode("late", 0); err == nil {
		t.Error("AddNode on a closed network succeeded")
	}
}

func TestCleanupStaleRemovesLeftovers(t *testing.T) {
	testutil.RequireRoot(t)
	name := fmt.Sprintf("twt-uls%d", os.Getpid())
	n, err := New(name, subnetA)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	addNode(t, n, "a1", 0)
	// Pretend the process died: forget n, clean up by name.
	if err := CleanupStale(name + "-"); err != nil {
		t.Fatal(err)
	}
	if got := labNamespaces(t, name+"-"); len(got) != 0 {
		t.Errorf("namespaces left after CleanupStale: %v", got)
	}
	again, err := New(name, subnetA)
	if err != nil {
		t.Fatalf("recreating the underlay after CleanupStale: %v", err)
	}
	if err := again.Close(); err != nil {
		t.Error(err)
	}
	if err := CleanupStale(""); err == nil {
		t.Error("CleanupStale accepted an empty prefix")
	}
}

func TestCommandDiesWithItsParent(t *testing.T) {
	testutil.RequireRoot(t)
	n := newTestNetwork(t, subnetA)
	a1 := addNode(t, n, "a1", 0)

	// The helper starts "sleep" in a1 through Command, prints its pid and exits at once.
	helper := a1.Command(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$")
	helper.Env = append(os.Environ(), helperEnv+"=spawn "+a1.Netns)
	out, err := helper.Output()
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("sleep (pid %d) started by Command outlived its parent", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A goroutine that locks its OS thread and returns ends that thread. A process it started with
// cmd.Start gets its parent-death signal then (this shows the test really ended the thread); one
// started with StartCommand must live on.
func TestStartCommandSurvivesTheStartingThread(t *testing.T) {
	testutil.RequireRoot(t)
	n := newTestNetwork(t, subnetA)
	a1 := addNode(t, n, "a1", 0)

	plain := a1.Command(t.Context(), "sleep", "300")
	launched := a1.Command(t.Context(), "sleep", "300")
	started := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		started <- errors.Join(plain.Start(), StartCommand(launched))
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = launched.Process.Kill()
		_ = launched.Wait()
	})

	exited := make(chan error, 1)
	go func() { exited <- plain.Wait() }()
	select {
	case err := <-exited:
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Errorf("sleep started by cmd.Start on the ended thread: %v, want killed", err)
		}
	case <-time.After(5 * time.Second):
		_ = plain.Process.Kill()
		t.Fatal("the starting thread did not end, the test proves nothing")
	}
	if !processAlive(launched.Process.Pid) {
		t.Error("sleep started by StartCommand died with the thread that asked for it")
	}
}

// TestHelperProcess is not a test: it is the program the tests above run inside lab nodes.
func TestHelperProcess(t *testing.T) {
	mode, arg, ok := strings.Cut(os.Getenv(helperEnv), " ")
	if !ok {
		return
	}
	switch mode {
	case "serve":
		l, err := net.Listen("tcp", arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("ready")
		echo(l)
	case "spawn":
		node := &Node{Netns: arg}
		cmd := node.Command(context.Background(), "sleep", "300")
		if err := StartCommand(cmd); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(cmd.Process.Pid)
	}
	os.Exit(0)
}

func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
	}
}

func checkEcho(t *testing.T, from *Node, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := from.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Errorf("dial %s from %s: %v", addr, from.Name, err)
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "hello from " + from.Name
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Errorf("write to %s from %s: %v", addr, from.Name, err)
		return
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Errorf("echo from %s via %s: %q, %v", addr, from.Name, buf, err)
	}
}

// ping sends one ICMP echo request from inside node to dst and waits for the reply.
func ping(from *Node, dst netip.Addr) error {
	return from.Do(func() error {
		c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer c.Close()
		id := os.Getpid() & 0xffff
		req := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("twill")}}
		b, err := req.Marshal(nil)
		if err != nil {
			return err
		}
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				return err
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && m.Type == ipv4.ICMPTypeEchoReply && e.ID == id && peer.String() == dst.String() {
				return nil
			}
		}
	})
}

func labNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	entries, err := os.ReadDir(RunDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names
}

func rootLinkNames(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

// processAlive reports whether pid runs; a zombie (killed, not yet reaped) counts as dead.
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}
