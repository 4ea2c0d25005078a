package cniserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/twill-net/twill/internal/cniproto"
	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/cniserver/cnitest"
	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/testutil"
)

const (
	testPoolV4 = "192.0.2.0/24"
	testPoolV6 = "2001:db8:1::/64"
	testMTU    = 1400
)

// fixture is one node netns with a cniserver plumbing into it.
type fixture struct {
	t     *testing.T
	node  ns.NetNS
	alloc *cnitest.FakeAllocator
	srv   *cniserver.Server
	cfg   cniserver.Config
}

func newFixture(t *testing.T, mutate func(*cniserver.Config)) *fixture {
	t.Helper()
	testutil.RequireRoot(t)
	f := &fixture{t: t, node: cnitest.NewNetns(t, "node"), alloc: cnitest.NewFakeAllocator(testPoolV4, testPoolV6)}
	cfg := cniserver.Config{HostNetns: f.node.Path(), MTU: testMTU}
	if mutate != nil {
		mutate(&cfg)
	}
	f.srv, f.cfg, _ = cnitest.StartServer(t, cfg, f.alloc)
	return f
}

// call POSTs a request to the server's socket and returns the HTTP status and body.
func (f *fixture) call(path string, body any) (int, []byte) {
	f.t.Helper()
	payload, err := json.Marshal(body)
	if err != nil {
		f.t.Fatal(err)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", f.cfg.SocketPath)
		}}}
	resp, err := client.Post("http://agent"+path, "application/json", bytes.NewReader(payload))
	if err != nil {
		f.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp.StatusCode, data
}

func request(containerID string, pod ns.NetNS) cniproto.Request {
	return cniproto.Request{ContainerID: containerID, IfName: "eth0", Netns: pod.Path(),
		PodNamespace: "default", PodName: "pod-" + containerID, CNIVersion: "1.1.0"}
}

func handleOf(req cniproto.Request) ipam.Handle {
	return ipam.Handle{ContainerID: req.ContainerID, IfName: req.IfName}
}

func (f *fixture) add(req cniproto.Request) *types100.Result {
	f.t.Helper()
	status, body := f.call(cniproto.PathAdd, req)
	if status != http.StatusOK {
		f.t.Fatalf("ADD %s: status %d: %s", req.ContainerID, status, body)
	}
	res, err := types100.NewResult(body)
	if err != nil {
		f.t.Fatalf("ADD %s: decode result: %v\n%s", req.ContainerID, err, body)
	}
	return res.(*types100.Result)
}

// expectCNIError checks that a reply is a CNI error with the code and a message containing each part.
func expectCNIError(t *testing.T, status int, body []byte, code uint, parts ...string) *types.Error {
	t.Helper()
	if status >= 200 && status < 300 {
		t.Fatalf("want CNI error %d, got success %d: %s", code, status, body)
	}
	e := &types.Error{}
	if err := json.Unmarshal(body, e); err != nil {
		t.Fatalf("reply is not a CNI error: %v: %s", err, body)
	}
	if e.Code != code {
		t.Errorf("error code %d, want %d (%s)", e.Code, code, e.Msg)
	}
	for _, p := range parts {
		if !strings.Contains(e.Msg, p) {
			t.Errorf("error message %q does not mention %q", e.Msg, p)
		}
	}
	return e
}

// handleIn opens netlink in a test namespace.
func handleIn(t *testing.T, n ns.NetNS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		t.Fatalf("netlink in %s: %v", n.Path(), err)
	}
	t.Cleanup(h.Close)
	return h
}

func mustLink(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func linkExists(h *netlink.Handle, name string) bool {
	_, err := h.LinkByName(name)
	return err == nil
}

func allocatedIPs(a *cnitest.FakeAllocator, h ipam.Handle) []netip.Addr {
	var ips []netip.Addr
	for _, al := range a.Allocations() {
		if al.Owner.Handle == h {
			ips = append(ips, al.IP)
		}
	}
	return ips
}

// runIn runs f on a thread inside n.
func runIn(t *testing.T, n ns.NetNS, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// tcpEcho listens on addr inside n and echoes one line per connection until the test ends.
func tcpEcho(t *testing.T, n ns.NetNS, addr string) string {
	t.Helper()
	var ln net.Listener
	runIn(t, n, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = io.Copy(conn, io.LimitReader(conn, 64))
			}()
		}
	}()
	return ln.Addr().String()
}

// tcpRoundTrip connects from inside n to addr and checks the echo. It also fails when the
// exchange took as long as a TCP retransmission (1s): a lost first packet is a bug too.
func tcpRoundTrip(n ns.NetNS, addr string) error {
	start := time.Now()
	err := tcpExchange(n, addr)
	if d := time.Since(start); err == nil && d > 900*time.Millisecond {
		return fmt.Errorf("round trip to %s took %s: a packet was lost and resent", addr, d)
	}
	return err
}

func tcpExchange(n ns.NetNS, addr string) error {
	return n.Do(func(ns.NetNS) error {
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", addr, err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		msg := "hello from " + conn.LocalAddr().String()
		if _, err := conn.Write([]byte(msg)); err != nil {
			return fmt.Errorf("write to %s: %w", addr, err)
		}
		if cw, ok := conn.(*net.TCPConn); ok {
			_ = cw.CloseWrite()
		}
		got, err := io.ReadAll(conn)
		if err != nil {
			return fmt.Errorf("read from %s: %w", addr, err)
		}
		if string(got) != msg {
			return fmt.Errorf("echo from %s: got %q, want %q", addr, got, msg)
		}
		return nil
	})
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func jsonUnmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
