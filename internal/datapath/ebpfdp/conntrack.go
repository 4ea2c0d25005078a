package ebpfdp

import (
	"fmt"
	"os"
	"strings"
)

// liberalSysctl is per network namespace.
const liberalSysctl = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"

// PrepareConntrack readies the calling thread's network namespace for the fast path: conntrack
// no longer sees the packets the fast path carries, so its TCP window tracking falls behind
// the connection, and the first packet that takes the normal path again (the FIN, say) would
// look out of window, be marked INVALID, and be dropped by the policy table's invalid rule,
// leaving the connection hanging. In liberal mode conntrack tracks TCP states but accepts
// any sequence number, as Cilium sets it for the same reason. It is left on when the agent
// stops: connections the fast path carried keep their stale windows.
//
// UDP needs nothing: its entries stop being refreshed while the fast path carries a flow and
// expire (120 s); the next packet then takes the normal path and is judged again. The same
// holds, after nf_conntrack_tcp_timeout_established (5 days), for a TCP connection the fast
// path carried all along: conntrack picks it up mid-stream as a new connection, which the
// policy judges again.
func PrepareConntrack() error {
	b, err := os.ReadFile(liberalSysctl)
	if err != nil {
		return fmt.Errorf("reading %s (is conntrack available?): %w", liberalSysctl, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(liberalSysctl, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("setting %s to 1: %w", liberalSysctl, err)
	}
	return nil
}
