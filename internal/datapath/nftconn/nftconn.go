// Package nftconn opens the netlink connections twill's nftables datapaths (policy in nftdp,
// services in nftsvc) write their tables through: in a chosen network namespace, with
// buffers sized for whole-table transactions.
package nftconn

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Opener returns a function that opens a connection to nftables in the network namespace
// netnsFD (-1: the caller's) whose socket buffers hold bufferBytes: a rebuild of a large
// table is one batch of tens to hundreds of megabytes, and the kernel acknowledges every
// message in it.
func Opener(netnsFD, bufferBytes int) func() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		return bigBuffers(c, bufferBytes)
	})}
	if netnsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	return func() (*nftables.Conn, error) { return nftables.New(opts...) }
}

// bigBuffers raises the socket's buffers past the system's defaults (root may), and asks
// for acknowledgements without a copy of the message acknowledged (which would double what
// a large batch moves).
func bigBuffers(c *netlink.Conn, size int) error {
	if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size); e != nil && serr == nil {
				serr = fmt.Errorf("netlink socket buffer: %w", e)
			}
		}
	}); err != nil {
		return err
	}
	return serr
}
