package testutil

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetNS is a network namespace a test made, with a netlink handle bound to it.
type NetNS struct {
	Name string
	NS   ns.NetNS
	NL   *netlink.Handle
}

// NewNetNS creates the namespace twt-<role>-<suffix> with lo up and IPv6 duplicate address
// detection off (so addresses are usable at once), and removes it when the test ends.
func NewNetNS(t testing.TB, role, suffix string) *NetNS {
	t.Helper()
	name := fmt.Sprintf("twt-%s-%s", role, suffix)
	created := make(chan error)
	go func() {
		// NewNamed moves this thread into the new namespace; the thread stays locked so the
		// runtime discards it when the goroutine ends instead of reusing it elsewhere.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		created <- err
	}()
	if err := <-created; err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	n := &NetNS{Name: name}
	t.Cleanup(func() {
		if n.NL != nil {
			n.NL.Close()
		}
		if n.NS != nil {
			n.NS.Close()
		}
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("removing namespace %s: %v", name, err)
		}
	})
	var err error
	if n.NS, err = ns.GetNS("/run/netns/" + name); err != nil {
		t.Fatal(err)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if n.NL, err = netlink.NewHandleAt(h); err != nil {
		t.Fatal(err)
	}
	lo, err := n.NL.LinkByName("lo")
	if err == nil {
		err = n.NL.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("bringing lo up in %s: %v", name, err)
	}
	n.Sysctl(t, "net/ipv6/conf/all/accept_dad", "0")
	n.Sysctl(t, "net/ipv6/conf/default/accept_dad", "0")
	return n
}

// Sysctl writes /proc/sys/<key> inside the namespace (ns.Do locks the thread that opens the
// file, and /proc/sys/net follows the opening thread's namespace).
func (n *NetNS) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	if err := n.NS.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	}); err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, n.Name, err)
	}
}
