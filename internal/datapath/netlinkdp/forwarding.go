package netlinkdp

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
)

// forwardingSysctls are the switches that let the node route between pods and the network.
var forwardingSysctls = []struct {
	path     string
	optional bool // IPv6 can be disabled on the host; IPv4 forwarding still matters then
}{
	{"/proc/sys/net/ipv4/ip_forward", false},
	{"/proc/sys/net/ipv6/conf/all/forwarding", true},
}

// EnableForwarding turns on IPv4 and IPv6 forwarding in the calling thread's network namespace.
// /proc/sys/net shows the namespace of the thread that opens it, so the thread is locked for
// the writes (a caller already inside a namespace, e.g. ns.Do, keeps its own lock).
func (r *Routes) EnableForwarding() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, s := range forwardingSysctls {
		current, err := os.ReadFile(s.path)
		if s.optional && errors.Is(err, fs.ErrNotExist) {
			r.log.Warn("IPv6 is off on this host; IPv6 pods cannot be routed", "sysctl", s.path)
			continue
		}
		if err == nil && len(current) > 0 && current[0] == '1' {
			continue
		}
		if err := os.WriteFile(s.path, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enabling forwarding (%s): %w", s.path, err)
		}
		r.log.Info("forwarding enabled", "sysctl", s.path)
	}
	return nil
}

// enableIPv6 clears disable_ipv6 on one link of the calling thread's namespace; a host without
// IPv6 at all has no such file, and then there is nothing to do.
func enableIPv6(link string) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	path := "/proc/sys/net/ipv6/conf/" + link + "/disable_ipv6"
	current, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil || len(current) == 0 || current[0] == '0' {
		return err
	}
	if err := os.WriteFile(path, []byte("0\n"), 0o644); err != nil {
		return fmt.Errorf("enabling IPv6 on %s: %w", link, err)
	}
	return nil
}
