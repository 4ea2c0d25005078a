package underlay

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Node is a lab node: a network namespace with one interface on the underlay.
type Node struct {
	Name string
	// Netns is the path of the node's network namespace (under RunDir).
	Netns string
	// IP is the node's address on Link; Prefix is its underlay subnet.
	IP     netip.Addr
	Prefix netip.Prefix
	// Gateway is the router's address in the node's subnet, the next hop to other subnets.
	Gateway netip.Addr
	// Link is the node's underlay interface, "eth0".
	Link string
}

// Do runs fn on an OS thread locked into the node's network namespace; the caller's thread is
// untouched. fn must not start goroutines that expect to be in the namespace: they are not.
func (n *Node) Do(fn func() error) error {
	return ns.WithNetNSPath(n.Netns, func(ns.NetNS) error { return fn() })
}

// Command prepares prog to run in the node's network namespace (through nsenter, which execs
// prog: the process is prog itself). The process gets SIGKILL when the OS thread that starts it
// ends: start long-lived processes with StartCommand, whose thread ends only with this program,
// so lab processes never outlive it. ctx kills the process as with exec.CommandContext; callers
// may replace Cancel (say, with SIGTERM) and set WaitDelay.
func (n *Node) Command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Netns, "--", prog}, args...)...)
	// nsenter without --fork or --pid execs prog directly, and the parent-death signal survives
	// execve of a program without set-user-ID or file capabilities, so prog inherits it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// DialContext connects to addr from inside the node's network namespace and returns the
// connection for use anywhere: a socket keeps the namespace it was created in. So the test
// binary or the CLI, in the root namespace where the lab has no route, can talk to servers in
// the lab. addr should hold an IP address: a name would be resolved inside the node.
func (n *Node) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() error {
		// With a single address the dialer connects on the calling goroutine, which is the one
		// locked into the namespace.
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		conn = c
		return err
	})
	return conn, err
}

// Listen opens a listener inside the node's network namespace (for tests and tools in the root
// namespace that serve something to the lab).
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
