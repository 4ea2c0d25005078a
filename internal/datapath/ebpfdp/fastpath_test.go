package ebpfdp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

const (
	serverPort = 5201
	bulkBytes  = 64 << 20
)

// sinkThenReply reads everything the client sends, then answers with the byte count and
// closes: the client's FIN comes after the bulk data, the server's right after.
func sinkThenReply(c net.Conn) {
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return
	}
	fmt.Fprintf(c, "%d", n)
}

// bulk sends bulkBytes over a new connection to addr, half-closes, and checks the server's
// answer and a clean close (EOF, no reset).
func bulk(t *testing.T, client *testNS, addr string) {
	t.Helper()
	c := dial(t, client, addr)
	if _, err := io.CopyN(c, zeroReader{}, bulkBytes); err != nil {
		t.Fatalf("sending: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("closing the sending side: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the answer after our FIN (the close was not clean): %v", err)
	}
	if string(got) != fmt.Sprint(bulkBytes) {
		t.Fatalf("server got %q bytes, want %d", got, bulkBytes)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// sameNode is two pods behind one node, the fast path on the node's two pod veths.
type sameNode struct {
	node, a, b *testNS
	fp         *FastPath
}

func newSameNode(t *testing.T) *sameNode {
	requireTools(t)
	ns := newWorld(t)
	w := &sameNode{node: ns("node"), a: ns("a"), b: ns("b")}
	makeNode(w.node)
	addPod(w.node, w.a, "twa", "10.231.1.1", "10.231.1.2")
	addPod(w.node, w.b, "twb", "10.231.2.1", "10.231.2.2")
	w.fp = loadOn(t, w.node, map[string]bool{"twa": true, "twb": true})
	return w
}

func (w *sameNode) stats(t *testing.T) Stats {
	t.Helper()
	s, err := w.fp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSameNodeBulkTakesFastPath: a connection between two pods of one node works, its bulk
// data skips netfilter (the policy table's established counter stays near the handshake's
// packets while tens of thousands of segments flow), and FIN closes it cleanly: nothing is
// dropped as invalid and conntrack sees the close.
func TestSameNodeBulkTakesFastPath(t *testing.T) {
	w := newSameNode(t)
	listen(t, w.b, fmt.Sprintf("10.231.2.2:%d", serverPort), sinkThenReply)

	bulk(t, w.a, fmt.Sprintf("10.231.2.2:%d", serverPort))

	s := w.stats(t)
	est := w.node.counter("inet twt_policy", "established")
	t.Logf("fast path: %v; netfilter established: %d packets", s, est)
	if s[StatFastLocal] < 1000 {
		t.Errorf("only %d packets took the fast path, want the bulk of the transfer", s[StatFastLocal])
	}
	if est > 50 {
		t.Errorf("netfilter saw %d established packets, want only the handshake's and close's", est)
	}
	if inv := w.node.counter("inet twt_policy", "invalid"); inv != 0 {
		t.Errorf("%d packets were invalid to conntrack and dropped", inv)
	}
	if ct := ctEntries(w.node, serverPort); !strings.Contains(ct, "TIME_WAIT") && !strings.Contains(ct, "CLOSE") {
		t.Errorf("conntrack did not see the connection close: %q", ct)
	}
}

// TestSameNodeIPv6: the same over IPv6.
func TestSameNodeIPv6(t *testing.T) {
	w := newSameNode(t)
	addPodIPv6(w.node, w.a, "twa", "fd00:231:1")
	addPodIPv6(w.node, w.b, "twb", "fd00:231:2")
	listen(t, w.b, fmt.Sprintf("[fd00:231:2::2]:%d", serverPort), sinkThenReply)

	bulk(t, w.a, fmt.Sprintf("[fd00:231:2::2]:%d", serverPort))

	s := w.stats(t)
	est := w.node.counter("inet twt_policy", "established")
	t.Logf("fast path: %v; netfilter established: %d packets", s, est)
	if s[StatFastLocal] < 1000 {
		t.Errorf("only %d packets took the fast path, want the bulk of the transfer", s[StatFastLocal])
	}
	if est > 50 {
		t.Errorf("netfilter saw %d established packets, want only the handshake's and close's", est)
	}
	if inv := w.node.counter("inet twt_policy", "invalid"); inv != 0 {
		t.Errorf("%d packets were invalid to conntrack and dropped", inv)
	}
}

// TestConntrackDeleteRejudges: deleting a connection's conntrack entry (what a policy change
// with --policy-established=reset does) puts its next packet back on the normal path, where a
// rule that now denies the connection drops it; before the delete the established
// connection runs on, as the policy table's established rule would let it.
func TestConntrackDeleteRejudges(t *testing.T) {
	w := newSameNode(t)
	listen(t, w.b, fmt.Sprintf("10.231.2.2:%d", serverPort), func(c net.Conn) { _, _ = io.Copy(c, c) })
	c := dial(t, w.a, fmt.Sprintf("10.231.2.2:%d", serverPort))
	echo := func(n int) error {
		msg := bytes.Repeat([]byte{'x'}, n)
		if _, err := c.Write(msg); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		got := make([]byte, n)
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		return nil
	}
	if err := echo(1 << 20); err != nil {
		t.Fatalf("echo before the policy change: %v", err)
	}
	fast := w.stats(t).Fast()
	if fast < 10 {
		t.Fatalf("the echo took the fast path for %d packets only", fast)
	}

	// The policy change: new connections to the server are denied from now on.
	// Both directions: whichever side's packet comes first after the delete is judged.
	w.node.sh(fmt.Sprintf("nft insert rule inet twt_policy forward ct state new ip daddr 10.231.2.2 tcp dport %d counter name denied drop", serverPort))
	w.node.sh(fmt.Sprintf("nft insert rule inet twt_policy forward ct state new ip saddr 10.231.2.2 tcp sport %d counter name denied drop", serverPort))
	if err := echo(1000); err != nil {
		t.Fatalf("the established connection broke before its conntrack entry was deleted: %v", err)
	}

	w.node.sh(fmt.Sprintf("conntrack -D -p tcp --dport %d", serverPort))
	err := echo(1000)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("after the conntrack delete the echo gave %v, want a timeout (packets judged again and dropped)", err)
	}
	if d := w.node.counter("inet twt_policy", "denied"); d == 0 {
		t.Errorf("the denying rule dropped nothing: the packets after the delete did not take the normal path")
	}
}

// TestNATNotFastPathed: a connection through DNAT (a service, a hostPort) stays on the normal
// path, where its translation is done.
func TestNATNotFastPathed(t *testing.T) {
	w := newSameNode(t)
	w.node.sh(fmt.Sprintf(`nft -f - <<'EOF'
table ip twt_nat {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.231.9.9 tcp dport 80 dnat to 10.231.2.2:%d
	}
}
EOF`, serverPort))
	listen(t, w.b, fmt.Sprintf("10.231.2.2:%d", serverPort), sinkThenReply)

	bulk(t, w.a, "10.231.9.9:80")

	s := w.stats(t)
	est := w.node.counter("inet twt_policy", "established")
	t.Logf("fast path: %v; netfilter established: %d packets", s, est)
	if s.Fast() != 0 {
		t.Errorf("%d packets of a NAT'd connection took the fast path", s.Fast())
	}
	if s[StatCTNotReady] < 100 {
		t.Errorf("only %d packets were turned away for NAT", s[StatCTNotReady])
	}
	if est < 1000 {
		t.Errorf("netfilter saw only %d established packets of the NAT'd transfer", est)
	}
}

// TestCrossNode: pod A on node 1 to pod C on node 2, routed natively over the nodes' link and
// through a VXLAN tunnel: both nodes fast-path the bulk, the close is clean.
func TestCrossNode(t *testing.T) {
	for _, vxlan := range []bool{false, true} {
		name := map[bool]string{false: "native", true: "vxlan"}[vxlan]
		t.Run(name, func(t *testing.T) {
			requireTools(t)
			ns := newWorld(t)
			n1, n2, a, c := ns("n1"), ns("n2"), ns("a"), ns("c")
			makeNode(n1)
			makeNode(n2)
			addPod(n1, a, "twa", "10.231.1.1", "10.231.1.2")
			addPod(n2, c, "twc", "10.231.3.1", "10.231.3.2")
			n1.sh("ip link add und type veth peer name und netns " + n2.name)
			n1.sh("ip addr add 10.231.100.1/24 dev und && ip link set und up")
			n2.sh("ip addr add 10.231.100.2/24 dev und && ip link set und up")
			links := map[string]bool{"und": false}
			if vxlan {
				for i, n := range []*testNS{n1, n2} {
					local, remote := fmt.Sprintf("10.231.100.%d", i+1), fmt.Sprintf("10.231.100.%d", 2-i)
					n.sh(fmt.Sprintf("ip link add vx type vxlan id 42 local %s remote %s dstport 4789 dev und && ip addr add 10.231.200.%d/24 dev vx && ip link set vx up", local, remote, i+1))
				}
				n1.sh("ip route add 10.231.3.0/24 via 10.231.200.2")
				n2.sh("ip route add 10.231.1.0/24 via 10.231.200.1")
				links["vx"] = false
			} else {
				n1.sh("ip route add 10.231.3.0/24 via 10.231.100.2")
				n2.sh("ip route add 10.231.1.0/24 via 10.231.100.1")
			}
			l1, l2 := map[string]bool{"twa": true}, map[string]bool{"twc": true}
			for k, v := range links {
				l1[k], l2[k] = v, v
			}
			f1, f2 := loadOn(t, n1, l1), loadOn(t, n2, l2)
			listen(t, c, fmt.Sprintf("10.231.3.2:%d", serverPort), sinkThenReply)

			bulk(t, a, fmt.Sprintf("10.231.3.2:%d", serverPort))

			for _, x := range []struct {
				n *testNS
				f *FastPath
			}{{n1, f1}, {n2, f2}} {
				s, err := x.f.Stats()
				if err != nil {
					t.Fatal(err)
				}
				est := x.n.counter("inet twt_policy", "established")
				t.Logf("%s: fast path: %v; netfilter established: %d packets", x.n.name, s, est)
				if s[StatFastLocal] < 100 || s[StatFastRemote] < 100 {
					t.Errorf("%s: fast path carried %d packets to its pod and %d to the other node, want the bulk both ways",
						x.n.name, s[StatFastLocal], s[StatFastRemote])
				}
				if est > 50 {
					t.Errorf("%s: netfilter saw %d established packets, want only the handshake's and close's", x.n.name, est)
				}
				if inv := x.n.counter("inet twt_policy", "invalid"); inv != 0 {
					t.Errorf("%s: %d packets were invalid to conntrack and dropped", x.n.name, inv)
				}
			}
		})
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}
