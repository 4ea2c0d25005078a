package netlinkdp

// Probes that send real packets between pod namespaces: an ICMP echo (optionally with
// don't-fragment, for MTU checks) and a TCP exchange.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// echo sends one ICMP echo request with payload bytes of data from inside n to dst and waits
// for the reply. With dontFragment the packet may not be fragmented anywhere (ping -M do).
func echo(n *testNS, dst netip.Addr, payload int, dontFragment bool, timeout time.Duration) error {
	family, proto, reqType, replyType := unix.AF_INET, unix.IPPROTO_ICMP, byte(8), byte(0)
	if dst.Is6() {
		family, proto, reqType, replyType = unix.AF_INET6, unix.IPPROTO_ICMPV6, 128, 129
	}
	var fd int
	// The socket belongs to the namespace it is created in, whichever thread uses it later.
	err := n.ns.Do(func(ns.NetNS) error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		return err
	})
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	if dontFragment {
		if dst.Is4() {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
		} else {
			err = errors.Join(unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO),
				unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_DONTFRAG, 1))
		}
		if err != nil {
			return err
		}
	}
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	id := uint16(os.Getpid()) ^ uint16(time.Now().UnixNano())
	msg := make([]byte, 8+payload)
	msg[0] = reqType
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], 1)
	for i := 8; i < len(msg); i++ {
		msg[i] = byte(i)
	}
	var to unix.Sockaddr
	if dst.Is4() {
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg)) // the kernel sums ICMPv6 itself
		to = &unix.SockaddrInet4{Addr: dst.As4()}
	} else {
		to = &unix.SockaddrInet6{Addr: dst.As16()}
	}
	if err := unix.Sendto(fd, msg, 0, to); err != nil {
		return fmt.Errorf("sending %d-byte echo to %s: %w", payload, dst, err)
	}
	buf := make([]byte, 65536)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		got, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("waiting for echo reply from %s: %w", dst, err)
		}
		reply := buf[:got]
		if dst.Is4() {
			if got < 20 {
				continue
			}
			reply = reply[int(reply[0]&0x0f)*4:] // raw IPv4 sockets see the IP header
		}
		if !fromAddr(from, dst) || len(reply) < 8 || reply[0] != replyType ||
			binary.BigEndian.Uint16(reply[4:]) != id {
			continue
		}
		if len(reply) != len(msg) {
			return fmt.Errorf("echo reply from %s has %d bytes, sent %d", dst, len(reply), len(msg))
		}
		return nil
	}
	return fmt.Errorf("no echo reply from %s within %s (payload %d)", dst, timeout, payload)
}

func fromAddr(sa unix.Sockaddr, want netip.Addr) bool {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr) == want
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr) == want
	}
	return false
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// mustPing wants an echo reply (three tries: the first packet may wait for ARP/NDP).
func mustPing(t *testing.T, from *testNS, dst netip.Addr) {
	t.Helper()
	var err error
	for range 3 {
		if err = echo(from, dst, 56, false, time.Second); err == nil {
			return
		}
	}
	t.Errorf("ping %s -> %s: %v", from.name, dst, err)
}

// mustTCP connects from one pod to a listener in another and exchanges a line each way.
func mustTCP(t *testing.T, client *testNS, server *testNS, serverIP netip.Addr) {
	t.Helper()
	if err := tcpExchange(client, server, serverIP); err != nil {
		t.Errorf("tcp %s -> %s: %v", client.name, serverIP, err)
	}
}

func tcpExchange(client, server *testNS, serverIP netip.Addr) error {
	var ln net.Listener
	err := server.ns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(serverIP, 0).String())
		return err
	})
	if err != nil {
		return err
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err == nil {
			_, err = fmt.Fprintf(conn, "hello %s", line)
		}
		served <- err
	}()
	var conn net.Conn
	err = client.ns.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "%s\n", client.name); err != nil {
		return err
	}
	answer, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading answer: %w", err)
	}
	if want := "hello " + client.name + "\n"; answer != want {
		return fmt.Errorf("answer %q, want %q", answer, want)
	}
	return <-served
}

// fragmentsCreated reads how many fragments the namespace's IP stack has made (family 4 or 6).
// /proc/thread-self follows the calling thread's namespace, /proc/self would not.
func fragmentsCreated(t *testing.T, n *testNS, v6 bool) int {
	t.Helper()
	var count int
	err := n.ns.Do(func(ns.NetNS) error {
		if v6 {
			data, err := os.ReadFile("/proc/thread-self/net/snmp6")
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(data), "\n") {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "Ip6FragCreates" {
					count, err = strconv.Atoi(f[1])
					return err
				}
			}
			return errors.New("Ip6FragCreates not found")
		}
		data, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Ip:" {
				continue
			}
			if names == nil {
				names = f
				continue
			}
			for i, name := range names {
				if name == "FragCreates" && i < len(f) {
					count, err = strconv.Atoi(f[i])
					return err
				}
			}
		}
		return errors.New("FragCreates not found")
	})
	if err != nil {
		t.Fatal(err)
	}
	return count
}
