package netcheck

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/testutil"
)

// startServer runs a server on free loopback ports and returns its TCP, UDP and HTTP ports.
func startServer(t *testing.T) (tcp, udp, http int) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	s := &Server{Name: "pod-a", TCP: []int{0}, UDP: []int{0}, HTTP: []int{0}}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	addrs, err := s.Addrs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	port := func(a net.Addr) int {
		_, p, _ := net.SplitHostPort(a.String())
		n, _ := strconv.Atoi(p)
		return n
	}
	return port(addrs[0]), port(addrs[1]), port(addrs[2])
}

func TestEveryProtocolAnswersWithNameAndClientAddress(t *testing.T) {
	tcp, udp, http := startServer(t)
	for proto, port := range map[string]int{TCP: tcp, UDP: udp, HTTP: http} {
		r, err := Connect(t.Context(), proto, "127.0.0.1:"+strconv.Itoa(port), 2*time.Second)
		if err != nil {
			t.Errorf("%s: %v", proto, err)
			continue
		}
		if r.Pod != "pod-a" || !strings.HasPrefix(r.Client, "127.0.0.1:") {
			t.Errorf("%s: reply %+v, want pod-a and a client on 127.0.0.1", proto, r)
		}
	}
}

func TestRefusedIsToldApartFromTimeout(t *testing.T) {
	// A port just closed: nothing listens there, the kernel answers with a reset (TCP) or an
	// ICMP port unreachable (UDP).
	free := func(network string) string {
		if network == "udp" {
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			return pc.LocalAddr().String()
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	for _, proto := range []string{TCP, UDP} {
		_, err := Connect(t.Context(), proto, free(proto), 2*time.Second)
		if !errors.Is(err, ErrRefused) || errors.Is(err, ErrTimeout) {
			t.Errorf("%s to a closed port: %v, want refused", proto, err)
		}
	}
}

func TestSilenceIsATimeout(t *testing.T) {
	// A UDP socket that reads nothing and answers nothing: the probe must time out, not fail
	// otherwise, and within its timeout.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	start := time.Now()
	_, err = Connect(t.Context(), UDP, pc.LocalAddr().String(), 500*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || errors.Is(err, ErrRefused) {
		t.Errorf("UDP to a silent socket: %v, want a timeout", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("timeout of 500ms took %s", took)
	}
	// TCP: a listener whose accept queue is never read still completes handshakes, so use
	// one that accepts and never writes: the greeting never comes.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = Connect(t.Context(), TCP, l.Addr().String(), 300*time.Millisecond)
	if !errors.Is(err, ErrTimeout) {
		t.Errorf("TCP to a silent server: %v, want a timeout", err)
	}
}

func TestReplyLineRoundTrips(t *testing.T) {
	want := Reply{Pod: "web-1", Client: "10.244.1.5:40000"}
	got, err := ParseReply(want.String())
	if err != nil || got != want {
		t.Errorf("ParseReply(%q) = %+v, %v", want.String(), got, err)
	}
	if _, err := ParseReply("hello"); err == nil {
		t.Error("ParseReply accepted a line that is not a reply")
	}
}

func TestFillMTUSendsTheLargestDatagramThePathTakes(t *testing.T) {
	_, udp, _ := startServer(t)
	r, err := Probe(t.Context(), UDP, "127.0.0.1:"+strconv.Itoa(udp), Options{Timeout: 2 * time.Second, FillMTU: true})
	if err != nil {
		t.Fatal(err)
	}
	// Loopback's MTU is 65536: the datagram is the largest UDP allows.
	if r.Bytes != maxUDPPayload {
		t.Errorf("server received %d bytes, want %d", r.Bytes, maxUDPPayload)
	}
	if _, err := Probe(t.Context(), TCP, "127.0.0.1:1", Options{Timeout: time.Second, FillMTU: true}); err == nil {
		t.Error("FillMTU accepted over TCP")
	}
}

// In a network namespace without a route, the probe says unreachable at once, not timeout.
func TestNoRouteIsUnreachable(t *testing.T) {
	testutil.RequireRoot(t)
	errc := make(chan error, 1)
	go func() {
		// The thread enters an anonymous namespace of its own and is never unlocked, so it
		// ends with this goroutine and the namespace with it: nothing to clean up.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		// Loopback, down in a new namespace, has no route either; and were the probe to run
		// elsewhere by mistake, it would stay on this machine's loopback.
		_, err := Connect(context.Background(), TCP, "127.0.0.1:9", 2*time.Second)
		errc <- err
	}()
	err := <-errc
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("TCP without a route: %v, want unreachable", err)
	}
}
