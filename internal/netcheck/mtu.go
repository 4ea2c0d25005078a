package netcheck

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// forbidFragmentation sets "don't fragment" on a UDP socket before it connects: a datagram
// larger than the path MTU is then refused (EMSGSIZE) or dropped, never split.
func forbidFragmentation(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if network == "udp6" {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE)
			return
		}
		// PROBE: DF set, and the kernel does not shrink the size on ICMP "fragmentation
		// needed", so the probe keeps testing the MTU the pod's interface claims.
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
	})
	if err != nil {
		return err
	}
	return serr
}

// payloadFillingMTU is the UDP payload size that makes a packet exactly as large as the MTU
// the kernel knows for the connected destination.
func payloadFillingMTU(conn *net.UDPConn) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	v6 := conn.RemoteAddr().(*net.UDPAddr).IP.To4() == nil
	var mtu int
	var serr error
	err = raw.Control(func(fd uintptr) {
		if v6 {
			mtu, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU)
		} else {
			mtu, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("reading the path MTU: %w", err)
	}
	headers := 20 + 8
	if v6 {
		headers = 40 + 8
	}
	// Loopback's MTU (65536) exceeds what one UDP datagram can hold.
	return min(mtu-headers, maxUDPPayload), nil
}

// maxUDPPayload is the largest payload of a UDP datagram over IPv4.
const maxUDPPayload = 65535 - 20 - 8
